"""Host memory: let XLA:CPU reuse the memory it frees instead of faulting in fresh pages.

XLA:CPU mallocs a program's temporaries at every run and frees them after it. glibc serves
blocks that large with `mmap` (above its mmap threshold, and always from a thread's own arena,
whose heaps are capped at 64 MiB) and unmaps them on `free`, or trims the heap top back to the
kernel, so the next run touches fresh pages that the kernel must fault in and zero again. On
CPU that is tens of thousands of minor page faults per train step at t5-tiny's shapes and
close to a million (gigabytes zeroed) at t5-small's; `benchmarks/train_throughput.py` counts
them for both sides.

`retain_freed_memory()` sets glibc's malloc to one arena, no `mmap` at all (the heap grows
instead) and no trimming, so freed memory stays mapped and the next step reuses it. The
process's resident memory then stays at its peak. The `t5x-lite` CLI and the benchmarks call it
first thing; a notebook can too (before the first JAX computation). It pays where steps repeat;
a workload of many small compilations and few steps (this test suite) ran about a third slower
with it, every compiler thread allocating from the one arena, so the tests leave it off.
`T5X_LITE_RETAIN_HOST_MEMORY=0` turns it off. Elsewhere than Linux with glibc it does nothing.

    from t5x_lite import hostmem
    hostmem.retain_freed_memory()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "T5X_LITE_RETAIN_HOST_MEMORY"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # a value of -1: never trim
_M_MMAP_MAX = -4  # 0: never mmap (the heap grows instead; mmap only if it cannot)
_M_ARENA_MAX = -8  # 1: every thread allocates from the main heap


def retain_freed_memory() -> bool:
    """Configure glibc's malloc to keep freed memory for reuse (see the module docstring).

    Returns True if it was applied; False when `T5X_LITE_RETAIN_HOST_MEMORY=0`, off Linux,
    or when the C library has no `mallopt` (musl) or refuses a setting.
    """
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all([mallopt(param, value) == 1 for param, value in settings])
