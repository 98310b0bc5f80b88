"""Keep freed memory in the process between training steps (glibc's allocator).

A detection step allocates and frees the same large tensors every iteration (fc activations and
their gradients, pooled RoI features, optimizer temporaries: tens of MB each). By default glibc
serves such blocks with fresh ``mmap`` pages or trims them off the heap on free, so a step pays a
page fault for each 4 KiB of them again: the shapes Faster R-CNN step faulted 6.4k pages a step
under glibc's defaults, 2 with these settings, and ran 3-5% faster (2-core CPU, 2026-11-27).
Raising the mmap and trim thresholds lets freed blocks be reused, as PyTorch's CUDA caching
allocator does on GPUs. (Blocks of 32 MiB and more are still mapped afresh; the RoI kernels keep
their own large outputs in ``detseg.ops``' buffer cache.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
# Keep up to 2 GiB of freed heap before giving it back. mallopt takes a C int: a larger value
# (this was 1 << 34) wraps, to 0 for 1 << 34, and a trim threshold of 0 hands every freed block
# at the heap's top back at once, so each step faulted its memory in again (12.5k faults a
# step of the shapes Faster R-CNN, twice glibc's default; 2 with this value).
_TRIM_THRESHOLD = 2**31 - 1


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MiB from the heap and not to trim it; once per process.

    Returns:
        True if the allocator took the settings (Linux with glibc), False elsewhere (no effect).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # an out-of-range value raises, not wraps
    ok = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
          and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
    logger.debug("glibc mallopt for training: %s", "set" if ok else "refused")
    return ok
