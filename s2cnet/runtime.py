"""Process settings that decide CPU speed more than the model does.

glibc's malloc hands every freed block above its (dynamic) mmap threshold back to the OS and trims
the heap top past 128 KB, so each photo's activations (up to ~10 MB each) come back as fresh pages
that the kernel must fault in and zero. Measured on the 2-core machine with the shipped weights:
about 100 ms a photo before the allocator settles (its threshold only rises as it sees larger
blocks freed), 80 ms with large blocks kept on the heap. jemalloc or tcmalloc (``LD_PRELOAD``)
do the same; a user who preloads one of them, or sets glibc's own malloc variables, is left alone,
and ``S2CNET_KEEP_FREED_MEMORY=0`` keeps glibc's defaults (setting any glibc variable, even to its
default, turns its dynamic threshold off, which is slower still).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: every activation stays on the heap
TRIM_THRESHOLD = 256 << 20  # free heap kept before returning memory to the OS
OPT_OUT = "S2CNET_KEEP_FREED_MEMORY"  # "0": glibc's defaults

_done: bool | None = None


def user_chose_allocator(env) -> bool:
    """glibc's malloc variables set, another allocator preloaded (jemalloc, tcmalloc, mimalloc), or
    this setting turned off."""
    return (env.get(OPT_OUT) == "0" or any(k.startswith("MALLOC_") and k.endswith("_") for k in env)
            or "malloc" in env.get("GLIBC_TUNABLES", "") or "malloc" in env.get("LD_PRELOAD", ""))


def keep_freed_memory() -> bool:
    """Keeps large freed blocks in the process (glibc on Linux) so the next photo reuses them. Returns
    whether the setting is in effect; once per process, a no-op elsewhere or where the user chose."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and not user_chose_allocator(os.environ):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                # both, in this order: fixing either turns glibc's dynamic thresholds off
                _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
                _done = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and _done
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                _done = False
    return _done
