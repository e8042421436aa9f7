"""Host memory allocation for CPU inference: keep freed memory for reuse while a model runs, hand it back after.

glibc's ``malloc`` serves large blocks (above a threshold that adapts up to 32 MB) with a fresh ``mmap`` and
gives them back on ``free``; every new tensor of that size then starts with page faults, the kernel zeroing
each 4 KiB page. The CPU models allocate many such tensors per frame (RealTracker's feature network at 384x512:
~120,000 page faults, ~0.5 GB zeroed per frame at 8 frames per call; measured: a third of the network's CPU
time went to the kernel). Inside :func:`reuse_freed_memory` both thresholds are raised (``mallopt``), so large
blocks come from the heap and are reused: no page faults after the first frames.

The price is memory that stays with the process: every thread's heap keeps up to 1 GiB of freed blocks. That is
what a model running frame after frame wants, and what the next stage of a longer run does not: AllTracker with
the setting on peaked 0.8 GB higher than with glibc's defaults (2 threads, 30 frames of 480x854: 3428 vs 2644
MiB), and an ensemble ran it after its RealTracker teacher had switched the setting on for the whole process. So
the setting is scoped: leaving the block sets the thresholds to where glibc's adaptive ones settle once a large
block has been freed, and hands the free heap back to the OS.

This is the in-process equivalent of what PyTorch's CPU performance guides do with jemalloc / tcmalloc via
``LD_PRELOAD``. Only on glibc (Linux); elsewhere it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Iterator

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 1 << 30  # inside: blocks up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept
SETTLED_MMAP_BYTES = 32 << 20  # after: glibc's ceiling for its adaptive thresholds on 64-bit (mmap, trim = 2x)
SETTLED_TRIM_BYTES = 64 << 20

_depth = 0  # nesting of reuse_freed_memory blocks: only the outermost one restores


def _libc():
    """glibc's ``mallopt``/``malloc_trim`` holder, or None (turned off, not Linux, not glibc)."""
    if os.environ.get("PTRACK_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim  # noqa: B018 - musl and others lack it
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed blocks up to 1 GiB in the heap for reuse while inside (yields True when it took effect).

    On leaving the outermost block the thresholds go to 32 MiB (mmap) / 64 MiB (trim) and the free heap is
    returned to the OS (:func:`release_freed_memory`). ``PTRACK_MALLOC=default`` in the environment turns it off
    (to compare, or for a process that must not touch the allocator).
    """
    global _depth
    libc = _libc()
    if libc is None:
        yield False
        return
    if _depth == 0:
        libc.mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES)
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_BYTES)
            libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_BYTES)
            libc.malloc_trim(0)


def release_freed_memory() -> bool:
    """Hand the free heap, holes included, back to the OS now (``malloc_trim``); True when some was returned.

    For the end of a stage whose tensors are all gone (one ensemble teacher before the next loads): glibc only
    ever trims the top of its heaps, so memory freed below a live block would otherwise sit under the next
    stage's own peak. Does nothing (False) where :func:`reuse_freed_memory` would not.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


__all__ = ["release_freed_memory", "reuse_freed_memory"]
