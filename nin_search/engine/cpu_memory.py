"""glibc's malloc during CPU training: keep freed blocks for the next step, give them back after.

    keep_cpu_memory()      # before the first step: fit() and the lr-finder call it on the CPU
    release_cpu_memory()   # after the last: the free pages go back to the OS

glibc serves a block over its mmap threshold with a fresh mapping and unmaps it on free. The
threshold adapts upwards but stops at 32 MiB on 64-bit, and one activation of the `cpu` profile at
batch 128 is 128 x 96 x 28 x 28 fp32 = 38.5 MiB, so step after step it is mapped, zero-filled and
unmapped again: tens of thousands of page faults a step.
mallopt(M_MMAP_MAX, 0) with a 1 GiB M_TRIM_THRESHOLD serves them from the heap and reuses them:
less time a step, the same losses (benchmarks/cpu_allocator.py; docs/results/memory.md). Blocks
over 64 MiB from a thread other than the main one are still mapped afresh: a thread's heap cannot
hold them.

The settings are process-wide. Between runs, release_cpu_memory() hands the heap's free pages
back (malloc_trim), so a long-lived worker does not keep its largest run's memory. Left alone:
a malloc that is not glibc's (musl, or jemalloc or tcmalloc preloaded), and a user who chose
glibc's settings (any MALLOC_* variable or GLIBC_TUNABLES naming malloc, which glibc read at
start-up). Imports only the standard library.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameters, glibc's malloc.h


_kept = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, when it is the malloc this process uses; None otherwise (looked up once)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc without the usual soname
        return None
    address = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    if address != ctypes.cast(libc.malloc, ctypes.c_void_p).value:
        return None  # another allocator was preloaded or linked first
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def keep_cpu_memory() -> bool:
    """Turn the heap reuse on for this process (once); returns whether it is in effect."""
    global _kept
    if _kept:
        return True
    env = os.environ
    if (
        any(k.startswith("MALLOC_") for k in env)
        or "malloc" in env.get("GLIBC_TUNABLES", "")
        or "malloc" in env.get("LD_PRELOAD", "")
    ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _kept


def release_cpu_memory() -> None:
    """After a run: give the heap's free pages back to the OS, where keep_cpu_memory() is on."""
    libc = _glibc() if _kept else None
    if libc is not None:
        libc.malloc_trim(0)
