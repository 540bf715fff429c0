"""Keep freed memory in the process (glibc), so training does not fault its pages in again every step.

By default glibc gives freed memory back to the kernel eagerly: a block at or
above a threshold (128 KiB at first; raised to the size of each such block
freed, up to 32 MiB) gets a mapping of its own and is unmapped when freed, and
free space of more than the trim threshold (128 KiB, then twice the mmap
threshold) at the top of the heap is trimmed. The next allocation has the
kernel zero-fill and map those pages again. Training allocates and frees the
same megabyte-sized activations at every step, more of them at once than
twice the largest, so a quarter of a run's CPU time went to the kernel faulting
pages in (docs/benchmark.md). Fixing both thresholds keeps those blocks for
reuse. Numbers are unchanged (the same arithmetic on the same values;
probabilities byte-identical, tests/test_allocator.py); what is held back is
free heap space, at most the heap's peak size.

Left as they are: a process whose allocator is not glibc's malloc (musl, macOS,
Windows, or jemalloc/tcmalloc preloaded), and one whose user set glibc's malloc
settings in the environment. Blocks of 32 MiB or more (glibc's ceiling for the
threshold) are still mapped each time: the default network's largest activation
is 13 MB at batch 256; a first stage of 48 channels or more has larger ones.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Requests below this come from the heap, not from a mapping of their own: glibc's
# maximum on 64-bit (larger ones, such as the whole training set, are made once).
MMAP_THRESHOLD = 32 << 20
# Free space at the top of the heap is handed back only beyond this.
TRIM_THRESHOLD = 1 << 30
# Environment through which a user sets (or replaces) the allocator: theirs wins.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _users_choice() -> bool:
    env = os.environ
    return (any(name in env for name in USER_SETTINGS) or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")
            or "malloc" in env.get("LD_PRELOAD", ""))  # libjemalloc, libtcmalloc, libmimalloc


def keep_freed_memory() -> bool:
    """Fix glibc's thresholds for this process (idempotent). True if set; False where it leaves
    the allocator alone (not glibc, or the user's own settings in the environment)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _users_choice():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
