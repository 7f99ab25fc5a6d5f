"""Process memory tuning for repeated traces.

A trace holds a few fresh n² tensors per layer. With glibc's default settings, memory freed after one
trace goes back to the operating system and the next trace page-faults it in again, which is most of
what tracing costs at long lengths. Keeping freed memory for reuse removes that cost.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def reuse_freed_memory(keep_bytes: int = 1 << 30, mmap_above: int = 32 << 20) -> bool:
    """Ask glibc to keep up to `keep_bytes` of freed heap for reuse and to serve blocks under `mmap_above`
    from the heap. Process-wide; returns False (and changes nothing) where glibc is not the allocator."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, keep_bytes)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_above))
