"""The activation cache: reading and writing entries safely, a size limit with least-recently-used eviction,
orphaned temporaries, and clearing.

Captures with ``cache=True`` are stored under ``cache_dir("activations", <content key>)``, reduced captures
(``capture_reduced(..., store=True)``: reducer states and kept rows) under ``cache_dir("store", <key>)``. Each
load marks the entry as used; after each store, the least recently used entries of both kinds are evicted
until together they fit in ``$LAMINA_CACHE_MAX_GB`` (default 20 GB; ``0`` or ``inf`` mean no limit; a negative value or
anything that is not a number is an error). Converted models live beside it (``models/``) and are never
evicted (they are listed and cleared only on request).

Faults are survived, never fatal:

* every entry carries checksums (xxh3-128 of all its bytes, see :mod:`lamina.capture.activations`) checked
  on load; a damaged, truncated, incomplete or foreign entry is discarded with one :class:`CacheWarning`
  and the capture is recomputed;
* entries are written to a temporary sibling and renamed into place, never over an existing entry (the
  process that loses a race uses the winner's entry); they are removed by renaming them away first, so a
  reader sees a whole entry or none, and a reader already holding an entry reads it whole;
* temporaries left by killed processes are removed by the next store and by ``clear_cache``; ``describe``
  counts them;
* a cache that cannot be written (read-only, full disk) gives one :class:`CacheWarning`; the capture's
  result is returned all the same.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ._io import clean_stale_temps, stale_temps, temp_name
from .errors import LaminaError
from .paths import cache_dir

__all__ = ["CacheEntry", "CacheWarning", "cache_entries", "cache_limit_bytes", "mark_used", "evict", "clear_cache",
           "load_entry", "store_entry", "discard_entry", "orphans", "describe"]

KINDS = ("activations", "store", "models")
#: Per kind, the file whose mtime records an entry's last use (a store's lock file is touched at every open).
_MARKS = {"activations": "activations.json", "store": "lock"}
_MARK = _MARKS["activations"]
#: The kinds that share the $LAMINA_CACHE_MAX_GB limit (models are never evicted).
EVICTABLE = ("activations", "store")
DEFAULT_MAX_GB = 20.0


class CacheWarning(UserWarning):
    """The activation cache could not be used for one capture (damaged entry, unwritable cache); the run
    goes on without it."""


def _warn(message: str) -> None:
    """One warning, attributed to the first caller outside lamina (the user's call of capture or a study)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, CacheWarning, stacklevel=level)


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry: its folder, size in bytes and last use (seconds since the epoch)."""

    path: Path
    size: int
    last_used: float


def _size(path: Path) -> int:
    """Bytes under ``path`` (files that vanish while counting are skipped)."""
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _root(kind: str) -> Path:
    if kind not in KINDS:
        raise LaminaError(f"unknown cache kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return cache_dir(kind)


def cache_entries(kind: str = "activations") -> list[CacheEntry]:
    """The complete entries of one kind (temporaries and stray files are skipped), oldest use first."""
    root = _root(kind)
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.name.startswith((".tmp-", ".old-")) or not folder.is_dir() or folder.is_symlink():
            continue
        try:  # an entry evicted by another process while we look is simply not listed
            mark = folder / _MARKS.get(kind, _MARK)
            used = mark.stat().st_mtime if mark.is_file() else folder.stat().st_mtime
        except OSError:
            continue
        out.append(CacheEntry(folder, _size(folder), used))
    return sorted(out, key=lambda e: e.last_used)


def orphans(kind: str = "activations") -> list[Path]:
    """Temporaries in the cache left by processes that died while writing or removing an entry."""
    return stale_temps(_root(kind))


def cache_limit_bytes() -> int | None:
    """The activation cache's size limit from ``$LAMINA_CACHE_MAX_GB`` (None: unlimited).

    ``0`` and ``inf`` mean no limit; NaN, negative values and non-numbers raise :class:`LaminaError`.
    """
    raw = os.environ.get("LAMINA_CACHE_MAX_GB", "")
    hint = "set it to a size in GB, e.g. 20 (0 = no limit)"
    try:
        gb = float(raw) if raw.strip() else DEFAULT_MAX_GB
    except ValueError:
        raise LaminaError(f"LAMINA_CACHE_MAX_GB={raw!r} is not a number; {hint}") from None
    if math.isnan(gb) or gb < 0:
        raise LaminaError(f"LAMINA_CACHE_MAX_GB={raw!r} is not a size; {hint}")
    return None if gb == 0 or math.isinf(gb) else int(gb * 1024**3)


def mark_used(entry: Path) -> None:
    """Record that an activation entry was just read (its marker file's mtime)."""
    try:
        os.utime(Path(entry) / _MARK)
    except OSError:
        pass  # a read-only cache still works; it just forgets the order of use


def discard_entry(entry: Path) -> bool:
    """Remove a cache entry (or whatever stands at its path) atomically: it is first renamed to a temporary,
    so a concurrent reader sees it whole or not at all. False if it could not be removed."""
    entry = Path(entry)
    grave = entry.parent / temp_name(entry.name)
    try:
        os.rename(entry, grave)
    except FileNotFoundError:
        return True  # someone else removed it
    except OSError:
        return False
    if grave.is_dir() and not grave.is_symlink():
        shutil.rmtree(grave, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            grave.unlink()
    return True


@contextlib.contextmanager
def _unused_store(folder: Path):
    """Yield True while holding the lock of a reduced-capture store (no live process writes or reads it, and
    none can start until the block ends), False if a live process holds it. Other entries: True."""
    lock = folder / "lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock to ask
        fcntl = None
    if fcntl is None or not lock.is_file():
        yield True
        return
    try:
        handle = open(lock, "a+")
    except OSError:
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # a capture still running: its incomplete store is not ours to delete
            return
        yield True


def _discard_unused(entry: Path) -> bool:
    """Discard an entry unless it is a store a live process holds (then False)."""
    with _unused_store(entry) as free:
        return free and discard_entry(entry)


def evict(keep: Path | None = None, limit: int | None = -1) -> list[Path]:
    """Remove least recently used entries (activations and reduced-capture stores together) until their total
    fits ``limit`` (default: the configured limit); ``keep`` (the entry just written) and stores a live process
    holds are never removed. Returns the removed folders."""
    limit = cache_limit_bytes() if limit == -1 else limit
    if limit is None:
        return []
    entries = sorted((e for kind in EVICTABLE for e in cache_entries(kind)), key=lambda e: e.last_used)
    total = sum(e.size for e in entries)
    removed = []
    for e in entries:
        if total <= limit:
            break
        if keep is not None and e.path.resolve() == Path(keep).resolve():
            continue
        if _discard_unused(e.path):
            total -= e.size
            removed.append(e.path)
    return removed


def load_entry(entry: Path):
    """The :class:`~lamina.capture.activations.Activations` cached at ``entry``, or None (absent, removed
    while reading, or damaged: then discarded with one :class:`CacheWarning`). Marks the entry as used.

    Raises:
        LaminaError: ``$LAMINA_CACHE_MAX_GB`` is invalid (checked here, before any work is done).
    """
    from .capture.activations import Activations, DamagedActivations

    cache_limit_bytes()
    entry = Path(entry)
    if not os.path.lexists(entry):
        return None
    try:
        acts = Activations._load(entry, require_checksum=True)
    except FileNotFoundError:
        return None  # evicted by another process as we opened it: a miss
    except DamagedActivations as exc:
        removed = discard_entry(entry)
        _warn(f"cache entry {entry.name[:12]} {exc.reason}; "
              f"{'discarded, ' if removed else ''}recomputing")
        return None
    except OSError as exc:
        _warn(f"cache entry {entry.name[:12]} cannot be read ({exc.strerror}); recomputing")
        return None
    mark_used(entry)
    return acts


def store_entry(entry: Path, acts) -> bool:
    """Write ``acts`` as the cache entry ``entry`` (if no other process wrote it first), then clean orphaned
    temporaries and evict beyond the size limit. A cache that cannot be written gives one
    :class:`CacheWarning` and False; the caller still has ``acts``."""
    from safetensors import SafetensorError

    entry = Path(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(entry.parent)
        acts.save(entry, exists="keep")
    except (OSError, SafetensorError) as exc:
        from .capture.activations import _reason

        _warn(f"the activation cache {entry.parent} cannot be written ({_reason(exc)}); "
              "this capture is not cached")
        return False
    with contextlib.suppress(OSError):
        evict(keep=entry)  # least recently used entries beyond $LAMINA_CACHE_MAX_GB
    return True


def clear_cache(kind: str = "activations") -> int:
    """Delete every entry of one kind and every orphaned temporary; returns the bytes freed.

    Temporaries of processes still running (a capture writing right now) and the stores they hold are left
    alone.
    """
    root = _root(kind)
    if not root.is_dir():
        return 0
    stale = set(orphans(kind))
    freed = 0
    for path in root.iterdir():
        if path.name.startswith((".tmp-", ".old-")) and path not in stale:
            continue  # being written by a live process
        size = _size(path)
        if _discard_unused(path):
            freed += size
    return freed


def describe() -> str:
    """A few lines for ``lamina cache``: where the cache is, the size and count per kind, and orphaned
    temporaries (removed by ``lamina cache --clear KIND`` or the next capture that writes to the cache)."""
    limit = cache_limit_bytes()
    lines = [f"cache: {cache_dir()}"]
    for kind in KINDS:
        entries = cache_entries(kind)
        size = sum(e.size for e in entries)
        line = f"  {kind:<12s} {len(entries):4d} entries  {size / 1024**3:7.2f} GB"
        if kind == "store":
            line += "  (reduced captures; share the limit above)"
        if kind == "activations":
            line += f"  (limit {'none' if limit is None else f'{limit / 1024**3:g} GB'}; LAMINA_CACHE_MAX_GB)"
            if entries:
                line += f"  last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(entries[-1].last_used))}"
        stale = orphans(kind)
        if stale:
            line += (f"\n  {'':<12s} {len(stale):4d} orphans  {sum(map(_size, stale)) / 1024**3:7.2f} GB  (temporaries "
                     f"of killed runs; lamina cache --clear {kind} removes them)")
        lines.append(line)
    return "\n".join(lines)
