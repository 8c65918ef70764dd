"""The signed structures of the authority layer, as properties: a signature covers every signed field of a
request, its member, the enclave instance and the request id; answers open only for their request, their
enclave and their member; parsers of what members and hosts send raise only their own typed errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.crypto.errors import IntegrityError
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.sealing import Sealer, derive_sealing_key
from caltrain.crypto.signing import Identity
from caltrain.enclave.authority import (
    UNSIGNED,
    authorize,
    open_sealed_reply,
    open_signed_reply,
    request_digest,
    seal_reply,
    sign_reply,
    verify_authorization,
)
from caltrain.enclave.consent import DataUsePolicy, PolicyInvalid
from caltrain.enclave.consortium import Consortium, ConsortiumError
from caltrain.enclave.counters import FileCounters
from caltrain.enclave.errors import ReplyInvalid, SealedStateError, StateRolledBack
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.sealed_state import CountedState
from caltrain.enclave.wire import (
    ROUTES,
    CreateJob,
    DatasetList,
    DeployModel,
    JobCreated,
    TraceQuery,
    WireError,
    from_json,
    to_json,
)
from caltrain.errors import AuthError, Unauthenticated
from tests.helpers import People, open_policy

KEYS = EnclaveKeys(HpkeKeyPair.generate().public_bytes, Identity.generate().public_key)
OTHER_KEYS = EnclaveKeys(HpkeKeyPair.generate().public_bytes, KEYS.signing)  # same identity, another boot

jobs = st.builds(
    lambda epochs, lr, names: CreateJob(spec={"epochs": epochs, "lr": lr, "datasets": names}, auth=UNSIGNED),
    st.integers(1, 50), st.floats(1e-4, 1.0), st.lists(st.text(min_size=1, max_size=8), max_size=3),
)
traces = st.builds(
    lambda job, inputs, k, method: TraceQuery(job_id=job, inputs=inputs, k=k, method=method, auth=UNSIGNED),
    st.text(max_size=12), st.binary(min_size=1, max_size=64), st.integers(1, 100), st.text(max_size=8),
)


def mutate(value: Any, draw: Any) -> Any:
    if isinstance(value, bytes):
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + bytes([value[i] ^ draw(st.integers(1, 255))]) + value[i + 1 :]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + draw(st.sampled_from([-1, 1]))
    if isinstance(value, str):
        return value + draw(st.text(min_size=1, max_size=3))
    if isinstance(value, dict):
        return {**value, draw(st.text(min_size=1, max_size=4)): 1}
    return [*value, "x"]


@settings(max_examples=80)
@given(msg=st.one_of(jobs, traces), data=st.data())
def test_a_signature_covers_every_signed_field(people: People, msg: Any, data: st.DataObject) -> None:
    signer = people.owner if isinstance(msg, CreateJob) else people.auditor
    signed = authorize(msg, identity=signer.identity, member=signer.name, keys=KEYS)
    route = ROUTES[type(msg)]
    assert verify_authorization(signed, route, people.consortium, KEYS).name == signer.name
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(msg) if f.name != "auth"]))
    changed = dataclasses.replace(signed, **{name: mutate(getattr(signed, name), data.draw)})
    if changed == signed:
        return
    with pytest.raises(Unauthenticated):
        verify_authorization(changed, route, people.consortium, KEYS)


@given(msg=jobs)
def test_a_signature_is_for_one_member_one_enclave_instance_and_one_request_id(people: People, msg: Any) -> None:
    route = ROUTES[CreateJob]
    signed = authorize(msg, identity=people.owner.identity, member="owner", keys=KEYS)
    with pytest.raises(Unauthenticated):  # the same enclave identity after a restart has another HPKE key
        verify_authorization(signed, route, people.consortium, OTHER_KEYS)
    with pytest.raises(Unauthenticated):
        verify_authorization(dataclasses.replace(signed, auth=dataclasses.replace(signed.auth, request_id="ab" * 16)),
                             route, people.consortium, KEYS)
    with pytest.raises(AuthError):  # alice's signature presented as the owner's, or alice herself: not an owner
        verify_authorization(authorize(msg, identity=people.alice.identity, member="alice", keys=KEYS), route,
                             people.consortium, KEYS)
    assert request_digest(signed, KEYS) != request_digest(
        authorize(msg, identity=people.owner.identity, member="owner", keys=KEYS), KEYS
    ), "every authorization draws a fresh request id"


def test_host_fields_are_left_to_the_host_and_nothing_else(people: People) -> None:
    deploy = DeployModel(model_id="m", job_id="", front_digest="", architecture="digits-cnn", m=2, ternary=False,
                         sealed_weights=b"w", slot_paths=[], max_batch=0, auth=UNSIGNED)
    signed = authorize(deploy, identity=people.owner.identity, member="owner", keys=KEYS)
    route = ROUTES[DeployModel]
    plumbed = dataclasses.replace(signed, slot_paths=["/dev/shm/caltrain-x"], max_batch=64)
    verify_authorization(plumbed, route, people.consortium, KEYS)
    with pytest.raises(Unauthenticated):
        verify_authorization(dataclasses.replace(signed, sealed_weights=b"v"), route, people.consortium, KEYS)


def test_answers_open_only_for_their_request_enclave_and_member(people: People) -> None:
    enclave = Identity.generate()
    answer = JobCreated(job_id="job-1", spec={}, architecture="00" * 32, created_by="owner", full_enclave=False)
    signed = sign_reply(enclave, answer, b"r" * 32)
    assert open_signed_reply(signed, enclave_key=enclave.public_key, request=b"r" * 32, expect=JobCreated) == answer
    for kwargs in ({"request": b"s" * 32}, {"enclave_key": Identity.generate().public_key}):
        with pytest.raises(ReplyInvalid):
            open_signed_reply(signed, **{"enclave_key": enclave.public_key, "request": b"r" * 32, **kwargs},
                              expect=JobCreated)
    with pytest.raises(ReplyInvalid):
        open_signed_reply(signed, enclave_key=enclave.public_key, request=b"r" * 32, expect=DatasetList)
    sealed = seal_reply(signed, people.auditor.member())
    assert open_sealed_reply(sealed, people.auditor.encryption, request=b"r" * 32) == signed
    with pytest.raises(IntegrityError):
        open_sealed_reply(sealed, people.owner.encryption, request=b"r" * 32)
    with pytest.raises(IntegrityError):
        open_sealed_reply(sealed, people.auditor.encryption, request=b"s" * 32)


@settings(max_examples=150)
@given(st.one_of(st.binary(max_size=300), st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["models", "min_frontnet_blocks", "training", "evaluation", "tracers", "version", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.text(max_size=4), st.lists(st.text(max_size=3))),
))))
def test_data_use_policies_parse_or_raise_policy_invalid(raw: bytes) -> None:
    try:
        policy = DataUsePolicy.from_bytes(raw)
    except PolicyInvalid:
        return
    assert policy.canonical_bytes() == raw


def test_policy_canonical_form_and_digest() -> None:
    policy = open_policy()
    again = DataUsePolicy.from_bytes(policy.canonical_bytes())
    assert again == policy and again.digest == policy.digest
    with pytest.raises(PolicyInvalid, match="canonical"):
        DataUsePolicy.from_bytes(json.dumps(policy.to_dict(), indent=1).encode())
    assert DataUsePolicy().min_frontnet_blocks == "all" and not DataUsePolicy().evaluation  # cautious defaults


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["job_id", "inputs", "k", "method", "auth", "extra"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=6), st.floats(allow_nan=False),
                                 st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))))
def test_wire_json_parses_or_raises_wire_error(data: dict[str, Any]) -> None:
    try:
        msg = from_json(TraceQuery, data)
    except WireError:
        return
    assert to_json(msg) == {**data, "inputs": data["inputs"]}


@settings(max_examples=100)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=14), inner, max_size=4)),
                    max_leaves=12))
def test_consortium_files_parse_or_raise_consortium_error(data: Any) -> None:
    with contextlib.suppress(ConsortiumError):
        Consortium.from_json(data)


def counted(tmp_path: Path) -> tuple[CountedState, FileCounters]:
    sealer = Sealer(derive_sealing_key(b"s" * 32, b"m"), b"m")
    counters = FileCounters(tmp_path / "counters")
    return CountedState(tmp_path / "state.sealed", label="t", counter="t", sealer=sealer, counters=counters), counters


def test_counted_state_refuses_older_missing_and_tampered(tmp_path: Path) -> None:
    state, _ = counted(tmp_path)
    assert state.load() is None
    state.save(b"one")
    old = state.path.read_bytes()
    state.save(b"two")
    assert state.load() == b"two"
    state.path.write_bytes(old)
    with pytest.raises(StateRolledBack, match="version 1 presented"):
        state.load()
    state.path.unlink()
    with pytest.raises(StateRolledBack, match="missing"):
        state.load()
    state.path.write_bytes(b"junk")
    with pytest.raises(SealedStateError):
        state.load()


def test_counted_state_accepts_a_crash_between_sealing_and_counting(tmp_path: Path) -> None:
    state, counters = counted(tmp_path)
    state.save(b"one")
    sealer = Sealer(derive_sealing_key(b"s" * 32, b"m"), b"m")
    sealer.seal_file(state.path, (2).to_bytes(8, "big") + b"two", label="t")  # version 2 sealed, counter not moved
    assert counters.counter_read("t") == 1
    assert state.load() == b"two" and counters.counter_read("t") == 2
