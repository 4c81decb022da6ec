"""Keep freed memory inside the process (glibc), so that CPU scoring does not page-fault on every batch.

By default glibc returns large freed blocks to the OS (``munmap`` above a dynamic threshold, heap trimming), so
every batch's activations are fresh pages that the kernel must fault in and zero: on a 2-core VM scoring
DenseNet-BC-100 took about 95,000 page faults a second and ran 15-20% slower. Raising the mmap threshold to its
maximum and disabling trimming lets the allocator reuse the memory instead (the process keeps its peak memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
TOP_PAD = 64 * 1024 * 1024
NEVER_TRIM = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Tune glibc's malloc for reuse; True when applied, False where the C library is not glibc (nothing done)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD)))
