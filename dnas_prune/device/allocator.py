"""Keep freed CPU memory in the process, so that a forward does not page-fault its activations afresh every time.

Why: glibc's malloc hands large freed blocks back to the kernel (blocks above a size threshold are mapped and
unmapped one by one, and free space at the top of the heap is trimmed). A network's activations at batch 64 are
such blocks, so a forward can fault in, and the kernel zero, tens of megabytes of fresh pages, or reuse them, depending
on the threshold glibc has adapted to from what the process ran before. The same model then runs at two speeds
(experiments/results/allocator.md measures both), a latency table measured in one state does not describe the
other, and training steps pay the faults too. jemalloc and tcmalloc keep freed memory by design; this makes glibc
do the same: the largest map threshold glibc accepts and a trim threshold it never reaches. The cost is that the
process keeps its peak heap instead of returning it.

It is process-wide and cannot be undone (any mallopt call ends glibc's adaptive threshold), so the library calls it
only where it measures or trains: every latency timing and the training loop. A user's own loop can call
:func:`keep_freed_memory` once at start; a deployed model gets the measured speed with the same setting, e.g.
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647`` in its environment, or jemalloc/tcmalloc.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit (half its 64 MiB heap size)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
_STATE: str | None = None


def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse (once per process); returns what the allocator does now, for the
    records: ``"glibc, freed memory kept"`` or ``"unchanged (<libc>)"`` where there is no glibc to tell."""
    global _STATE
    if _STATE is None:
        libc_name = platform.libc_ver()[0]
        _STATE = f"unchanged ({libc_name or platform.system() or 'unknown libc'})"
        if libc_name == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                mallopt = None
            if mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 \
                    and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
                _STATE = "glibc, freed memory kept"
    return _STATE
