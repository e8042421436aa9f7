"""Host memory allocation for CPU inference and training: keep freed memory for reuse instead of returning it.

glibc's ``malloc`` serves large blocks (above a threshold that adapts up to 32 MB) with a fresh ``mmap`` and
gives them back on ``free``; every new tensor of that size then starts with page faults, the kernel zeroing
each 4 KiB page. The CPU models allocate many such tensors per frame (RealTracker's feature network at 384x512:
~120,000 page faults, ~0.5 GB zeroed per frame at 8 frames per call; measured: a third of the network's CPU
time went to the kernel). :func:`retain_freed_memory` raises both thresholds (``mallopt``), so large blocks come
from the heap and are reused: no page faults after the first frames, the same peak of live memory.

This is the in-process equivalent of what PyTorch's CPU performance guides do with jemalloc / tcmalloc via
``LD_PRELOAD``. It applies to the whole process, only on glibc (Linux); elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 1 GiB for reuse (once per process); True when it took effect.

    ``PTRACK_MALLOC=default`` in the environment turns it off (to compare, or for a process that must return
    memory to the OS between calls).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("PTRACK_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
    return _done


__all__ = ["retain_freed_memory"]
