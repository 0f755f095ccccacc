"""Small I/O helpers: atomic writes and memoised file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .paths import cache_dir

__all__ = ["atomic_dir", "atomic_write_text", "file_sha256", "json_dumps"]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; on success rename it to ``final`` in one step.

    An interrupted or failed write leaves no ``final`` behind (the temporary directory is removed), so a
    reader never sees a half-written entry. If ``final`` appeared meanwhile (another process), ours is
    discarded and theirs kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_dumps(obj) -> str:
    """Deterministic JSON (sorted keys, 2-space indent)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoised on disk by (absolute path, size, mtime) so large files hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = cache_dir("hashes.json")
    memo: dict[str, str] = {}
    if memo_file.exists():
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    memo[key] = digest.hexdigest()
    with contextlib.suppress(OSError):
        atomic_write_text(memo_file, json.dumps(memo))
    return memo[key]
