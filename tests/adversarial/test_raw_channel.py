"""The malicious host drives the raw enclave channel: for every request a member must sign, no authorization,
a forged, replayed, wrong-role or outsider's signature, a signature bound to another enclave instance, or content
changed after signing is refused with a typed error, and the enclave's state does not change. Sealed requests
cannot be sent unsealed; every message type is declared in the wire schema; malformed frames never kill the
enclave."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.data.datasets import load_dataset
from caltrain.enclave.authority import UNSIGNED, seal_request
from caltrain.enclave.consortium import Role
from caltrain.enclave.errors import RequestReplayed
from caltrain.enclave.manifest import ECALL_MODULES
from caltrain.enclave.runtime import HANDLERS
from caltrain.enclave.wire import (
    MESSAGES,
    REPLIES,
    ROUTES,
    Authorization,
    CreateJob,
    DatasetList,
    DeployModel,
    ExportModel,
    IngestDataset,
    ListDatasets,
    Members,
    Message,
    SealedReply,
    SealedRequest,
    Shutdown,
    SignedReply,
    SuspicionQuery,
    TraceQuery,
    WireError,
    encode,
)
from caltrain.errors import AuthError, CaltrainError, Unauthenticated
from caltrain.training.config import TrainConfig
from tests.adversarial.conftest import World
from tests.helpers import Person, open_policy, pack, signed_by, submission

_fresh = itertools.count()

# A valid, unsigned example of every request a member must sign: a route missing here fails the suite below, so
# every new member call gets the whole attack matrix.
BUILDERS: dict[type[Message], Callable[[World], Message]] = {
    IngestDataset: lambda w: dataclasses.replace(
        submission(pack(load_dataset("digits")[0].subset(range(50)), w.people.alice, f"x{next(_fresh)}"),
                   w.people.alice, w.host.keys),
        auth=UNSIGNED,
    ),
    CreateJob: lambda w: CreateJob(spec=TrainConfig(epochs=1, datasets=["bob/b0"]).to_dict(), auth=UNSIGNED),
    ExportModel: lambda w: ExportModel(job_id=w.job_id, auth=UNSIGNED),
    TraceQuery: lambda w: TraceQuery(job_id=w.job_id, inputs=w.inputs(), k=5, method="ours", auth=UNSIGNED),
    SuspicionQuery: lambda w: SuspicionQuery(job_id=w.job_id, method="ours", auth=UNSIGNED),
    DeployModel: lambda w: DeployModel(
        model_id=f"m{next(_fresh)}", job_id=w.job_id, front_digest="00" * 32, architecture="digits-cnn", m=2,
        ternary=False, sealed_weights=b"", slot_paths=[], max_batch=1, auth=UNSIGNED,
    ),
}
MEMBER_ROUTES = [r for r in ROUTES.values() if isinstance(r.sender, Members)]


def rightful(world: World, request: type[Message]) -> Person:
    sender = ROUTES[request].sender
    assert isinstance(sender, Members)
    return next(p for p in (world.people.alice, world.people.owner, world.people.auditor) if p.roles & sender.roles)


def unauthorized(world: World, request: type[Message]) -> Person | None:
    sender = ROUTES[request].sender
    assert isinstance(sender, Members)
    lacking = [p for p in (world.people.alice, world.people.owner, world.people.auditor) if not p.roles & sender.roles]
    return lacking[0] if lacking else None


def snapshot(world: World) -> tuple[Any, str]:
    """What a refused call must leave as it was: the dataset list and every byte of sealed state on disk."""
    files = sorted(p for p in world.state.rglob("*") if p.is_file())
    digest = hashlib.sha256(b"".join(p.relative_to(world.state).as_posix().encode() + p.read_bytes() for p in files))
    return world.host.call(ListDatasets(), DatasetList).datasets, digest.hexdigest()


def send(world: World, msg: Message) -> Message:
    """What the host can do with a member request: send it as it is, or sealed to the target's public key."""
    if ROUTES[type(msg)].sealed:
        return world.host.call(seal_request(msg, world.host.keys), SealedReply)
    return world.host.call(msg, SignedReply)


def tamper(msg: Message) -> Message:
    """The same request with its first signed field changed (what a host edits in flight)."""
    route = ROUTES[type(msg)]
    name = next(f.name for f in dataclasses.fields(msg) if f.name not in ("auth", *route.host_fields))
    value = getattr(msg, name)
    changed: Any
    if isinstance(value, bytes):
        changed = value[:-1] + bytes([value[-1] ^ 1])
    elif isinstance(value, str):
        changed = value + "x"
    elif isinstance(value, bool):
        changed = not value
    elif isinstance(value, int):
        changed = value + 1
    elif isinstance(value, dict):
        changed = {**value, "epochs": 3}
    else:
        changed = [*value, "x"]
    return dataclasses.replace(msg, **{name: changed})  # type: ignore[arg-type]


