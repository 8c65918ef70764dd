"""Sealed state pinned by a monotonic counter: the newest version or nothing, never an older one.

Every sealed file the enclave keeps across restarts (dataset index, job registry, training checkpoints) is
written through `CountedState`: the sealed blob carries a version, the platform counter holds the newest, and
loading fails closed when the file is older than the counter or missing although the counter says it was written.
A crash between sealing and bumping leaves the file one ahead of the counter; that is the only gap accepted.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

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


class Record(Protocol):
    """A dataclass record kept by job id."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    job_id: str


R = TypeVar("R", bound=Record)


class SealedTable(Generic[R]):
    """Records by job id in one counter-pinned sealed file (the job registry, the scale-out plans): every `put`
    seals the whole table as its next version, so an older table never loads."""

    def __init__(self, state: CountedState, record: type[R]) -> None:
        raw = state.load()
        self._state = state
        self.entries: dict[str, R] = {e["job_id"]: record(**e) for e in json.loads(raw)} if raw is not None else {}

    def put(self, entry: R) -> None:
        entries = {**self.entries, entry.job_id: entry}
        self._state.save(json.dumps([dataclasses.asdict(e) for e in entries.values()]).encode())
        self.entries = entries
