"""Participant data container: round trips, strict header parsing, every manipulation raises a CryptoError.

Opening is all or nothing, so "raises" here also means no record was handed out.
"""

from __future__ import annotations

import json
import struct
from dataclasses import fields, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import container_chunks

from caltrain.crypto import aead, container
from caltrain.crypto.container import (
    ContainerHeader,
    Receipt,
    open_container,
    pack_arrays,
    pack_container,
    read_header,
    receipt_for,
)
from caltrain.crypto.errors import (
    BadSignature,
    ContainerFormatError,
    ContainerMismatch,
    IntegrityError,
)
from caltrain.crypto.hashing import record_commitment, record_commitments, record_salt
from caltrain.crypto.merkle import MerkleTree, verify_inclusion
from caltrain.crypto.signing import Identity
from caltrain.errors import CryptoError

SCHEMA = {"shape": [1, 2, 3], "dtype": "uint8", "classes": 10}
PAYLOAD = 6
RECORDS = 13
CHUNK_BYTES = 4 * (8 + PAYLOAD)  # 4 records per chunk: 4 chunks, the last holding one record


@cache
def alice() -> Identity:
    return Identity.generate()


@cache
def key() -> bytes:
    return aead.new_key()


def records(seed: int, n: int = RECORDS) -> list[tuple[bytes, int]]:
    return [(bytes((seed * 31 + i * 7 + j) % 256 for j in range(PAYLOAD)), (seed + i) % 10 - 3) for i in range(n)]


def pack(seed: int = 0, dataset_id: str = "ds-1", **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "dataset_id": dataset_id,
        "identity": alice(),
        "participant_id": "alice",
        "data_key": key(),
        "schema": SCHEMA,
        "chunk_bytes": CHUNK_BYTES,
    }
    args.update(kw)
    return pack_container(records(seed), **args)


@cache
def blob_a() -> bytes:
    return pack(0)


@cache
def blob_b() -> bytes:
    """Same dataset, participant, key and layout as A, other records: a splice source."""
    return pack(1)


def open_(blob: bytes, **kw: Any) -> container.OpenedContainer:
    return open_container(blob, key(), participant_key=alice().public_key, **kw)


def rebuild(header: ContainerHeader, signer: Identity | None, old: bytes) -> bytes:
    """A container with `header` (signed by `signer`, or keeping the old signature) and `old`'s chunks."""
    prefix, chunks = container_chunks(old)
    raw = header.to_bytes()
    signature = prefix[-64:] if signer is None else signer.sign(container._header_digest(raw))
    return struct.pack(">4sI", container.MAGIC, len(raw)) + raw + signature + b"".join(chunks)


def test_round_trip() -> None:
    opened = open_(blob_a(), expected_dataset_id="ds-1")
    expected = records(0)
    assert len(opened) == RECORDS and opened.header.chunk_count == 4
    assert [(bytes(p), lab) for p, lab in opened.records()] == expected
    assert opened.payloads.tobytes() == b"".join(p for p, _ in expected)
    assert opened.labels == tuple(lab for _, lab in expected)
    salt = record_salt(key())
    assert opened.record_hashes == tuple(record_commitment(salt, i, p, lab) for i, (p, lab) in enumerate(expected))
    assert not opened.payloads.flags.writeable and opened.payload(0).readonly
    header = opened.header
    assert (header.dataset_id, header.participant_id, header.schema) == ("ds-1", "alice", SCHEMA)
    assert header.participant_key == alice().public_key
    assert header.merkle_root == MerkleTree(list(opened.record_hashes)).root


def test_pack_arrays_matches_pack_container_and_single_chunk() -> None:
    recs = records(3, 50)
    blob = pack_arrays(
        b"".join(p for p, _ in recs),
        [lab for _, lab in recs],
        payload_size=PAYLOAD,
        dataset_id="ds-1",
        identity=alice(),
        participant_id="alice",
        data_key=key(),
        schema={},
    )
    opened = open_(blob)
    assert opened.header.chunk_count == 1 and [(bytes(p), lab) for p, lab in opened.records()] == recs
    assert opened.header.merkle_root == read_header(pack_container(recs, **_args()))[0].merkle_root


def _args() -> dict[str, Any]:
    return {
        "dataset_id": "ds",
        "identity": alice(),
        "participant_id": "alice",
        "data_key": key(),
        "schema": {},
    }