def test_every_message_is_declared_and_every_member_call_is_attacked() -> None:
    for name in ECALL_MODULES:  # what the enclave process imports to register its calls
        importlib.import_module(name)
    undeclared = [name for name, cls in MESSAGES.items() if cls not in ROUTES and cls not in REPLIES]
    assert not undeclared, f"messages without a sender/reply declaration: {undeclared}"
    assert not set(ROUTES) & REPLIES
    dispatched_elsewhere = {Shutdown, SealedRequest}  # the enclave's main loop and the dispatcher itself
    assert set(ROUTES) - dispatched_elsewhere == set(HANDLERS), "a declared request has no handler (or vice versa)"
    assert {r.request for r in MEMBER_ROUTES} == set(BUILDERS), "a member request lacks its attack-matrix example"
    for route in ROUTES.values():
        assert route.reply in REPLIES


ATTACKS = ["unsigned", "forged", "outsider", "wrong-role", "other-enclave", "tampered", "replayed"]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("request_type", list(BUILDERS), ids=lambda t: t.__name__)
def test_member_requests_refused_without_rightful_authorization(
    world: World, request_type: type[Message], attack: str
) -> None:
    msg = BUILDERS[request_type](world)
    member, keys = rightful(world, request_type), world.host.keys
    if attack == "unsigned":
        forged, error = msg, AuthError
    elif attack == "forged":
        auth = Authorization(member=member.name, request_id=os.urandom(16).hex(), signature=os.urandom(64).hex())
        forged, error = dataclasses.replace(msg, auth=auth), Unauthenticated  # type: ignore[arg-type]
    elif attack == "outsider":
        forged, error = signed_by(msg, world.people.outsider, keys), AuthError
    elif attack == "wrong-role":
        lacking = unauthorized(world, request_type)
        if lacking is None:
            pytest.skip(f"every role may send {request_type.__name__}; the data-use policies decide (see findings)")
        forged, error = signed_by(msg, lacking, keys), AuthError
    elif attack == "other-enclave":
        forged, error = signed_by(msg, member, world.other.keys), Unauthenticated
    elif attack == "tampered":
        forged, error = tamper(signed_by(msg, member, keys)), Unauthenticated
    else:
        forged, error = signed_by(msg, member, keys), RequestReplayed
        with pytest.raises(CaltrainError):  # whatever the first call's outcome, its id is spent
            send(world, forged)
            raise CaltrainError("first call accepted")
    before = snapshot(world)
    with pytest.raises(error):
        send(world, forged)
    assert snapshot(world) == before, "a refused call changed the enclave's state"


@pytest.mark.parametrize("route", [r for r in MEMBER_ROUTES if r.sealed], ids=lambda r: r.request.__name__)
def test_sealed_requests_cannot_travel_in_the_clear(world: World, route: Any) -> None:
    """Their answers are for the requester only: in the clear, the host would read them."""
    msg = signed_by(BUILDERS[route.request](world), rightful(world, route.request), world.host.keys)
    with pytest.raises(AuthError, match="must travel sealed"):
        world.host.call(msg, SignedReply)


@pytest.mark.parametrize("route", [r for r in MEMBER_ROUTES if not r.sealed], ids=lambda r: r.request.__name__)
def test_clear_requests_cannot_hide_in_a_seal(world: World, route: Any) -> None:
    msg = signed_by(BUILDERS[route.request](world), rightful(world, route.request), world.host.keys)
    with pytest.raises(AuthError, match="does not travel sealed"):
        world.host.call(seal_request(msg, world.host.keys), SealedReply)


@settings(max_examples=60)
@given(data=st.data())
def test_mutated_frames_give_a_wire_error_and_the_enclave_keeps_serving(world: World, data: st.DataObject) -> None:
    frame = bytearray(encode(signed_by(BUILDERS[CreateJob](world), world.people.owner, world.host.keys)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "junk"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del frame[data.draw(st.integers(0, len(frame) - 1)) :]
    elif kind == "append":
        frame += data.draw(st.binary(min_size=1, max_size=16))
    else:
        frame = bytearray(data.draw(st.binary(max_size=200)))
    channel = world.host._channel
    assert channel is not None
    with world.host._lock:
        channel.send_frame(bytes(frame))
        try:
            reply = channel.recv()
        except WireError as exc:  # pragma: no cover - the enclave must answer every frame
            raise AssertionError(f"the enclave did not answer a malformed frame: {exc}") from None
    assert reply.type_name in ("Failure", "SignedReply")  # a flip may hit a byte nobody checks (e.g. JSON spacing)
    if reply.type_name == "Failure":
        assert reply.error in ("WireError", "Unauthenticated", "AuthError", "JobRefused", "TrainingError",  # type: ignore[attr-defined]
                               "ConsentRefused", "UnknownDataset")
    assert world.host.call(ListDatasets(), DatasetList).datasets, "the enclave still serves"


def test_member_roles_are_what_the_consortium_says(world: World) -> None:
    """The roles the attack matrix relies on: nobody holds all of them but the outsider, who is not a member."""
    assert world.people.alice.roles == {Role.PARTICIPANT} and world.people.owner.roles == {Role.OWNER}
    assert open_policy().min_frontnet_blocks == 1


def test_every_request_is_in_the_documented_call_table() -> None:
    """docs/security.md (and, for scale-out, docs/scale.md) tell a reviewer who may send each call and what a
    hostile host gets from it: a new call must be written down there."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "security.md").read_text() + (docs / "scale.md").read_text()
    undocumented = [cls.__name__ for cls in ROUTES if f"`{cls.__name__}`" not in text]
    assert not undocumented, f"calls missing from the documented call tables: {undocumented}"
