"""The participant data container, format version 2.

    magic b"CTD\\x02" | u32 header length | canonical JSON header | Ed25519 signature (64) | chunks
    chunk = u32 length | nonce (12) | AES-256-GCM ciphertext + tag
    chunk plaintext = records, each `i64 big-endian label || payload`

The participant signs the header, which commits to the record count, the layout and the RFC 6962 Merkle root
over the records' commitments. A commitment is salted with a secret derived from the data key and bound to the
record's index (`caltrain.crypto.hashing.record_commitment`), so only the participant and the enclave can link a
commitment to a record, and equal records never share one. Each chunk's associated data binds the hash of the
signed header (hence dataset id, participant id and root), the chunk index and the chunk count, so reordering,
truncation, splicing between containers and replay into another dataset all fail authentication or the count
checks. Opening is all or
nothing: records are handed out only after every chunk decrypted and the recomputed root matched.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from caltrain.crypto import aead
from caltrain.crypto.errors import ContainerFormatError, ContainerMismatch, IntegrityError
from caltrain.crypto.hashing import record_commitments, record_salt, sha256, tagged_hash
from caltrain.crypto.merkle import merkle_root
from caltrain.crypto.signing import SIGNATURE_BYTES, Identity, verify_signature

FORMAT_VERSION = 2
MAGIC = b"CTD\x02"
MAX_HEADER_BYTES = 1 << 20
MAX_ID_CHARS = 256
_MAX_COUNT = 1 << 53  # JSON integers stay exact in every common parser below this
_MAX_CHUNK_BYTES = (1 << 32) - 1
_LABEL_BYTES = 8
_PREFIX = struct.Struct(">4sI")
_U32 = struct.Struct(">I")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HEADER_TAG = "caltrain/container-header/v1"
_CHUNK_TAG = "caltrain/chunk/v1"
_CHUNK_OVERHEAD = aead.NONCE_BYTES + aead.TAG_BYTES
_FIXED_SIZE = _PREFIX.size + SIGNATURE_BYTES


def _canonical_json(obj: Any) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ContainerFormatError(f"container header field {name!r} must be an integer in [{low}, {high}]")


def _check_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise ContainerFormatError(f"container header field {name!r} must be 1..{MAX_ID_CHARS} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ContainerFormatError(f"container header field {name!r} is not encodable as UTF-8") from None


def _hex32(name: str, value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise ContainerFormatError(f"container header field {name!r} must be 64 lowercase hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ContainerFormatError(f"container header field {name!r} is not hex") from None


@dataclass(frozen=True)
class ContainerHeader:
    """The signed description of a container; constructing one validates every field."""

    dataset_id: str
    participant_id: str
    participant_key: bytes
    record_count: int
    chunk_count: int
    records_per_chunk: int
    payload_size: int
    schema: dict[str, Any]
    merkle_root: bytes
    created_at: str
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_int("format_version", self.format_version, FORMAT_VERSION, FORMAT_VERSION)
        _check_id("dataset_id", self.dataset_id)
        _check_id("participant_id", self.participant_id)
        for name in ("participant_key", "merkle_root"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ContainerFormatError(f"container header field {name!r} must be 32 bytes")
        _check_int("record_count", self.record_count, 1, _MAX_COUNT)
        _check_int("records_per_chunk", self.records_per_chunk, 1, _MAX_COUNT)
        _check_int("payload_size", self.payload_size, 1, _MAX_CHUNK_BYTES)
        _check_int("chunk_count", self.chunk_count, 1, (1 << 32) - 1)
        needed = math.ceil(self.record_count / self.records_per_chunk)
        if self.chunk_count != needed:
            raise ContainerFormatError(
                f"container header field 'chunk_count' is {self.chunk_count}, but {self.record_count} "
                f"records at {self.records_per_chunk} per chunk need {needed}"
            )
        if self.records_per_chunk * self.record_bytes + _CHUNK_OVERHEAD > _MAX_CHUNK_BYTES:
            raise ContainerFormatError("container header field 'records_per_chunk' makes chunks exceed 4 GiB")
        if not isinstance(self.schema, dict):
            raise ContainerFormatError("container header field 'schema' must be a JSON object")
        try:
            _canonical_json(self.schema)
        except (TypeError, ValueError) as e:
            raise ContainerFormatError(f"container header field 'schema' is not plain JSON: {e}") from None
        try:
            ok = datetime.strptime(self.created_at, _TIME_FORMAT).strftime(_TIME_FORMAT) == self.created_at
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ContainerFormatError("container header field 'created_at' must be 'YYYY-MM-DDTHH:MM:SSZ'")

    @property
    def record_bytes(self) -> int:
        """Bytes one record takes in a chunk's plaintext."""
        return _LABEL_BYTES + self.payload_size

    def records_in_chunk(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.records_per_chunk
        return self.record_count - self.records_per_chunk * (self.chunk_count - 1)

    def chunk_length(self, index: int) -> int:
        """The exact u32 length field of chunk `index` (nonce, ciphertext and tag)."""
        return self.records_in_chunk(index) * self.record_bytes + _CHUNK_OVERHEAD

    def container_length(self, header_length: int) -> int:
        """The exact size of a container with this header: anything else is truncated or padded."""
        framing = _FIXED_SIZE + header_length + self.chunk_count * (_U32.size + _CHUNK_OVERHEAD)
        return framing + self.record_count * self.record_bytes

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["participant_key"] = self.participant_key.hex()
        out["merkle_root"] = self.merkle_root.hex()
        return out

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, UTF-8): the exact bytes the participant signs."""
        return _canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> ContainerHeader:
        """Parse strictly: canonical form, every field present, none unknown, types and ranges checked."""
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ContainerFormatError(f"container header is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ContainerFormatError("container header must be a JSON object")
        expected = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - expected), sorted(expected - set(data))
        if unknown:
            raise ContainerFormatError(f"container header has unknown field {unknown[0]!r}")
        if missing:
            raise ContainerFormatError(f"container header lacks field {missing[0]!r}")
        data["participant_key"] = _hex32("participant_key", data["participant_key"])
        data["merkle_root"] = _hex32("merkle_root", data["merkle_root"])
        header = cls(**data)
        if header.to_bytes() != raw:
            raise ContainerFormatError("container header is not in canonical JSON form")
        return header


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _header_digest(header_bytes: bytes) -> bytes:
    return tagged_hash(_HEADER_TAG, header_bytes)


def chunk_aad(header_hash: bytes, index: int, count: int) -> bytes:
    """Associated data of chunk `index` of `count`, given SHA-256 of the signed header bytes."""
    return tagged_hash(_CHUNK_TAG, header_hash, _U32.pack(index), _U32.pack(count))


def _labels_be(labels: Sequence[int], count: int) -> bytes:
    if len(labels) != count:
        raise ContainerFormatError(f"{count} payloads but {len(labels)} labels")
    try:
        return struct.pack(f">{count}q", *labels)
    except struct.error:
        raise ContainerFormatError("every label must be an integer within the signed 64-bit range") from None


def pack_arrays(
    payloads: aead.BytesLike,
    labels: Sequence[int],
    *,
    payload_size: int,
    dataset_id: str,
    identity: Identity,
    participant_id: str,
    data_key: bytes,
    schema: dict[str, Any],
    chunk_bytes: int = 1 << 20,
    created_at: datetime | None = None,
) -> bytes:
    """Encrypt and sign records given as one buffer of `len(labels) * payload_size` bytes and their labels."""
    view = memoryview(payloads).cast("B")
    if payload_size < 1 or len(view) % payload_size:
        raise ContainerFormatError(f"{len(view)} payload bytes are not whole records of {payload_size} bytes")
    count = len(view) // payload_size
    labels_be = _labels_be(labels, count)
    record_bytes = _LABEL_BYTES + payload_size
    per_chunk = max(1, min(count, chunk_bytes // record_bytes))
    records = np.empty((count, record_bytes), dtype=np.uint8)
    records[:, :_LABEL_BYTES] = np.frombuffer(labels_be, dtype=np.uint8).reshape(count, _LABEL_BYTES)
    records[:, _LABEL_BYTES:] = np.frombuffer(view, dtype=np.uint8).reshape(count, payload_size)
    plain = records.data.cast("B")
    header = ContainerHeader(
        dataset_id=dataset_id,
        participant_id=participant_id,
        participant_key=identity.public_key,
        record_count=count,
        chunk_count=math.ceil(count / per_chunk),
        records_per_chunk=per_chunk,
        payload_size=payload_size,
        schema=schema,
        merkle_root=merkle_root(record_commitments(plain, payload_size, record_salt(data_key))),
        created_at=(created_at or datetime.now(UTC)).astimezone(UTC).strftime(_TIME_FORMAT),
    )
    header_bytes = header.to_bytes()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ContainerFormatError(f"container header is {len(header_bytes)} bytes, over {MAX_HEADER_BYTES}")
    header_hash = sha256(header_bytes)
    aes = aead.cipher(data_key)
    signature = identity.sign(_header_digest(header_bytes))
    parts = [_PREFIX.pack(MAGIC, len(header_bytes)), header_bytes, signature]
    for index in range(header.chunk_count):
        start = index * per_chunk * record_bytes
        end = start + header.records_in_chunk(index) * record_bytes
        blob = aead.encrypt_with(aes, plain[start:end], chunk_aad(header_hash, index, header.chunk_count))
        parts += [_U32.pack(len(blob)), blob]
    return b"".join(parts)


def pack_container(
    records: Iterable[tuple[bytes, int]],
    *,
    dataset_id: str,
    identity: Identity,
    participant_id: str,
    data_key: bytes,
    schema: dict[str, Any],
    chunk_bytes: int = 1 << 20,
    created_at: datetime | None = None,
) -> bytes:
    """Encrypt and sign `(payload, label)` records; every payload must have the same length."""
    payloads: list[bytes] = []
    labels: list[int] = []
    for payload, label in records:
        payloads.append(bytes(payload))
        labels.append(label)
    if not payloads:
        raise ContainerFormatError("a container needs at least one record")
    size = len(payloads[0])
    for i, payload in enumerate(payloads):
        if len(payload) != size:
            raise ContainerFormatError(f"record {i} payload is {len(payload)} bytes, record 0's is {size}")
    return pack_arrays(
        b"".join(payloads),
        labels,
        payload_size=size,
        dataset_id=dataset_id,
        identity=identity,
        participant_id=participant_id,
        data_key=data_key,
        schema=schema,
        chunk_bytes=chunk_bytes,
        created_at=created_at,
    )


def _split_header(blob: aead.BytesLike) -> tuple[memoryview, bytes, bytes]:
    """(whole container view, header bytes, signature), checking only the framing."""
    view = memoryview(blob).cast("B")
    if len(view) < _FIXED_SIZE:
        raise ContainerFormatError(f"container is {len(view)} bytes, too short for its fixed fields")
    magic, header_length = _PREFIX.unpack_from(view)
    if magic[:3] != MAGIC[:3]:
        raise ContainerFormatError("not a caltrain data container (bad magic)")
    if magic != MAGIC:
        raise ContainerFormatError(f"unsupported container format version {magic[3]}")
    if header_length > MAX_HEADER_BYTES:
        raise ContainerFormatError(f"container header length {header_length} exceeds {MAX_HEADER_BYTES}")
    if len(view) < _FIXED_SIZE + header_length:
        raise ContainerFormatError("container is truncated inside its header or signature")
    header_bytes = bytes(view[_PREFIX.size : _PREFIX.size + header_length])
    signature = bytes(view[_PREFIX.size + header_length : _FIXED_SIZE + header_length])
    return view, header_bytes, signature


def read_header(blob: aead.BytesLike) -> tuple[ContainerHeader, bytes]:
    """The header and signature, unverified: enough to route a container or pick the key to unwrap."""
    _, header_bytes, signature = _split_header(blob)
    return ContainerHeader.from_bytes(header_bytes), signature


@dataclass(frozen=True, eq=False)
class OpenedContainer:
    """A fully verified container's records: payloads, labels and commitments.

    `payloads` is a read-only uint8 array of shape (record_count, payload_size): a strided view into the
    decrypted chunks (each row follows its 8-byte label), so opening never copies the records.
    """

    header: ContainerHeader
    signature: bytes
    payloads: np.ndarray
    labels: tuple[int, ...]
    record_hashes: tuple[bytes, ...] = field(repr=False)

    def __len__(self) -> int:
        return self.header.record_count

    def payload(self, index: int) -> memoryview:
        return self.payloads[index].data

    def records(self) -> Iterator[tuple[memoryview, int]]:
        return ((self.payload(i), label) for i, label in enumerate(self.labels))


def open_container(
    blob: aead.BytesLike,
    data_key: bytes,
    *,
    participant_key: bytes,
    expected_dataset_id: str | None = None,
) -> OpenedContainer:
    """Verify and decrypt a whole container; returns only if every check passed, raises a `CryptoError` else.

    Checks, in order: framing; the header signature under `participant_key` (and that the header names that
    key); the dataset id; the exact total length; every chunk's length and authentication (binding index and
    count); the recomputed Merkle root.
    """
    view, header_bytes, signature = _split_header(blob)
    verify_signature(participant_key, _header_digest(header_bytes), signature, what="container header")
    header = ContainerHeader.from_bytes(header_bytes)
    if header.participant_key != participant_key:
        raise ContainerMismatch("container header names another participant key than the expected one")
    if expected_dataset_id is not None and header.dataset_id != expected_dataset_id:
        raise ContainerMismatch(
            f"container is for dataset {header.dataset_id!r}, expected {expected_dataset_id!r}"
        )
    expected_length = header.container_length(len(header_bytes))
    if len(view) != expected_length:
        state = "truncated" if len(view) < expected_length else "followed by trailing bytes"
        raise ContainerFormatError(f"container is {len(view)} bytes, expected {expected_length}: {state}")

    aes = aead.cipher(data_key)
    header_hash = sha256(header_bytes)
    count, record_bytes = header.chunk_count, header.record_bytes
    chunks: list[memoryview] = []
    offset = _FIXED_SIZE + len(header_bytes)
    for index in range(count):
        (length,) = _U32.unpack_from(view, offset)
        if length != header.chunk_length(index):
            raise ContainerFormatError(
                f"chunk {index} length field is {length}, expected {header.chunk_length(index)}"
            )
        chunks.append(view[offset + _U32.size : offset + _U32.size + length])
        offset += _U32.size + length

    # Chunks hold whole records, so their plaintexts laid back to back are exactly the records array.
    records = np.empty((header.record_count, record_bytes), dtype=np.uint8)
    plain = records.data.cast("B")
    chunk_plain = header.records_per_chunk * record_bytes

    def decrypt_chunk(index: int) -> memoryview:
        """Decrypt chunk `index` in place into its slice of `records`, which it returns."""
        start = index * chunk_plain
        out = plain[start : start + len(chunks[index]) - _CHUNK_OVERHEAD]
        try:
            aead.decrypt_into(aes, chunks[index], chunk_aad(header_hash, index, count), out)
        except IntegrityError:
            raise IntegrityError(
                f"chunk {index} of {count} failed authentication: wrong data key, tampered, reordered "
                "or spliced from another container"
            ) from None
        return out

    # One thread decrypts ahead (AES-GCM releases the GIL for a whole chunk) while this one hashes records in
    # order. Two threads that each decrypt and hash chunks measured no faster and used ~8% more CPU: every
    # record's hash hands the GIL over. On any failure `records` (possibly holding unauthenticated bytes) is
    # dropped unseen, and the lowest failing chunk's error is the one raised.
    commitments: list[bytes] = []
    salt = record_salt(data_key)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for index, decrypted in enumerate([pool.submit(decrypt_chunk, index) for index in range(count)]):
            commitments += record_commitments(
                decrypted.result(), header.payload_size, salt, index * header.records_per_chunk
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if merkle_root(commitments) != header.merkle_root:
        raise ContainerMismatch("records do not match the Merkle root the participant signed")
    records.setflags(write=False)
    return OpenedContainer(
        header=header,
        signature=signature,
        payloads=records[:, _LABEL_BYTES:],
        labels=struct.unpack(f">{header.record_count}q", records[:, :_LABEL_BYTES].tobytes()),
        record_hashes=tuple(commitments),
    )


@dataclass(frozen=True)
class Receipt:
    """What a participant keeps: its signed header, proving which records (Merkle root) it contributed."""

    header: ContainerHeader
    signature: bytes

    @property
    def dataset_id(self) -> str:
        return self.header.dataset_id

    @property
    def participant_id(self) -> str:
        return self.header.participant_id

    @property
    def participant_key(self) -> bytes:
        return self.header.participant_key

    @property
    def record_count(self) -> int:
        return self.header.record_count

    @property
    def merkle_root(self) -> bytes:
        return self.header.merkle_root

    def verify(self) -> None:
        """Raise `BadSignature` unless the participant named in the header signed it."""
        verify_signature(
            self.participant_key, _header_digest(self.header.to_bytes()), self.signature, what="receipt"
        )

    def to_json(self) -> str:
        return json.dumps({"header": self.header.to_bytes().decode(), "signature": self.signature.hex()})

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        try:
            data = json.loads(text)
            header_text, signature_hex = data["header"], data["signature"]
            signature = bytes.fromhex(signature_hex)
            header_bytes = header_text.encode()
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ContainerFormatError(f"receipt is malformed: {e!r}") from None
        if set(data) != {"header", "signature"} or len(signature) != SIGNATURE_BYTES:
            raise ContainerFormatError("receipt must hold exactly a header and a 64-byte signature")
        return cls(ContainerHeader.from_bytes(header_bytes), signature)


def receipt_for(header: ContainerHeader, signature: bytes) -> Receipt:
    """The receipt for a packed container (from `read_header` or `OpenedContainer`); verifies it first."""
    receipt = Receipt(header, signature)
    receipt.verify()
    return receipt