@given(
    st.lists(
        st.tuples(st.binary(min_size=3, max_size=3), st.integers(-(2**63), 2**63 - 1)),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 200),
)
@settings(max_examples=40, deadline=None)
def test_round_trip_any_records_and_chunking(recs: list[tuple[bytes, int]], chunk_bytes: int) -> None:
    opened = open_(pack_container(recs, **{**_args(), "chunk_bytes": chunk_bytes}))
    assert [(bytes(p), lab) for p, lab in opened.records()] == recs


@given(
    st.lists(st.tuples(st.binary(min_size=5, max_size=5), st.integers(-(2**63), 2**63 - 1)), max_size=20),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**40),
)
def test_batched_commitments_equal_record_commitment(recs: list[tuple[bytes, int]], salt: bytes, first: int) -> None:
    laid_out = b"".join(struct.pack(">q", lab) + p for p, lab in recs)
    expected = [record_commitment(salt, first + i, p, lab) for i, (p, lab) in enumerate(recs)]
    assert record_commitments(laid_out, 5, salt, first) == expected


def test_commitments_are_salted_by_the_data_key_and_bound_to_the_index() -> None:
    """Without the data key nobody can confirm a guessed record from its commitment; equal records differ."""
    payload, label = records(0)[5]
    opened = open_(blob_a())
    assert record_commitment(record_salt(key()), 5, payload, label) == opened.record_hashes[5]
    assert record_commitment(record_salt(aead.new_key()), 5, payload, label) != opened.record_hashes[5]
    assert record_commitment(record_salt(key()), 6, payload, label) != opened.record_hashes[5]


def test_pack_rejects_bad_records() -> None:
    with pytest.raises(ContainerFormatError, match="at least one"):
        pack_container([], **_args())
    with pytest.raises(ContainerFormatError, match="record 1"):
        pack_container([(b"abc", 1), (b"ab", 2)], **_args())
    with pytest.raises(ContainerFormatError, match="64-bit"):
        pack_container([(b"abc", 2**63)], **_args())
    with pytest.raises(ContainerFormatError, match="labels"):
        pack_arrays(b"abcdef", [1], payload_size=3, **_args())
    with pytest.raises(ContainerFormatError, match="whole records"):
        pack_arrays(b"abcdefg", [1, 2], payload_size=3, **_args())
    with pytest.raises(ContainerFormatError, match="dataset_id"):
        pack_container([(b"abc", 1)], **{**_args(), "dataset_id": ""})
    with pytest.raises(ContainerFormatError, match="schema"):
        pack_container([(b"abc", 1)], **{**_args(), "schema": {"x": float("nan")}})


def test_read_header_needs_no_key() -> None:
    header, signature = read_header(blob_a())
    assert header.dataset_id == "ds-1" and header.record_count == RECORDS and len(signature) == 64


def test_wrong_data_key_names_chunk_zero() -> None:
    with pytest.raises(IntegrityError, match="chunk 0"):
        open_container(blob_a(), aead.new_key(), participant_key=alice().public_key)


def test_wrong_participant_key_and_dataset() -> None:
    with pytest.raises(BadSignature):
        open_container(blob_a(), key(), participant_key=Identity.generate().public_key)
    with pytest.raises(ContainerMismatch, match="ds-2"):
        open_(blob_a(), expected_dataset_id="ds-2")


