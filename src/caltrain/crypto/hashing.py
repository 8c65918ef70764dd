"""Domain-separated SHA-256 helpers, so a hash made for one purpose never verifies for another."""

from __future__ import annotations

import hashlib
import struct


def sha256(*parts: bytes) -> bytes:
    """SHA-256 over the concatenation of `parts`."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def tagged_hash(tag: str, *parts: bytes) -> bytes:
    """SHA-256 over a purpose tag and length-prefixed parts (unambiguous: no two inputs collide by framing)."""
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
    return tagged_hash("caltrain/record/v1", payload, struct.pack(">q", label))


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """The 64 bytes an enclave puts in its evidence: SHA-512(enclave public key || verifier nonce)."""
    return hashlib.sha512(public_key + nonce).digest()
