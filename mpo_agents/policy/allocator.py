"""Keeps the policy process's resident memory flat on glibc: fewer malloc arenas, freed memory handed back.

PyTorch's CPU tensors come from the C library's `malloc`. Under glibc, memory a step frees stays mapped inside
malloc's heaps (only the very top of a heap is returned), and each thread that allocates may get an arena of
its own: the graph runs each node on one of several executor threads, so every update could grow a different
arena. Measured on the quickstart (SmolLM2-135M, fp32, `benchmarks/bench_memory.py`): the process grew by
~2.3 GB per iteration, to 15 GB after 6, around 2.1 GB of live tensors. `configure()` caps the arenas
(`mallopt(M_ARENA_MAX)`, for arenas created from then on, unless `MALLOC_ARENA_MAX` was set) and
`release_free_memory()` (`malloc_trim(0)`) returns every free page of every arena to the system. Elsewhere
(macOS, musl) both do nothing.

The policy trims after each checkpoint write, not after each update. Since all of the policy's torch work runs
on its own thread, the heap it grows stops growing after a few updates (4.0-4.2 GB after each update from the
fourth on, no trim, 10 iterations of the run above with gradient checkpointing), while a trim after every
update cost ~0.2 s in the call itself plus the page faults of taking the memory back in the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
# Two arenas: the main thread's (model loading) and one that every other thread shares. With one, the executor
# threads and torch's own threads would all queue on the main heap's lock.
ARENAS = 2


@functools.cache
def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


@functools.cache
def configure() -> bool:
    """Cap glibc's malloc arenas for this process (once; a `MALLOC_ARENA_MAX` set in the environment wins, glibc
    read it at start). Call it before the threads that train the policy first allocate. True when capped here."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    if not libc.mallopt(M_ARENA_MAX, ARENAS):
        logger.debug("mallopt(M_ARENA_MAX, %d) failed", ARENAS)
        return False
    return True


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (glibc's `malloc_trim(0)`), so what a step
    freed no longer counts as resident. A few milliseconds per call here."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
