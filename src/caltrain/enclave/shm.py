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

# How a 4-D tensor's elements lie in the slot. Keeping the producer's layout matters: oneDNN hands convolution
# outputs and gradients over channels-last, and converting them to NCHW on the way made both sides' kernels
# take slower paths (measured: the FrontNet backward 17.7 ms instead of 9.2 ms on the 28x28 CNN).
LAYOUTS = ("contiguous", "channels_last")


def layout_of(tensor: torch.Tensor) -> str:
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"


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

    def view(self, shape: tuple[int, ...] | list[int], layout: str = "contiguous") -> torch.Tensor:
        """The slot's first elements as a tensor of `shape`, laid out as `layout` (see `LAYOUTS`)."""
        n = math.prod(shape)
        if n > self.capacity:
            raise EnclaveError(f"tensor of shape {tuple(shape)} does not fit a slot of {self.capacity} elements")
        if layout == "channels_last" and len(shape) == 4:
            b, c, h, w = shape
            return self._flat[:n].view(b, h, w, c).permute(0, 3, 1, 2)
        if layout not in LAYOUTS:
            raise EnclaveError(f"unknown tensor layout {layout!r}; use one of {LAYOUTS}")
        return self._flat[:n].view(*shape)

    def put(self, tensor: torch.Tensor) -> str:
        """Copy `tensor` in, keeping its layout; returns the layout the reader must view it with."""
        layout = layout_of(tensor)
        self.view(tuple(tensor.shape), layout).copy_(tensor.detach())
        return layout

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)
