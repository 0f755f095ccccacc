"""Opt-in allocator tuning for large captures on Linux (glibc).

Capturing every site writes gigabytes into fresh buffers, and the model's own temporaries (tens of MB each)
are then served by fresh ``mmap`` calls: every page is faulted in and zeroed again on each forward pass. With
glibc's default dynamic thresholds this made an every-site capture of a GPT-2-small-shaped model take 1.4-2.2x
the plain forward pass (bench/capture.py); with freed blocks kept for reuse it takes ~1.05-1.1x, and the
plain forward itself gets ~20% faster.

The ``lamina`` command calls :func:`tune_malloc` at start-up; Python users opt in by calling it (or by
setting ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=18446744073709551615`` before starting
Python). The
cost: memory the process frees is kept for reuse instead of being returned to the OS at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_done: bool | None = None


def tune_malloc(*, mmap_threshold: int = 1 << 30, trim_threshold: int = -1, top_pad: int = 1 << 28) -> bool:
    """Keep large freed blocks in the heap for reuse (glibc ``mallopt``); a no-op elsewhere.

    Args:
        mmap_threshold: blocks smaller than this come from the heap, not from a fresh ``mmap``.
        trim_threshold: free memory at the top of the heap kept before returning it to the OS (-1, the
            default: never trim, as ``mallopt(3)`` documents; a positive limit below the size of one capture
            brings the page faults back).
        top_pad: extra heap space requested with each heap growth.

    Returns:
        True if glibc accepted the settings (Linux), False otherwise.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold),
                                                             (_M_TRIM_THRESHOLD, trim_threshold),
                                                             (_M_TOP_PAD, top_pad)))
    _done = ok
    return ok
