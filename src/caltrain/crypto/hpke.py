"""HPKE (RFC 9180, DHKEM-X25519 / HKDF-SHA256 / AES-256-GCM), single-shot base mode.

Used to send secrets to an attested enclave key: participants wrap a container's data key, inference clients
encrypt requests. `info` (and `context` for wrapped keys) binds each ciphertext to its purpose, so a
ciphertext made for one dataset/participant/request never opens under another.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from caltrain.crypto.aead import KEY_BYTES
from caltrain.crypto.errors import IntegrityError, InvalidKey, KeyUnwrapError
from caltrain.crypto.hashing import tagged_hash

PUBLIC_KEY_BYTES = 32
ENCAPSULATED_KEY_BYTES = 32
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_WRAP_TAG = "caltrain/hpke-key-wrap/v1"


def _public_key(raw: bytes) -> X25519PublicKey:
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidKey(f"X25519 public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def _wrap_info(context: bytes) -> bytes:
    """Domain-separates key wrapping from other HPKE uses of the same enclave key."""
    return tagged_hash(_WRAP_TAG, context)


class HpkeKeyPair:
    """An X25519 HPKE recipient key pair; the private half stays inside this object (and its process)."""

    __slots__ = ("_private",)

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key

    @classmethod
    def generate(cls) -> HpkeKeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> HpkeKeyPair:
        if len(raw) != PUBLIC_KEY_BYTES:
            raise InvalidKey(f"X25519 private key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw private key, for a member's own key file (the enclave's never leaves its process)."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def public_bytes(self) -> bytes:
        """The 32 raw bytes senders encrypt to (and attestation evidence binds)."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        """Decrypt a `seal_to` ciphertext made for this key and `info`; `IntegrityError` otherwise."""
        try:
            return _SUITE.decrypt(ciphertext, self._private, info=info)
        except InvalidTag:
            raise IntegrityError(
                "HPKE ciphertext did not open: wrong recipient key, wrong info, or tampered"
            ) from None

    def unwrap_key(self, wrapped: bytes, *, context: bytes) -> bytes:
        """Recover a data key from `wrap_key`; `KeyUnwrapError` on a wrong key, wrong context or tampering."""
        try:
            key = self.open(wrapped, _wrap_info(context))
        except IntegrityError:
            raise KeyUnwrapError(
                "wrapped data key did not unwrap: wrong enclave key, wrong context, or tampered"
            ) from None
        if len(key) != KEY_BYTES:
            raise KeyUnwrapError(f"unwrapped data key is {len(key)} bytes, expected {KEY_BYTES}")
        return key

    def __repr__(self) -> str:
        return f"HpkeKeyPair(public={self.public_bytes.hex()[:16]}…)"


def seal_to(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """Encrypt `plaintext` to the holder of `public_key`; returns `enc || ciphertext || tag`."""
    return _SUITE.encrypt(plaintext, _public_key(public_key), info=info)


def wrap_key(data_key: bytes, recipient_public_key: bytes, *, context: bytes) -> bytes:
    """Wrap an AES-256 data key to an (attested) recipient key, bound to `context` (dataset + participant)."""
    if len(data_key) != KEY_BYTES:
        raise InvalidKey(f"data key must be {KEY_BYTES} bytes, got {len(data_key)}")
    return seal_to(recipient_public_key, data_key, _wrap_info(context))
