"""Sealed state pinned by a monotonic counter: the newest version or nothing, never an older one.

Every sealed file the enclave keeps across restarts (dataset index, job registry, training checkpoints) is
written through `CountedState`: the sealed blob carries a version, the platform counter holds the newest, and
loading fails closed when the file is older than the counter or missing although the counter says it was written.
A crash between sealing and bumping leaves the file one ahead of the counter; that is the only gap accepted.
"""

from __future__ import annotations

import struct
from pathlib import Path

from caltrain.crypto.errors import CryptoError
from caltrain.crypto.sealing import Sealer
from caltrain.enclave.errors import SealedStateError, StateRolledBack
from caltrain.enclave.runtime import MonotonicCounters

_VERSION = struct.Struct(">Q")


class CountedState:
    """One sealed file, its purpose label and the counter that pins its newest version."""

    def __init__(self, path: Path, *, label: str, counter: str, sealer: Sealer, counters: MonotonicCounters) -> None:
        self.path, self.label, self.counter = path, label, counter
        self._sealer, self._counters = sealer, counters

    def load(self) -> bytes | None:
        """The newest sealed payload; None only if none was ever written."""
        expected = self._counters.counter_read(self.counter)
        if not self.path.exists():
            if expected:
                raise StateRolledBack(f"{self.label}: version {expected} was sealed but the file is missing")
            return None
        try:
            raw = self._sealer.unseal_file(self.path, label=self.label)
        except CryptoError as exc:
            raise SealedStateError(f"{self.label} does not unseal: {exc}") from None
        if len(raw) < _VERSION.size:
            raise SealedStateError(f"{self.label} is too short to hold its version")
        (version,) = _VERSION.unpack_from(raw)
        if version == expected + 1:  # sealed, then crashed before the counter moved
            self._counters.counter_increment(self.counter)
        elif version != expected:
            raise StateRolledBack(f"{self.label}: version {version} presented, but the newest sealed is {expected}")
        return raw[_VERSION.size :]

    def save(self, payload: bytes) -> None:
        """Seal `payload` as the next version, then move the counter: older files no longer load."""
        version = self._counters.counter_read(self.counter) + 1
        self._sealer.seal_file(self.path, _VERSION.pack(version) + payload, label=self.label)
        self._counters.counter_increment(self.counter)
