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

__all__ = ["tune_malloc", "release_free_memory"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_done: bool | None = None
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                pass
    return _LIBC or None


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
        mallopt = _libc().mallopt
    except AttributeError:  # no libc, or not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold),
                                                             (_M_TRIM_THRESHOLD, trim_threshold),
                                                             (_M_TOP_PAD, top_pad)))
    _done = ok
    return ok


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _free_heap_bytes() -> int | None:
    """Bytes glibc holds free in its heaps (``mallinfo2().fordblks``), or None where unknown."""
    try:
        info = _libc().mallinfo2
    except AttributeError:  # no libc, or glibc < 2.33
        return None
    info.restype = _MallInfo2
    return int(info().fordblks)


def release_free_memory(at_least: int = 0) -> bool:
    """Give the pages of freed heap memory back to the OS (glibc ``malloc_trim(0)``); a no-op elsewhere.

    A forward pass frees and reallocates blocks of many sizes; glibc serves them from the heap, around the
    reducers' long-lived blocks, and keeps what is freed, so the resident size crept up by 0.1-0.2 GB per batch
    although the live data grew ~10 MB (token-length at gpt-neo-125M shape, 1024-token batches: 1.16 -> 2.74 GB
    over 8 batches; 1.16 -> 1.22 GB with a trim after each, at the same speed). ``malloc_trim`` releases every
    free whole page, not only the top of the heap, whatever :func:`tune_malloc` set.
    :func:`lamina.capture_reduced` calls it after each batch with ``at_least=256 MiB``: small models, whose
    freed memory is worth less than the page faults of taking it back, are left alone.

    Args:
        at_least: trim only if glibc holds at least this many free bytes (when it can tell).

    Returns:
        True if memory was released.
    """
    try:
        trim = _libc().malloc_trim
    except AttributeError:
        return False
    if at_least > 0:
        free = _free_heap_bytes()
        if free is not None and free < at_least:
            return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
