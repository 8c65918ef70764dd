"""Confidential ingestion through a real enclave process: all or nothing, typed errors, nothing leaks."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.crypto import aead
from caltrain.crypto.container import pack_arrays, read_header
from caltrain.crypto.errors import ContainerMismatch, KeyUnwrapError
from caltrain.crypto.hpke import wrap_key
from caltrain.enclave.authority import UNSIGNED
from caltrain.enclave.consortium import Consortium
from caltrain.enclave.errors import DuplicateDataset, RequestReplayed, SchemaViolation, SealedStateError
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import wrap_context
from caltrain.enclave.wire import DatasetList, DatasetReceipt, IngestDataset, ListDatasets, Ok
from caltrain.errors import AuthError, CaltrainError, EnclaveError, Unauthenticated
from tests.helpers import (
    Packed,
    People,
    container_chunks,
    digits_shares,
    flip_bit,
    open_policy,
    pack,
    record_payloads,
    signed_by,
    submission,
    with_field,
)

_ids = itertools.count()


def new_packed(people: People, who: str = "alice", parts: int = 4) -> Packed:
    share = digits_shares(parts)[next(_ids) % parts]
    return pack(share, getattr(people, who), f"{who}-{next(_ids)}")


def dataset_ids(enclave: EnclaveHost) -> list[str]:
    return [d["dataset_id"] for d in enclave.call(ListDatasets(), DatasetList).datasets]


def test_ingest_answers_a_signed_receipt(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    _, receipt = enclave.call_member(submission(packed, people.alice, enclave.keys), DatasetReceipt)
    assert receipt.record_count == len(packed.dataset)
    assert receipt.merkle_root == read_header(packed.container)[0].merkle_root.hex()
    assert receipt.policy_digest == open_policy().digest
    assert receipt.dataset_id == packed.qualified_id in dataset_ids(enclave)


def test_replayed_upload_ingests_nothing_twice(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    msg = submission(packed, people.alice, enclave.keys)
    enclave.call_member(msg, DatasetReceipt)
    before = dataset_ids(enclave)
    with pytest.raises(RequestReplayed):  # the same signed request: its single-use id is spent
        enclave.call_member(msg, DatasetReceipt)
    with pytest.raises(DuplicateDataset):  # signed afresh: the dataset id is taken
        enclave.call_member(submission(packed, people.alice, enclave.keys), DatasetReceipt)
    assert dataset_ids(enclave) == before


@functools.cache
def _fixed_packed(people: People) -> Packed:
    """One container for every example (hypothesis needs the same sizes each run); it is never ingested."""
    return pack(digits_shares(8)[0], people.alice, "alice-mutation-target")


@settings(max_examples=40)
@given(data=st.data())
def test_mutated_containers_rejected_and_nothing_ingested(
    enclave: EnclaveHost, people: People, data: st.DataObject
) -> None:
    """Bit flips, truncations, appended bytes, chunk reorders and drops: each rejected, store unchanged."""
    packed = _fixed_packed(people)
    blob = packed.container
    prefix, chunks = container_chunks(blob)
    assert len(chunks) >= 2
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "reorder", "drop"]))
    if kind == "flip":
        mutated = flip_bit(blob, data.draw(st.integers(0, len(blob) * 8 - 1)))
    elif kind == "truncate":
        mutated = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "append":
        mutated = blob + data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "reorder":
        i = data.draw(st.integers(0, len(chunks) - 2))
        chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
        mutated = prefix + b"".join(chunks)
    else:
        del chunks[data.draw(st.integers(0, len(chunks) - 1))]
        mutated = prefix + b"".join(chunks)
    before = dataset_ids(enclave)
    # The participant signs what it sends, so only the enclave's own checks stand between it and ingestion.
    with pytest.raises(CaltrainError):
        enclave.call_member(submission(packed, people.alice, enclave.keys, container=mutated), DatasetReceipt)
    assert dataset_ids(enclave) == before


def test_splice_between_containers_rejected(enclave: EnclaveHost, people: People) -> None:
    """Chunks of another container under the same data key (same participant) do not authenticate."""
    a = new_packed(people, parts=8)
    b = pack(digits_shares(8)[5], people.alice, f"alice-{next(_ids)}")
    b = Packed(b.container, a.data_key, b.dataset_id, b.participant, b.dataset)
    prefix, chunks = container_chunks(a.container)
    _, other = container_chunks(b.container)
    spliced = prefix + chunks[0] + other[1] + b"".join(chunks[2:])
    before = dataset_ids(enclave)
    with pytest.raises(CaltrainError):
        enclave.call_member(submission(a, people.alice, enclave.keys, container=spliced), DatasetReceipt)
    assert dataset_ids(enclave) == before


def test_replay_into_another_dataset_id(enclave: EnclaveHost, people: People) -> None:
    """The data key wrapped for another dataset id does not unwrap: HPKE context binds the dataset id."""
    packed = new_packed(people)
    relabelled = Packed(packed.container, packed.data_key, "alice-other", "alice", packed.dataset)
    msg = submission(relabelled, people.alice, enclave.keys)
    with pytest.raises(KeyUnwrapError):
        enclave.call_member(msg, DatasetReceipt)


def test_key_wrapped_to_another_enclave(enclave: EnclaveHost, fresh_enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    wrapped = wrap_key(packed.data_key, fresh_enclave.keys.hpke, context=wrap_context(packed.dataset_id, "alice"))
    # Signed for the target enclave, so the authorization passes and the unwrap itself is what fails.
    msg = IngestDataset(container=packed.container, wrapped_key=wrapped, policy=open_policy().canonical_bytes(),
                        auth=UNSIGNED)
    with pytest.raises(KeyUnwrapError):
        enclave.call_member(signed_by(msg, people.alice, enclave.keys), DatasetReceipt)


def test_unknown_participant_denied(enclave: EnclaveHost, people: People) -> None:
    packed = pack(digits_shares(4)[0], people.outsider, f"mallory-{next(_ids)}")
    with pytest.raises(AuthError, match="not a member"):
        enclave.call_member(submission(packed, people.outsider, enclave.keys), DatasetReceipt)


def test_auditor_cannot_submit_data(enclave: EnclaveHost, people: People) -> None:
    packed = pack(digits_shares(4)[0], people.auditor, f"aud-{next(_ids)}")
    with pytest.raises(AuthError, match="needs a member: participant"):
        enclave.call_member(submission(packed, people.auditor, enclave.keys), DatasetReceipt)


def test_submission_signed_by_someone_else(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    msg = submission(packed, people.bob, enclave.keys)  # bob's signature, presented as alice's
    with pytest.raises(Unauthenticated):
        enclave.call_member(with_field(msg, auth=with_field(msg.auth, member="alice")), DatasetReceipt)


def test_container_of_bob_submitted_as_alice(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people, who="bob")
    with pytest.raises(ContainerMismatch):
        enclave.call_member(submission(packed, people.alice, enclave.keys), DatasetReceipt)


def test_earlier_datasets_survive_bad_input_and_restart(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    good = new_packed(people)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call_member(submission(good, people.alice, host.keys), DatasetReceipt)
        bad = new_packed(people)
        with pytest.raises(CaltrainError):
            host.call_member(
                submission(bad, people.alice, host.keys, container=flip_bit(bad.container, 9000)), DatasetReceipt
            )
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        assert dataset_ids(host) == [good.qualified_id]


def test_tampered_sealed_index_refused_at_boot(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call_member(submission(new_packed(people), people.alice, host.keys), DatasetReceipt)
    index = tmp_path / "enclave" / "datasets.sealed"
    index.write_bytes(flip_bit(index.read_bytes(), 200))
    with pytest.raises(SealedStateError):
        EnclaveHost(state_dir=tmp_path, config=config).start()


def test_container_modified_at_rest_refused_at_boot(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call_member(submission(new_packed(people), people.alice, host.keys), DatasetReceipt)
    (stored,) = (tmp_path / "enclave").glob("*.ctd")
    stored.write_bytes(flip_bit(stored.read_bytes(), 12345))
    with pytest.raises(SealedStateError, match="modified"):
        EnclaveHost(state_dir=tmp_path, config=config).start()


def test_other_measurement_cannot_unseal(people: People, tmp_path: Path) -> None:
    """State sealed by one enclave configuration is unreadable by another (different measurement)."""
    with EnclaveHost(state_dir=tmp_path, config=EnclaveConfig(people.consortium)) as host:
        host.call_member(submission(new_packed(people), people.alice, host.keys), DatasetReceipt)
    smaller = EnclaveConfig(Consortium(people.consortium.members[:2], people.consortium.schema))
    with pytest.raises(CaltrainError):
        EnclaveHost(state_dir=tmp_path, config=smaller).start()


def test_boundary_carries_no_plaintext_and_no_keys(people: People, tmp_path: Path) -> None:
    """Record every byte the host receives from the participant and from the enclave during an ingestion."""
    seen: list[bytes] = []
    host = EnclaveHost(
        state_dir=tmp_path, config=EnclaveConfig(people.consortium), tap=lambda direction, frame: seen.append(frame)
    )
    packed = new_packed(people)
    with host:
        msg = submission(packed, people.alice, host.keys)
        seen.append(msg.container + msg.wrapped_key + msg.policy)  # what the participant sends the host
        host.call_member(msg, DatasetReceipt)
        dataset_ids(host)
    stream = b"".join(seen)
    payloads = record_payloads(packed.dataset)
    assert payloads and all(len(p) == 256 for p in payloads)
    assert not [i for i, p in enumerate(payloads) if p in stream], "plaintext records crossed the boundary"
    assert packed.data_key not in stream
    assert packed.dataset.x.tobytes()[:64] not in stream
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert packed.data_key not in on_disk and not [p for p in payloads if p in on_disk]
    # The check itself can fail: the same scan finds the records in a plaintext dump.
    assert payloads[0] in packed.dataset.x.tobytes()


def test_a_reply_sent_as_a_call_is_a_typed_failure(enclave: EnclaveHost) -> None:
    with pytest.raises(EnclaveError, match="not a request"):
        enclave.call(Ok(), DatasetList)


def test_overlapped_call_keeps_the_channel_in_step(enclave: EnclaveHost) -> None:
    """A reply left unread when the block ends is consumed, so the next call gets its own reply."""
    with enclave.calling(ListDatasets(), DatasetList) as reply:
        before = reply().datasets
    with enclave.calling(ListDatasets(), DatasetList):
        pass
    assert enclave.call(ListDatasets(), DatasetList).datasets == before
    with pytest.raises(EnclaveError), enclave.calling(Ok(), DatasetList) as reply:
        reply()
    assert enclave.call(ListDatasets(), DatasetList).datasets == before


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda x, y: (x, np.where(np.arange(len(y)) == 7, 10, y)), "record 7 has label 10"),
        (lambda x, y: (x, np.where(np.arange(len(y)) == 3, -1, y)), "record 3 has label -1"),
        (lambda x, y: (np.where(np.arange(len(y))[:, None, None, None] == 5, np.nan, x), y), "record 5 holds NaN"),
        (lambda x, y: (np.where(np.arange(len(y))[:, None, None, None] == 2, 1.5, x), y), "record 2 holds"),
        (lambda x, y: (x[:, :, :4, :4], y), "records are 64 bytes"),
    ],
)
def test_records_outside_the_consortium_schema_ingest_nothing(
    enclave: EnclaveHost, people: People, damage: Any, why: str
) -> None:
    share = digits_shares(4)[0]
    x, y = damage(share.x, share.y)
    x = np.ascontiguousarray(x, dtype=np.float32)
    key, dataset_id = aead.new_key(), f"alice-bad-{next(_ids)}"
    container = pack_arrays(  # what a participant's own tooling could send: no client-side checks
        x.tobytes(), [int(v) for v in y], payload_size=int(x[0].nbytes), dataset_id=dataset_id,
        identity=people.alice.identity, participant_id="alice", data_key=key, schema={},
    )
    packed = Packed(container, key, dataset_id, "alice", share)
    before = dataset_ids(enclave)
    with pytest.raises(SchemaViolation, match=f"dataset alice/{packed.dataset_id}: {why}"):
        enclave.call_member(submission(packed, people.alice, enclave.keys), DatasetReceipt)
    assert dataset_ids(enclave) == before
