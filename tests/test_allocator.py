"""The CPU allocator setting: freed memory kept while a model runs, handed back to the OS when it ends."""
from __future__ import annotations

import sys

import pytest
import torch

from pointtrack_cli.models import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt/malloc_trim: Linux")

MIB = 1 << 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def touch_and_free(mib: int) -> None:
    x = torch.ones(mib * MIB // 4)  # every page written: resident
    del x


def test_freed_memory_is_kept_inside_and_returned_after(monkeypatch):
    monkeypatch.delenv("PTRACK_MALLOC", raising=False)
    allocator.release_freed_memory()
    base = rss_mib()
    with allocator.reuse_freed_memory() as on:
        if not on:
            pytest.skip("not glibc")
        with allocator.reuse_freed_memory():  # nested: the inner exit must not hand memory back yet
            touch_and_free(256)
        inside = rss_mib()
        assert inside > base + 200, (base, inside)  # kept for reuse: the next frame's tensors fault nothing in
    after = rss_mib()
    assert after < base + 64, (base, inside, after)  # the next stage does not carry it
    touch_and_free(256)  # and large blocks are mmap'ed again, returned on free
    assert rss_mib() < base + 64


def test_default_malloc_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("PTRACK_MALLOC", "default")
    with allocator.reuse_freed_memory() as on:
        assert on is False
    assert allocator.release_freed_memory() is False
