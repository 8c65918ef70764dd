"""Sealing: only the same measurement, key and label unseal; sealed files are written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from caltrain.crypto.errors import InvalidKey, SealingError
from caltrain.crypto.sealing import SEAL_MAGIC, Sealer, derive_sealing_key

SECRET = b"s" * 32
M1 = b"\x01" * 32
M2 = b"\x02" * 32


def sealer(measurement: bytes = M1) -> Sealer:
    return Sealer(derive_sealing_key(SECRET, measurement), measurement)


def test_round_trip_and_versioned_prefix() -> None:
    blob = sealer().seal(b"checkpoint", label="ckpt")
    assert blob.startswith(SEAL_MAGIC)
    assert sealer().unseal(blob, label="ckpt") == b"checkpoint"


def test_key_depends_on_measurement_and_secret() -> None:
    assert derive_sealing_key(SECRET, M1) != derive_sealing_key(SECRET, M2)
    assert derive_sealing_key(SECRET, M1) != derive_sealing_key(b"t" * 32, M1)
    assert derive_sealing_key(SECRET, M1) == derive_sealing_key(SECRET, M1)
    with pytest.raises(InvalidKey):
        derive_sealing_key(b"short", M1)


def test_tampering_is_rejected() -> None:
    blob = sealer().seal(b"checkpoint", label="ckpt")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x80
        with pytest.raises(SealingError):
            sealer().unseal(bytes(tampered), label="ckpt")
    with pytest.raises(SealingError):
        sealer().unseal(blob[:-1], label="ckpt")
    with pytest.raises(SealingError):
        sealer().unseal(b"", label="ckpt")


def test_wrong_measurement_is_rejected_by_key_and_by_associated_data() -> None:
    blob = sealer().seal(b"state", label="log")
    with pytest.raises(SealingError):
        sealer(M2).unseal(blob, label="log")
    same_key_other_measurement = Sealer(derive_sealing_key(SECRET, M1), M2)
    with pytest.raises(SealingError):
        same_key_other_measurement.unseal(blob, label="log")


def test_wrong_label_is_rejected() -> None:
    blob = sealer().seal(b"state", label="log")
    with pytest.raises(SealingError, match="'ckpt'"):
        sealer().unseal(blob, label="ckpt")


def test_files_round_trip_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "log.sealed"
    sealer().seal_file(path, b"v1", label="log")
    sealer().seal_file(path, b"v2", label="log")
    assert sealer().unseal_file(path, label="log") == b"v2"
    assert sorted(p.name for p in path.parent.iterdir()) == ["log.sealed"]
    assert b"v2" not in path.read_bytes()
    with pytest.raises(SealingError):
        sealer().unseal_file(path, label="ckpt")
    with pytest.raises(SealingError, match="cannot read"):
        sealer().unseal_file(tmp_path / "missing", label="log")
