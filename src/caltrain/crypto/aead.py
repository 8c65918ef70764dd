"""AES-256-GCM envelopes: the one symmetric primitive every layer above uses.

A blob is `nonce (12 bytes) || ciphertext || tag (16 bytes)`, so it carries everything but the key and the
associated data, which the caller must supply again to decrypt (that is what binds a blob to its context).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caltrain.crypto.errors import IntegrityError, InvalidKey

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

BytesLike = bytes | bytearray | memoryview


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return os.urandom(KEY_BYTES)


def cipher(key: bytes) -> AESGCM:
    """An AES-256-GCM instance for `key`; reuse it across many blobs to skip the key schedule each time."""
    if len(key) != KEY_BYTES:
        raise InvalidKey(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    return AESGCM(key)


def encrypt(key: bytes, plaintext: BytesLike, aad: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate `plaintext` bound to `aad`; returns `nonce || ciphertext || tag`.

    Random nonces are the default: with 96-bit nonces, 2^32 blobs under one key keep collisions negligible.
    """
    return encrypt_with(cipher(key), plaintext, aad, nonce)


def encrypt_with(aes: AESGCM, plaintext: BytesLike, aad: bytes, nonce: bytes | None = None) -> bytes:
    """`encrypt` with a prepared cipher (hot loops)."""
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise InvalidKey(f"AES-GCM nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + aes.encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: BytesLike, aad: bytes, *, what: str = "ciphertext") -> bytes:
    """Authenticate and decrypt a blob from `encrypt`; `IntegrityError` naming `what` if anything is off."""
    return decrypt_with(cipher(key), blob, aad, what=what)


def decrypt_with(aes: AESGCM, blob: BytesLike, aad: bytes, *, what: str = "ciphertext") -> bytes:
    """`decrypt` with a prepared cipher (hot loops); `blob` may be a memoryview slice, it is not copied."""
    nonce, body = _split(blob, what)
    try:
        return aes.decrypt(nonce, body, aad)
    except InvalidTag:
        raise _failed(what) from None


def decrypt_into(
    aes: AESGCM, blob: BytesLike, aad: bytes, out: bytearray | memoryview, *, what: str = "ciphertext"
) -> None:
    """`decrypt_with` writing into `out` (exactly the plaintext's length): no allocation, no copy for bulk data.

    On failure `out` may hold unauthenticated bytes: the caller must discard it, never read it.
    """
    nonce, body = _split(blob, what)
    size = memoryview(out).nbytes
    if len(body) != size + TAG_BYTES:
        raise IntegrityError(f"{what} holds {len(body) - TAG_BYTES} plaintext bytes, expected {size}")
    try:
        aes.decrypt_into(nonce, body, aad, out)
    except InvalidTag:
        raise _failed(what) from None


def _split(blob: BytesLike, what: str) -> tuple[memoryview, memoryview]:
    view = memoryview(blob)
    if len(view) < NONCE_BYTES + TAG_BYTES:
        raise IntegrityError(f"{what} is {len(view)} bytes, shorter than nonce and tag")
    return view[:NONCE_BYTES], view[NONCE_BYTES:]


def _failed(what: str) -> IntegrityError:
    return IntegrityError(f"{what} failed authentication: wrong key, tampered bytes or wrong associated data")
