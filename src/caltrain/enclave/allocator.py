"""Keep freed tensor memory in the process instead of returning it to the OS after every step.

glibc serves large allocations with fresh mmap()s and gives them back on free, so a process that builds
and frees the same activations every step pays for every page again (measured: ~8,000 page faults and
~30 ms of system time per training step in the enclave process, 1.5x the plain step). Raising the mmap
and trim thresholds makes those allocations reuse the heap. No effect where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the glibc settings; returns whether they took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, _THRESHOLD))
