"""Shared test builders: members, containers, submissions. Real crypto, real enclave processes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from caltrain.crypto import aead
from caltrain.crypto.container import pack_arrays
from caltrain.crypto.hpke import wrap_key
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import ArrayDataset, load_dataset, split_among
from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.enclave.protocol import EnclaveKeys, submission_digest, wrap_context
from caltrain.enclave.wire import IngestDataset


@dataclass(frozen=True)
class People:
    alice: Identity
    bob: Identity
    auditor: Identity
    outsider: Identity

    @property
    def consortium(self) -> Consortium:
        return Consortium(
            (
                Member("alice", Role.PARTICIPANT, self.alice.public_key),
                Member("bob", Role.PARTICIPANT, self.bob.public_key),
                Member("auditor", Role.AUDITOR, self.auditor.public_key),
            )
        )


def make_people() -> People:
    return People(Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate())


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


def pack(
    dataset: ArrayDataset, identity: Identity, participant: str, dataset_id: str, chunk_bytes: int = 4096
) -> Packed:
    key = aead.new_key()
    container = pack_arrays(
        dataset.x.tobytes(),
        dataset.y.tolist(),
        payload_size=int(dataset.x[0].nbytes),
        dataset_id=dataset_id,
        identity=identity,
        participant_id=participant,
        data_key=key,
        schema={"shape": list(dataset.sample_shape), "dtype": "float32", "num_classes": 10},
        chunk_bytes=chunk_bytes,
    )
    return Packed(container, key, dataset_id, participant, dataset)


def submission(
    packed: Packed,
    identity: Identity,
    keys: EnclaveKeys,
    *,
    container: bytes | None = None,
    participant: str | None = None,
) -> IngestDataset:
    """The upload a participant sends, signed for `container` (default: the packed one) to `keys`."""
    blob = packed.container if container is None else container
    name = participant or packed.participant
    wrapped = wrap_key(packed.data_key, keys.hpke, context=wrap_context(packed.dataset_id, name))
    return IngestDataset(
        participant=name,
        container=blob,
        wrapped_key=wrapped,
        signature=identity.sign(submission_digest(blob, wrapped, keys)),
    )


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
