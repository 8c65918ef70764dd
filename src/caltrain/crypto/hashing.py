"""Domain-separated SHA-256 helpers, so a hash made for one purpose never verifies for another."""

from __future__ import annotations

import hashlib
import struct

_RECORD_TAG = "caltrain/record/v1"


def sha256(*parts: bytes) -> bytes:
    """SHA-256 over the concatenation of `parts`."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def tagged_hash(tag: str, *parts: bytes) -> bytes:
    """SHA-256 over a purpose tag and length-prefixed parts, so no two inputs collide by framing."""
    h = hashlib.sha256()
    encoded = tag.encode()
    h.update(struct.pack(">I", len(encoded)))
    h.update(encoded)
    for part in parts:
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return h.digest()


def record_commitment(payload: bytes, label: int) -> bytes:
    """A training record's commitment: SHA-256 over its canonical bytes and its label (DESIGN.md §3)."""
    return tagged_hash(_RECORD_TAG, payload, struct.pack(">q", label))


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """The 64 bytes an enclave puts in its evidence: SHA-512(enclave public key || verifier nonce)."""
    return hashlib.sha512(public_key + nonce).digest()


def record_commitments(
    payloads: bytes | bytearray | memoryview, labels_be: bytes, payload_size: int
) -> list[bytes]:
    """`record_commitment` of many equal-size records: payloads back to back, labels as big-endian i64.

    Identical results, but the tag and length framing is hashed once and copied, which makes committing to
    a large dataset cost little more than hashing its bytes (the hot path of packing and opening containers).
    """
    view = memoryview(payloads).cast("B")
    count = len(labels_be) // 8
    if len(view) != count * payload_size or len(labels_be) != count * 8:
        raise ValueError(f"{len(view)} payload and {len(labels_be)} label bytes do not form whole records")
    tag = _RECORD_TAG.encode()
    base = hashlib.sha256(struct.pack(">I", len(tag)) + tag + struct.pack(">Q", payload_size))
    label_length = struct.pack(">Q", 8)
    out = []
    for i in range(count):
        h = base.copy()
        h.update(view[i * payload_size : (i + 1) * payload_size])
        h.update(label_length + labels_be[i * 8 : i * 8 + 8])
        out.append(h.digest())
    return out