def test_merkle_root_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "merkle_root", lambda leaves: b"\x07" * 32)
    blob = pack(0)
    monkeypatch.undo()
    with pytest.raises(ContainerMismatch, match="Merkle root"):
        open_(blob)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_any_bit_flip_is_rejected(data: st.DataObject) -> None:
    blob = bytearray(blob_a())
    position = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[position // 8] ^= 1 << (position % 8)
    with pytest.raises(CryptoError):
        open_(bytes(blob))


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_truncation_is_rejected(data: st.DataObject) -> None:
    blob = blob_a()
    with pytest.raises(CryptoError):
        open_(blob[: data.draw(st.integers(0, len(blob) - 1))])


@given(st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(ContainerFormatError, match="trailing"):
        open_(blob_a() + extra)


@given(st.permutations(range(4)))
def test_chunk_reorder_is_rejected(order: list[int]) -> None:
    prefix, chunks = container_chunks(blob_a())
    blob = prefix + b"".join(chunks[i] for i in order)
    if order == [0, 1, 2, 3]:
        assert len(open_(blob)) == RECORDS
    else:
        with pytest.raises(CryptoError):
            open_(blob)


def test_equal_size_chunk_swap_fails_authentication() -> None:
    prefix, chunks = container_chunks(blob_a())
    with pytest.raises(IntegrityError, match="chunk 0"):
        open_(prefix + chunks[1] + chunks[0] + chunks[2] + chunks[3])


@given(st.sets(st.integers(0, 3), min_size=1))
def test_splicing_chunks_from_another_container_is_rejected(spliced: set[int]) -> None:
    prefix, chunks_a = container_chunks(blob_a())
    _, chunks_b = container_chunks(blob_b())
    blob = prefix + b"".join(chunks_b[i] if i in spliced else chunks_a[i] for i in range(4))
    with pytest.raises(IntegrityError, match=f"chunk {min(spliced)}"):
        open_(blob)


def test_dropping_trailing_chunks_with_a_matching_header_is_rejected() -> None:
    """Even the participant re-signing a shorter header cannot reuse the chunks: the AAD binds the header."""
    header, _ = read_header(blob_a())
    shorter = replace(header, record_count=8, chunk_count=2)
    prefix, chunks = container_chunks(rebuild(shorter, alice(), blob_a()))
    with pytest.raises(IntegrityError, match="chunk 0"):
        open_(prefix + chunks[0] + chunks[1])


def test_replay_into_another_dataset_is_rejected() -> None:
    header, _ = read_header(blob_a())
    moved = replace(header, dataset_id="ds-2")
    with pytest.raises(BadSignature):
        open_(rebuild(moved, None, blob_a()), expected_dataset_id="ds-2")
    with pytest.raises(IntegrityError):  # re-signed by the participant: the chunks still belong to ds-1
        open_(rebuild(moved, alice(), blob_a()), expected_dataset_id="ds-2")


HEADER_EDITS: list[dict[str, Any]] = [
    {"dataset_id": "other"},
    {"participant_id": "mallory"},
    {"record_count": RECORDS + 1},
    {"records_per_chunk": 5, "chunk_count": 3},
    {"schema": {"classes": 2}},
    {"merkle_root": b"\x01" * 32},
    {"created_at": "2000-01-01T00:00:00Z"},
]


@pytest.mark.parametrize("edit", HEADER_EDITS)
@pytest.mark.parametrize("signer", ["none", "attacker", "attacker-key-in-header"])
def test_header_edits_are_rejected(edit: dict[str, Any], signer: str) -> None:
    header, _ = read_header(blob_a())
    attacker = Identity.generate()
    if signer == "attacker-key-in-header":
        edit = {**edit, "participant_key": attacker.public_key}
    blob = rebuild(replace(header, **edit), None if signer == "none" else attacker, blob_a())
    with pytest.raises(BadSignature):
        open_(blob)
    if signer == "attacker-key-in-header":  # opened with the attacker's key, the chunks still do not fit
        with pytest.raises(CryptoError):
            open_container(blob, key(), participant_key=attacker.public_key)


def test_header_naming_another_key_is_a_mismatch() -> None:
    header, _ = read_header(blob_a())
    bob = Identity.generate()
    blob = rebuild(replace(header, participant_key=bob.public_key), alice(), blob_a())
    with pytest.raises(ContainerMismatch, match="participant key"):
        open_(blob)


def test_chunk_length_fields_are_checked() -> None:
    prefix, chunks = container_chunks(blob_a())
    moved = chunks[0][:4] + chunks[0][4:] + chunks[1]  # same total, boundaries shifted
    first = struct.pack(">I", len(chunks[0]) - 4 + 1) + chunks[0][4:] + chunks[1][4:5]
    second = struct.pack(">I", len(chunks[1]) - 4 - 1) + chunks[1][5:]
    assert len(moved) == len(first) + len(second)
    with pytest.raises(ContainerFormatError, match="chunk 0 length"):
        open_(prefix + first + second + chunks[2] + chunks[3])


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "too short"),
        (b"XYZ\x01" + b"\x00" * 100, "bad magic"),
        (b"CTD\x01" + b"\x00" * 100, "version 1"),
        (b"CTD\x02" + struct.pack(">I", 1 << 30) + b"\x00" * 100, "exceeds"),
        (b"CTD\x02" + struct.pack(">I", 90) + b"\x00" * 100, "truncated"),
    ],
)
def test_framing_errors(blob: bytes, match: str) -> None:
    with pytest.raises(ContainerFormatError, match=match):
        open_(blob)
    with pytest.raises(ContainerFormatError, match=match):
        read_header(blob)


