"""How a worker process keeps the memory its tasks free, for the next ones.

Every task allocates its buffers afresh: a chunk's typed columns, DuckDB's and Arrow's
working memory, the partial. glibc's malloc serves a block over its mmap threshold with a
new mapping, and gives the top of its heap back to the system past its trim threshold; the
next task then takes every page again through a page fault, zeroed by the kernel. On TPC-H
Q1 that was a tenth of a worker's processor time (`bench/tpch.py`, about 0.2 s of system
time a run). A worker process therefore keeps up to :data:`RETAINED` bytes of freed memory
in its heap (``mallopt``), as its domain table keeps its arrays (``_native_spare.h``).
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

RETAINED = 256 << 20  # freed bytes a worker may keep
MMAP_THRESHOLD = 64 << 20  # a block this large or larger is still a mapping of its own
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def retain_freed_memory() -> bool:
    """Keep freed memory in this process for its next tasks; whether malloc agreed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # the parameters below are glibc's
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, RETAINED)
    )
