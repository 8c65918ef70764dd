"""Domain-separated SHA-256 helpers, so a hash made for one purpose never verifies for another."""

from __future__ import annotations

import hashlib
import hmac
import struct

_RECORD_TAG = "caltrain/record/v2"
_SALT_TAG = b"caltrain/record-salt/v1"
SALT_BYTES = 32


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


def record_salt(data_key: bytes) -> bytes:
    """The secret salt of a container's record commitments, derived from its data key (HMAC-SHA256).

    Only the participant and the enclave hold the data key, so nobody else can recompute a commitment from a
    guessed record: a published instance hash confirms nothing to the operator or other participants.
    """
    return hmac.new(data_key, _SALT_TAG, hashlib.sha256).digest()


def record_commitment(salt: bytes, index: int, payload: bytes, label: int) -> bytes:
    """A training record's commitment: SHA-256 over the container's secret salt, the record's index, its
    canonical bytes and its label. The index makes equal records commit differently (no duplicate leaks)."""
    return tagged_hash(_RECORD_TAG, salt, struct.pack(">Q", index), payload, struct.pack(">q", label))


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """The 64 bytes an enclave puts in its evidence: SHA-512(enclave public key || verifier nonce)."""
    return hashlib.sha512(public_key + nonce).digest()


def record_commitments(
    records: bytes | bytearray | memoryview, payload_size: int, salt: bytes, first_index: int = 0
) -> list[bytes]:
    """`record_commitment` of equal-size records laid out as in a container chunk: `i64 big-endian label || payload`,
    the first at index `first_index`.

    Identical results, but the tag, salt and length framing are hashed once and copied, and payloads are hashed in
    place, which makes committing to a large dataset cost little more than hashing its bytes (the hot path of
    packing and opening containers; SHA-256 releases the GIL on payloads over 2 KiB, so decryption overlaps).
    """
    view = memoryview(records).cast("B")
    stride = 8 + payload_size
    if payload_size < 1 or len(view) % stride:
        raise ValueError(f"{len(view)} bytes are not whole records of an 8-byte label and {payload_size} bytes")
    tag = _RECORD_TAG.encode()
    prefix = struct.pack(">I", len(tag)) + tag + struct.pack(">Q", len(salt)) + salt
    copy = hashlib.sha256(prefix).copy
    eight, payload_length = struct.pack(">Q", 8), struct.pack(">Q", payload_size)
    out = []
    for i, start in enumerate(range(0, len(view), stride)):
        h = copy()
        h.update(eight + struct.pack(">Q", first_index + i) + payload_length)
        h.update(view[start + 8 : start + stride])
        h.update(eight + view[start : start + 8])
        out.append(h.digest())
    return out
