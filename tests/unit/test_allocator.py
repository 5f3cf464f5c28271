"""policy/allocator.py: the malloc arena cap and the trim are safe to call anywhere, and the trim gives memory back."""

from __future__ import annotations

import ctypes
import sys

import pytest

from mpo_agents.policy import allocator


def resident_kb() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def test_configure_is_idempotent_and_release_never_raises() -> None:
    first = allocator.configure()
    assert allocator.configure() is first
    allocator.release_free_memory()


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._glibc() is None, reason="glibc only")
def test_release_returns_freed_heap_pages() -> None:
    libc = allocator._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MB in 4 KB blocks: below the mmap threshold, so they live in the heap and stay resident once freed
    # (one block kept at the end pins the heap's top, so glibc's automatic trim cannot give them back).
    blocks = [libc.malloc(4096) for _ in range(16384)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    pin = libc.malloc(4096)
    for block in blocks:
        libc.free(block)
    before = resident_kb()
    allocator.release_free_memory()
    libc.free(pin)
    assert before - resident_kb() > 32 * 1024
