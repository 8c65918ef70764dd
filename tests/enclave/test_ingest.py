"""Confidential ingestion through a real enclave process: all or nothing, typed errors, nothing leaks."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.crypto.errors import BadSignature, ContainerMismatch, KeyUnwrapError
from caltrain.enclave.errors import DuplicateDataset, SealedStateError
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import DatasetInfo, DatasetList, IngestDataset, ListDatasets
from caltrain.errors import AuthError, CaltrainError, EnclaveError
from tests.helpers import (
    Packed,
    People,
    container_chunks,
    digits_shares,
    flip_bit,
    pack,
    record_payloads,
    submission,
)

_ids = itertools.count()


def new_packed(people: People, who: str = "alice", parts: int = 4) -> Packed:
    share = digits_shares(parts)[next(_ids) % parts]
    identity = getattr(people, who)
    return pack(share, identity, who, f"{who}-{next(_ids)}")


def dataset_ids(enclave: EnclaveHost) -> list[str]:
    return [d["dataset_id"] for d in enclave.call(ListDatasets(), DatasetList).datasets]


def test_ingest_reports_commitment(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    info = enclave.call(submission(packed, people.alice, enclave.keys), DatasetInfo)
    assert info.record_count == len(packed.dataset)
    from caltrain.crypto.container import read_header

    assert info.merkle_root == read_header(packed.container)[0].merkle_root.hex()
    assert packed.dataset_id in dataset_ids(enclave)


def test_replayed_upload_ingests_nothing_twice(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    msg = submission(packed, people.alice, enclave.keys)
    enclave.call(msg, DatasetInfo)
    before = dataset_ids(enclave)
    with pytest.raises(DuplicateDataset):
        enclave.call(msg, DatasetInfo)
    assert dataset_ids(enclave) == before


@functools.cache
def _fixed_packed(people: People) -> Packed:
    """One container for every example (hypothesis needs the same sizes each run); it is never ingested."""
    return pack(digits_shares(8)[0], people.alice, "alice", "alice-mutation-target")


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
        enclave.call(submission(packed, people.alice, enclave.keys, container=mutated), DatasetInfo)
    assert dataset_ids(enclave) == before


def test_splice_between_containers_rejected(enclave: EnclaveHost, people: People) -> None:
    """Chunks of another container under the same data key (same participant) do not authenticate."""
    a = new_packed(people, parts=8)
    b = pack(digits_shares(8)[5], people.alice, "alice", f"alice-{next(_ids)}")
    b = Packed(b.container, a.data_key, b.dataset_id, b.participant, b.dataset)
    prefix, chunks = container_chunks(a.container)
    _, other = container_chunks(b.container)
    spliced = prefix + chunks[0] + other[1] + b"".join(chunks[2:])
    before = dataset_ids(enclave)
    with pytest.raises(CaltrainError):
        enclave.call(submission(a, people.alice, enclave.keys, container=spliced), DatasetInfo)
    assert dataset_ids(enclave) == before


def test_replay_into_another_dataset_id(enclave: EnclaveHost, people: People) -> None:
    """The data key wrapped for another dataset id does not unwrap: HPKE context binds the dataset id."""
    packed = new_packed(people)
    relabelled = Packed(packed.container, packed.data_key, "alice-other", "alice", packed.dataset)
    msg = submission(relabelled, people.alice, enclave.keys)
    with pytest.raises(KeyUnwrapError):
        enclave.call(msg, DatasetInfo)


def test_key_wrapped_to_another_enclave(enclave: EnclaveHost, fresh_enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    wrapped_elsewhere = submission(packed, people.alice, fresh_enclave.keys)
    # Re-sign for the target enclave so the signature check passes and the unwrap itself is what fails.
    from caltrain.enclave.protocol import submission_digest

    sig = people.alice.sign(submission_digest(packed.container, wrapped_elsewhere.wrapped_key, enclave.keys))
    msg = IngestDataset(
        participant="alice", container=packed.container, wrapped_key=wrapped_elsewhere.wrapped_key, signature=sig
    )
    with pytest.raises(KeyUnwrapError):
        enclave.call(msg, DatasetInfo)


def test_unknown_participant_denied(enclave: EnclaveHost, people: People) -> None:
    packed = pack(digits_shares(4)[0], people.outsider, "mallory", f"mallory-{next(_ids)}")
    with pytest.raises(AuthError, match="not a member"):
        enclave.call(submission(packed, people.outsider, enclave.keys), DatasetInfo)


def test_auditor_cannot_submit_data(enclave: EnclaveHost, people: People) -> None:
    packed = pack(digits_shares(4)[0], people.auditor, "auditor", f"aud-{next(_ids)}")
    with pytest.raises(AuthError, match="not a participant"):
        enclave.call(submission(packed, people.auditor, enclave.keys), DatasetInfo)


def test_submission_signed_by_someone_else(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people)
    with pytest.raises(BadSignature):
        enclave.call(submission(packed, people.bob, enclave.keys), DatasetInfo)


def test_container_of_bob_submitted_as_alice(enclave: EnclaveHost, people: People) -> None:
    packed = new_packed(people, who="bob")
    with pytest.raises(ContainerMismatch):
        enclave.call(submission(packed, people.alice, enclave.keys, participant="alice"), DatasetInfo)


def test_earlier_datasets_survive_bad_input_and_restart(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    good = new_packed(people)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call(submission(good, people.alice, host.keys), DatasetInfo)
        bad = new_packed(people)
        with pytest.raises(CaltrainError):
            host.call(submission(bad, people.alice, host.keys, container=flip_bit(bad.container, 9000)), DatasetInfo)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        assert dataset_ids(host) == [good.dataset_id]


def test_tampered_sealed_index_detected_at_boot(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call(submission(new_packed(people), people.alice, host.keys), DatasetInfo)
    index = tmp_path / "enclave" / "datasets.sealed"
    index.write_bytes(flip_bit(index.read_bytes(), 200))
    with EnclaveHost(state_dir=tmp_path, config=config) as host, pytest.raises(SealedStateError):
        dataset_ids(host)


def test_container_modified_at_rest_detected(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        host.call(submission(new_packed(people), people.alice, host.keys), DatasetInfo)
    (stored,) = (tmp_path / "enclave").glob("*.ctd")
    stored.write_bytes(flip_bit(stored.read_bytes(), 12345))
    with EnclaveHost(state_dir=tmp_path, config=config) as host, pytest.raises(SealedStateError, match="modified"):
        dataset_ids(host)


def test_other_measurement_cannot_unseal(people: People, tmp_path: Path) -> None:
    """State sealed by one enclave configuration is unreadable by another (different measurement)."""
    with EnclaveHost(state_dir=tmp_path, config=EnclaveConfig(people.consortium)) as host:
        host.call(submission(new_packed(people), people.alice, host.keys), DatasetInfo)
    smaller = EnclaveConfig(type(people.consortium)(people.consortium.members[:2]))
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
        seen.append(msg.container + msg.wrapped_key + msg.signature)  # what the participant sends the host
        host.call(msg, DatasetInfo)
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


def test_unknown_call_is_a_typed_failure(enclave: EnclaveHost) -> None:
    from caltrain.enclave.wire import Ok, Shutdown  # noqa: F401  (Ok is not a call the enclave answers)
    from caltrain.enclave.wire import Ok as NotACall

    with pytest.raises(EnclaveError, match="no call Ok"):
        enclave.call(NotACall(), DatasetList)


def test_overlapped_call_keeps_the_channel_in_step(enclave: EnclaveHost) -> None:
    """A reply left unread when the block ends is consumed, so the next call gets its own reply."""
    with enclave.calling(ListDatasets(), DatasetList) as reply:
        before = reply().datasets
    with enclave.calling(ListDatasets(), DatasetList):
        pass
    assert enclave.call(ListDatasets(), DatasetList).datasets == before
    from caltrain.enclave.wire import Ok as NotACall

    with pytest.raises(EnclaveError), enclave.calling(NotACall(), DatasetList) as reply:
        reply()
    assert enclave.call(ListDatasets(), DatasetList).datasets == before
