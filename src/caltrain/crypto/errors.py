"""Crypto-layer errors: each names the check that failed."""

from __future__ import annotations

from caltrain.errors import CryptoError


class BadSignature(CryptoError):
    """An Ed25519 signature did not verify under the expected public key."""


class InvalidKey(CryptoError):
    """A key has the wrong length or encoding."""


class IntegrityError(CryptoError):
    """Authenticated decryption failed: wrong key, tampered bytes, or wrong associated data."""


class KeyUnwrapError(CryptoError):
    """An HPKE-wrapped key could not be unwrapped (wrong recipient key, wrong context, or tampered)."""


class ContainerFormatError(CryptoError):
    """A participant data container is malformed (magic, version, lengths, counts, trailing bytes)."""


class ContainerMismatch(CryptoError):
    """A container is well formed but belongs elsewhere (other dataset, participant or commitment)."""


class ProofError(CryptoError):
    """A Merkle inclusion proof does not lead to the expected root."""


class SealingError(CryptoError):
    """Sealed state could not be unsealed: tampered, wrong enclave identity, or wrong label."""
