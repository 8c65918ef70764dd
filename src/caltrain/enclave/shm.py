"""Preallocated shared-memory tensors: how IRs and their gradients cross the boundary without pickling.

The host creates a file under /dev/shm (a RAM-backed tmpfs) and both processes map it. Only tensors the
partition is meant to expose ever go there (DESIGN.md §2, property 1).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from caltrain.errors import EnclaveError

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}


class SharedTensor:
    """A flat shared buffer of `capacity` elements; `view(shape)` gives a tensor on its first elements."""

    def __init__(self, path: Path | str, capacity: int, dtype: str, *, create: bool = False) -> None:
        if dtype not in _DTYPES:
            raise EnclaveError(f"shared tensors hold {sorted(_DTYPES)}, not {dtype!r}")
        if capacity < 1:
            raise EnclaveError("shared tensor capacity must be positive")
        self.path, self.capacity, self.dtype = Path(path), capacity, dtype
        if create:
            nbytes = capacity * torch.empty((), dtype=_DTYPES[dtype]).element_size()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, nbytes)
            os.close(fd)
        elif not self.path.exists():
            raise EnclaveError(f"shared tensor {self.path} does not exist")
        self._flat = torch.from_file(str(self.path), shared=True, size=capacity, dtype=_DTYPES[dtype])

    @classmethod
    def create(cls, capacity: int, dtype: str, prefix: str = "caltrain-") -> SharedTensor:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=SHM_DIR)
        os.close(fd)
        os.unlink(name)
        return cls(Path(name), capacity, dtype, create=True)

    def view(self, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
        n = math.prod(shape)
        if n > self.capacity:
            raise EnclaveError(f"tensor of shape {tuple(shape)} does not fit a slot of {self.capacity} elements")
        return self._flat[:n].view(*shape)

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)
