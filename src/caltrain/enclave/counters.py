"""Monotonic counters that let sealed state detect a rollback (an older sealed file presented as the newest).

Real platforms offer them outside the enclave's storage (a TPM NV index, a replicated counter service); SGX2
has none. This implementation keeps each counter in a file of a directory the enclave names: inside a Gramine
encrypted mount on SGX, on the simulated platform's disk in simulation. Either way a host able to roll back
that directory as a whole can also roll back the counter: the protection holds against a host that swaps
individual sealed files, not against one that restores a complete old disk image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from caltrain.errors import EnclaveError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FileCounters:
    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)

    def counter_read(self, name: str) -> int:
        path = self._path(name)
        return int(path.read_text()) if path.exists() else 0

    def counter_increment(self, name: str) -> int:
        value = self.counter_read(name) + 1
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(value))
        os.replace(tmp, path)
        return value

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise EnclaveError(f"counter name {name!r} must be 1-64 letters, digits, '-' or '_'")
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir / name
