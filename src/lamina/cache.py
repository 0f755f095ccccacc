"""The activation cache: what is in it, a size limit with least-recently-used eviction, and clearing.

Captures with ``cache=True`` are stored under ``cache_dir("activations", <content key>)``. Each load marks
the entry as used; after each store, the least recently used entries are evicted until the activation
cache fits in ``$LAMINA_CACHE_MAX_GB`` (default 20 GB; ``0`` means no limit). Converted models live beside
it (``models/``) and are never evicted (they are listed and cleared only on request).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LaminaError
from .paths import cache_dir

__all__ = ["CacheEntry", "cache_entries", "cache_limit_bytes", "mark_used", "evict", "clear_cache"]

KINDS = ("activations", "models")
_MARK = "activations.json"  # the file whose mtime records the last use of an activation entry
DEFAULT_MAX_GB = 20.0


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry: its folder, size in bytes and last use (seconds since the epoch)."""

    path: Path
    size: int
    last_used: float


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cache_entries(kind: str = "activations") -> list[CacheEntry]:
    """The complete entries of one kind (half-written temporary folders are skipped), oldest use first."""
    if kind not in KINDS:
        raise LaminaError(f"unknown cache kind {kind!r}; choose one of: {', '.join(KINDS)}")
    root = cache_dir(kind)
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith(".tmp-"):
            continue
        mark = folder / _MARK
        used = mark.stat().st_mtime if mark.is_file() else folder.stat().st_mtime
        out.append(CacheEntry(folder, _size(folder), used))
    return sorted(out, key=lambda e: e.last_used)


def cache_limit_bytes() -> int | None:
    """The activation cache's size limit from ``$LAMINA_CACHE_MAX_GB`` (None: unlimited)."""
    raw = os.environ.get("LAMINA_CACHE_MAX_GB", "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_MAX_GB
    except ValueError:
        raise LaminaError(f"LAMINA_CACHE_MAX_GB={raw!r} is not a number; set it to e.g. 20 (0 = no limit)") from None
    return None if gb <= 0 else int(gb * 1024**3)


def mark_used(entry: Path) -> None:
    """Record that an activation entry was just read (its marker file's mtime)."""
    try:
        os.utime(Path(entry) / _MARK)
    except OSError:
        pass  # a read-only cache still works; it just forgets the order of use


def evict(keep: Path | None = None, limit: int | None = -1) -> list[Path]:
    """Remove least recently used activation entries until the total fits ``limit`` (default: the
    configured limit); ``keep`` (the entry just written) is never removed. Returns the removed folders."""
    limit = cache_limit_bytes() if limit == -1 else limit
    if limit is None:
        return []
    entries = cache_entries("activations")
    total = sum(e.size for e in entries)
    removed = []
    for e in entries:
        if total <= limit:
            break
        if keep is not None and e.path.resolve() == Path(keep).resolve():
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        total -= e.size
        removed.append(e.path)
    return removed


def clear_cache(kind: str = "activations") -> int:
    """Delete every entry of one kind; returns the bytes freed."""
    entries = cache_entries(kind)
    for e in entries:
        shutil.rmtree(e.path, ignore_errors=True)
    return sum(e.size for e in entries)


def describe() -> str:
    """A few lines for ``lamina cache``: where the cache is, and the size and count per kind."""
    limit = cache_limit_bytes()
    lines = [f"cache: {cache_dir()}"]
    for kind in KINDS:
        entries = cache_entries(kind)
        size = sum(e.size for e in entries)
        line = f"  {kind:<12s} {len(entries):4d} entries  {size / 1024**3:7.2f} GB"
        if kind == "activations":
            line += f"  (limit {'none' if limit is None else f'{limit / 1024**3:g} GB'}; LAMINA_CACHE_MAX_GB)"
            if entries:
                line += f"  last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(entries[-1].last_used))}"
        lines.append(line)
    return "\n".join(lines)
