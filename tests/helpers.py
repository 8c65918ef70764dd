"""Shared test builders: members, containers, signed and sealed requests. Real crypto, real enclave processes."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from caltrain.crypto import aead
from caltrain.crypto.container import pack_arrays
from caltrain.crypto.hpke import HpkeKeyPair, wrap_key
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import ArrayDataset, load_dataset, split_among
from caltrain.enclave.authority import (
    UNSIGNED,
    authorize,
    open_sealed_reply,
    open_signed_reply,
    request_digest,
    seal_request,
)
from caltrain.enclave.consent import ApprovedModel, DataUsePolicy, Grantees
from caltrain.enclave.consortium import Consortium, DatasetSchema, Member, Role
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.protocol import EnclaveKeys, wrap_context
from caltrain.enclave.wire import (
    CreateJob,
    DatasetReceipt,
    IngestDataset,
    JobCreated,
    Message,
    SealedReply,
    SignedReply,
)
from caltrain.models import ZOO
from caltrain.training.config import TrainConfig

R = TypeVar("R", bound=Message)
DIGITS_SCHEMA = DatasetSchema((1, 8, 8), 10, (0.0, 1.0))


@dataclass(frozen=True)
class Person:
    """A member (or an outsider): the keys a real member's home holds."""

    name: str
    roles: frozenset[Role]
    identity: Identity
    encryption: HpkeKeyPair

    @classmethod
    def make(cls, name: str, *roles: Role) -> Person:
        return cls(name, frozenset(roles), Identity.generate(), HpkeKeyPair.generate())

    def member(self) -> Member:
        return Member(self.name, self.roles, self.identity.public_key, self.encryption.public_bytes)


@dataclass(frozen=True)
class People:
    alice: Person
    bob: Person
    auditor: Person
    owner: Person
    outsider: Person  # holds keys but is not in the consortium

    @property
    def consortium(self) -> Consortium:
        return Consortium(tuple(p.member() for p in (self.alice, self.bob, self.auditor, self.owner)), DIGITS_SCHEMA)


def make_people() -> People:
    return People(
        Person.make("alice", Role.PARTICIPANT),
        Person.make("bob", Role.PARTICIPANT),
        Person.make("auditor", Role.AUDITOR),
        Person.make("owner", Role.OWNER),
        Person.make("mallory", Role.PARTICIPANT, Role.OWNER, Role.AUDITOR),
    )


def open_policy(**changes: object) -> DataUsePolicy:
    """A policy that admits every zoo model at any cut, evaluation, the auditor role tracing, owners receiving the
    FrontNet and deploying: tests narrow it clause by clause."""
    base = DataUsePolicy(
        models=[ApprovedModel(name=n, architecture=spec.hash) for n, spec in ZOO.items()],
        min_frontnet_blocks=1,
        evaluation=True,
        frontnet_recipients=Grantees(roles=[Role.OWNER, Role.AUDITOR]),
    )
    return base.model_copy(update=changes)


def digits_shares(parts: int = 2) -> list[ArrayDataset]:
    train, _ = load_dataset("digits")
    return split_among(train, parts, seed=0)


@dataclass(frozen=True)
class Packed:
    container: bytes
    data_key: bytes
    dataset_id: str
    participant: str
    dataset: ArrayDataset

    @property
    def qualified_id(self) -> str:
        return f"{self.participant}/{self.dataset_id}"


def pack(
    dataset: ArrayDataset, person: Person, dataset_id: str, chunk_bytes: int = 4096, participant: str | None = None
) -> Packed:
    key = aead.new_key()
    name = participant or person.name
    container = pack_arrays(
        dataset.x.tobytes(),
        dataset.y.tolist(),
        payload_size=int(dataset.x[0].nbytes),
        dataset_id=dataset_id,
        identity=person.identity,
        participant_id=name,
        data_key=key,
        schema={"shape": list(dataset.sample_shape), "dtype": "float32", "num_classes": 10},
        chunk_bytes=chunk_bytes,
    )
    return Packed(container, key, dataset_id, name, dataset)


def submission(
    packed: Packed,
    person: Person,
    keys: EnclaveKeys,
    *,
    container: bytes | None = None,
    policy: DataUsePolicy | None = None,
) -> IngestDataset:
    """The upload `person` sends for `packed` (default: its container) to the enclave with `keys`, signed."""
    blob = packed.container if container is None else container
    wrapped = wrap_key(packed.data_key, keys.hpke, context=wrap_context(packed.dataset_id, person.name))
    consent = policy or open_policy()
    msg = IngestDataset(container=blob, wrapped_key=wrapped, policy=consent.canonical_bytes(), auth=UNSIGNED)
    return signed_by(msg, person, keys)


def signed_by(msg: R, person: Person, keys: EnclaveKeys) -> R:
    return authorize(msg, identity=person.identity, member=person.name, keys=keys)


def call_signed(host: EnclaveHost, msg: Message, person: Person, expect: type[R]) -> R:
    """Send `msg` signed by `person`; the enclave's answer, verified as a member would."""
    msg = signed_by(msg, person, host.keys)
    _, reply = host.call_member(msg, expect)
    return reply


def call_sealed(host: EnclaveHost, msg: Message, person: Person, expect: type[R]) -> R:
    """Send `msg` signed by `person` and sealed to the enclave; open the sealed, signed answer as `person`."""
    return sealed_answer(host, msg, person, expect)[0]


def sealed_answer(host: EnclaveHost, msg: Message, person: Person, expect: type[R]) -> tuple[R, SignedReply]:
    """`call_sealed`, keeping the signed form of the answer too (what a member stores and shows others)."""
    msg = signed_by(msg, person, host.keys)
    sealed = host.call(seal_request(msg, host.keys), SealedReply)
    digest = request_digest(msg, host.keys)
    signed = open_sealed_reply(sealed, person.encryption, request=digest)
    return open_signed_reply(signed, enclave_key=host.keys.signing, request=digest, expect=expect), signed


def ingest(host: EnclaveHost, packed: Packed, person: Person, policy: DataUsePolicy | None = None) -> None:
    host.call_member(submission(packed, person, host.keys, policy=policy), DatasetReceipt)


def create_job(host: EnclaveHost, owner: Person, config: TrainConfig) -> JobCreated:
    return call_signed(host, CreateJob(spec=config.to_dict(), auth=UNSIGNED), owner, JobCreated)


def with_field(msg: R, **changes: object) -> R:
    return dataclasses.replace(msg, **changes)  # type: ignore[type-var]


def record_payloads(dataset: ArrayDataset) -> list[bytes]:
    return [np.ascontiguousarray(x).tobytes() for x in dataset.x]


def flip_bit(blob: bytes, bit: int) -> bytes:
    out = bytearray(blob)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def container_chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(prefix: magic + header + signature, [length-prefixed chunks]) of a well-formed container."""
    (header_length,) = struct.unpack_from(">I", blob, 4)
    offset = 8 + header_length + 64
    prefix, chunks = blob[:offset], []
    while offset < len(blob):
        (length,) = struct.unpack_from(">I", blob, offset)
        chunks.append(blob[offset : offset + 4 + length])
        offset += 4 + length
    return prefix, chunks


COUNTED = ("traced", "answers_p_value", "p_value", "blame")


def uncounted(report: dict[str, Any]) -> dict[str, Any]:
    """A trace report without what depends on how many queries the enclave traced before it (its ledger moves on
    with every trace): the answers, the statement and each contributor's evidence stay."""
    return {**{k: v for k, v in report.items() if k != "traced"},
            "contributors": [{k: v for k, v in c.items() if k not in COUNTED} for c in report["contributors"]]}
