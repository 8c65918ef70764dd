"""Sealing: enclave state at rest (checkpoints, linkage log), readable only by the same enclave identity.

The key is derived from a platform secret and the enclave measurement, and the measurement and a purpose label
are bound again in the associated data, so a blob opens only under the same code identity and for the purpose
it was written for (a checkpoint can never be fed back as a log, nor unsealed by other code).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from caltrain.crypto import aead
from caltrain.crypto.errors import IntegrityError, InvalidKey, SealingError
from caltrain.crypto.hashing import tagged_hash

SEAL_VERSION = 1
SEAL_MAGIC = b"CTS" + bytes([SEAL_VERSION])
_KDF_TAG = "caltrain/sealing-key/v1"
_AAD_TAG = "caltrain/sealed/v1"


def derive_sealing_key(platform_secret: bytes, measurement: bytes) -> bytes:
    """HKDF-SHA256 of the platform secret, bound to the measurement: other code derives another key."""
    if len(platform_secret) < 16:  # SGX seal keys (EGETKEY, as Gramine exposes them) are 128-bit
        raise InvalidKey(f"platform secret must be at least 16 bytes, got {len(platform_secret)}")
    info = tagged_hash(_KDF_TAG, measurement)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=aead.KEY_BYTES, salt=None, info=info)
    return hkdf.derive(platform_secret)


class Sealer:
    """Seals and unseals byte strings under one enclave identity; every failure is a `SealingError`."""

    __slots__ = ("_aes", "_measurement")

    def __init__(self, key: bytes, measurement: bytes) -> None:
        self._aes = aead.cipher(key)
        self._measurement = measurement

    def _aad(self, label: str) -> bytes:
        return tagged_hash(_AAD_TAG, struct.pack(">I", SEAL_VERSION), self._measurement, label.encode())

    def seal(self, plaintext: bytes, *, label: str) -> bytes:
        """`SEAL_MAGIC || nonce || ciphertext || tag`, bound to the measurement and `label`."""
        return SEAL_MAGIC + aead.encrypt_with(self._aes, plaintext, self._aad(label))

    def unseal(self, blob: bytes, *, label: str) -> bytes:
        if blob[: len(SEAL_MAGIC)] != SEAL_MAGIC:
            raise SealingError("not a version-1 sealed blob (bad magic)")
        try:
            return aead.decrypt_with(self._aes, memoryview(blob)[len(SEAL_MAGIC) :], self._aad(label))
        except IntegrityError:
            raise SealingError(
                f"sealed blob labelled {label!r} did not unseal: tampered, other enclave identity or label"
            ) from None

    def seal_file(self, path: Path, data: bytes, *, label: str) -> None:
        """Seal `data` into `path` atomically: a crash leaves the old file or the new, never a torn one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self.seal(data, label=label))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def unseal_file(self, path: Path, *, label: str) -> bytes:
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise SealingError(f"cannot read sealed file {path}: {e.strerror}") from None
        return self.unseal(blob, label=label)
