"""Cryptography layer: envelopes, HPKE key wrapping, sealing, signatures, hashing, Merkle commitments.

Knows nothing of ML. Everything is built on the `cryptography` package; nothing is hand-rolled except the
Merkle tree (RFC 6962 hashing), which has no library equivalent there.
"""
