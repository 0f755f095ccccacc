"""Small I/O helpers: deterministic JSON and memoised file hashes; the atomic writing API re-exported from
:mod:`lamina._temps` (temporaries, :func:`atomic_write_text`) and :mod:`lamina._outdir` (:func:`atomic_dir`,
output-folder manifests, :func:`check_output_dir`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from ._outdir import MANIFEST, Legacy, atomic_dir, check_output_dir, clean_stale_temps, read_manifest, write_manifest
from ._temps import atomic_write_text, default_file_mode, pid_alive, stale_temps, temp_name
from .paths import cache_dir

__all__ = [
    "MANIFEST",
    "Legacy",
    "atomic_dir",
    "atomic_write_text",
    "check_output_dir",
    "clean_stale_temps",
    "default_file_mode",
    "file_sha256",
    "json_dumps",
    "pid_alive",
    "read_manifest",
    "stale_temps",
    "temp_name",
    "write_manifest",
]


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
