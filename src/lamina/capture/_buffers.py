"""Host output buffers for captures, reused across captures instead of faulted in afresh each time.

Every page of a fresh buffer is zeroed by the kernel on first touch: for an every-site capture (about 1 GB at
GPT-2-small shape, 8 x 256 tokens) that costs more CPU than lamina's copying itself -- on the test VM about
1.5-2.5 s of system time against a 4.7 s forward pass. The buffers of one capture are therefore views into one
anonymous memory map, and once every tensor of a capture is gone (its ``Activations`` dropped) the map goes
back to a small pool, from which the next capture takes it with its pages already in place. Pooled maps are
kept up to ``$LAMINA_BUFFER_POOL_GB`` (default 2 GB; 0 turns pooling off); larger captures get fresh memory.

Whether a map is still in use is read from its reference count: each tensor storage made by
``torch.frombuffer`` holds a reference to the map until the storage is freed.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading

import torch

__all__ = ["host_buffers"]

_POOL: list[mmap.mmap] = []
_LOCK = threading.Lock()
_ALIGN = 64  # bytes: every buffer starts on a cache line
_UNUSED_REFS = 3  # the pool list, the loop variable and getrefcount's own argument


def _pool_limit() -> int:
    raw = os.environ.get("LAMINA_BUFFER_POOL_GB", "")
    try:
        gb = float(raw) if raw.strip() else 2.0
    except ValueError:
        gb = 2.0
    return int(max(gb, 0.0) * 1024**3)


def _take(nbytes: int, limit: int) -> mmap.mmap:
    """The smallest idle pooled map of at least ``nbytes``, else a fresh one (pooled if it fits the limit;
    idle maps are dropped, smallest first, to make room)."""
    with _LOCK:
        idle = [m for m in _POOL if sys.getrefcount(m) <= _UNUSED_REFS]
        fits = [m for m in idle if len(m) >= nbytes]
        if fits:
            return min(fits, key=len)
        fresh = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if nbytes <= limit:
            for m in sorted(idle, key=len):
                if sum(map(len, _POOL)) + nbytes <= limit:
                    break
                _POOL.remove(m)
            _POOL.append(fresh)
        return fresh


def host_buffers(shapes: dict[str, tuple[int, int]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Uninitialised CPU tensors of the given shapes, carved from one (possibly reused) memory map."""
    limit = _pool_limit()
    item = torch.empty((), dtype=dtype).element_size()
    counts = {k: int(s[0]) * int(s[1]) for k, s in shapes.items()}
    total = sum((c * item + _ALIGN - 1) // _ALIGN * _ALIGN for c in counts.values())
    if limit == 0 or total == 0 or not sys.platform.startswith("linux"):
        return {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}
    arena = _take(total, limit)
    out, offset = {}, 0
    for k, s in shapes.items():
        if counts[k] == 0:
            out[k] = torch.empty(s, dtype=dtype)
            continue
        out[k] = torch.frombuffer(arena, dtype=dtype, count=counts[k], offset=offset).view(s)
        offset += (counts[k] * item + _ALIGN - 1) // _ALIGN * _ALIGN
    return out