def _header_dict() -> dict[str, Any]:
    return json.loads(read_header(blob_a())[0].to_bytes())  # type: ignore[no-any-return]


def _encode(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format_version", 1),
        ("format_version", 1.0),
        ("format_version", True),
        ("dataset_id", 5),
        ("dataset_id", ""),
        ("dataset_id", "x" * 257),
        ("participant_id", None),
        ("participant_key", "AB" * 32),
        ("participant_key", "ab" * 31),
        ("participant_key", "zz" * 32),
        ("record_count", 0),
        ("record_count", "13"),
        ("record_count", 2**53 + 1),
        ("chunk_count", 5),
        ("records_per_chunk", -1),
        ("payload_size", 0),
        ("payload_size", 2**32),
        ("schema", []),
        ("merkle_root", 7),
        ("created_at", "yesterday"),
        ("created_at", "2024-1-01T00:00:00Z"),
        ("created_at", 1700000000),
    ],
)
def test_header_field_validation_names_the_field(field: str, value: Any) -> None:
    d = _header_dict()
    d[field] = value
    with pytest.raises(ContainerFormatError, match=field):
        ContainerHeader.from_bytes(_encode(d))


def test_header_unknown_missing_and_non_canonical() -> None:
    d = _header_dict()
    with pytest.raises(ContainerFormatError, match="unknown field 'zzz'"):
        ContainerHeader.from_bytes(_encode({**d, "zzz": 1}))
    del d["schema"]
    with pytest.raises(ContainerFormatError, match="lacks field 'schema'"):
        ContainerHeader.from_bytes(_encode(d))
    raw = read_header(blob_a())[0].to_bytes()
    with pytest.raises(ContainerFormatError, match="canonical"):
        ContainerHeader.from_bytes(json.dumps(json.loads(raw)).encode())
    with pytest.raises(ContainerFormatError, match="canonical"):
        ContainerHeader.from_bytes(raw[:-1] + b',"dataset_id":"ds-1"}')
    for bad in (b"[1]", b"\xff", b"{" * 100000, b'{"schema":NaN}', b"1" * 5000):
        with pytest.raises(ContainerFormatError):
            ContainerHeader.from_bytes(bad)


@given(st.binary(max_size=300))
def test_arbitrary_header_bytes_only_raise_format_errors(raw: bytes) -> None:
    with pytest.raises(ContainerFormatError):
        ContainerHeader.from_bytes(raw)


FIELD_NAMES = [f.name for f in fields(ContainerHeader)]


@given(st.dictionaries(st.sampled_from([*FIELD_NAMES, "x"]), st.none() | st.integers() | st.text(max_size=5)))
@settings(deadline=None)
def test_arbitrary_header_objects_only_raise_format_errors(d: dict[str, Any]) -> None:
    with pytest.raises(ContainerFormatError):
        ContainerHeader.from_bytes(_encode({**_header_dict(), **d, "schema": 1}))


def test_receipt_round_trip_and_inclusion() -> None:
    opened = open_(blob_a())
    receipt = receipt_for(opened.header, opened.signature)
    again = Receipt.from_json(receipt.to_json())
    assert again == receipt
    again.verify()
    assert (again.dataset_id, again.participant_id, again.record_count) == ("ds-1", "alice", RECORDS)
    assert again.participant_key == alice().public_key
    tree = MerkleTree(list(opened.record_hashes))
    payload, label = records(0)[5]
    verify_inclusion(record_commitment(record_salt(key()), 5, payload, label), tree.proof(5), again.merkle_root)


def test_receipt_tampering_and_malformed() -> None:
    header, signature = read_header(blob_a())
    with pytest.raises(BadSignature):
        receipt_for(replace(header, record_count=RECORDS + 1, chunk_count=4), signature)
    forged = json.loads(receipt_for(header, signature).to_json())
    forged["header"] = forged["header"].replace('"ds-1"', '"ds-9"')
    with pytest.raises(BadSignature):
        Receipt.from_json(json.dumps(forged)).verify()
    for bad in (
        "",
        "[]",
        '{"header": 1, "signature": "00"}',
        '{"header": "{}", "signature": "zz"}',
        json.dumps({"header": header.to_bytes().decode(), "signature": "00"}),
    ):
        with pytest.raises(ContainerFormatError):
            Receipt.from_json(bad)


def test_created_at_is_recorded() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert read_header(pack(0, created_at=when))[0].created_at == "2024-05-06T07:08:09Z"
