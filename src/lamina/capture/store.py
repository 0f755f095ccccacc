"""A resumable on-disk store for reduced captures: reducer states and kept rows, checkpointed per chunk.

One capture lives in ``cache_dir("store", key)`` (the key addresses the model, tokenizer, texts, positions,
sites, reducer settings and batch plan):

- ``manifest.json``: what the capture is (provenance, reducers, number of batches and rows);
- ``rows-<b0>-<b1>.safetensors``: the rows kept by row-keeping reducers for batches [b0, b1) (kept forever:
  written once, so a long capture writes its kept rows once);
- ``state-<b1>.safetensors``: the state of every other reducer after b1 batches (only the newest is kept);
- ``complete.json``: present when every batch is in.

Every file is written to a temporary sibling and renamed into place, rows before state, so a run killed at
any moment leaves the last complete checkpoint intact; the next run with the same key loads it and goes on
from the next batch. The reducers then see exactly the additions of an uninterrupted run, in the same order,
so the final states are bit-identical. A lock file keeps two processes from writing one capture at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from .._io import json_dumps
from ..errors import LaminaError
from ..paths import cache_dir
from .reduce import Reducer

__all__ = ["Store", "stored_rows"]

_FORMAT = 1
_STATE = re.compile(r"^state-(\d{6})\.safetensors$")
_ROWS = re.compile(r"^rows-(\d{6})-(\d{6})\.safetensors$")


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


class Store:
    """The on-disk state of one reduced capture (see the module docstring).

    Args:
        key: the capture's content address.
        manifest: JSON-able description written once (provenance, reducer specs, n_batches, n_rows).
        root: the folder (default ``cache_dir("store", key)``).
    """

    def __init__(self, key: str, manifest: dict, root: str | os.PathLike | None = None):
        self.key = key
        self.folder = Path(root) if root is not None else cache_dir("store", key)
        self.manifest = {"format": _FORMAT, "key": key, **manifest}
        self.bytes_written = 0
        self._lock_handle = None

    # -- files -----------------------------------------------------------------------------------------------
    def _write(self, name: str, write) -> None:
        """Write ``self.folder / name`` through a temporary sibling and a rename."""
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{name}-", dir=self.folder)
        os.close(fd)
        try:
            write(tmp)
            self.bytes_written += os.path.getsize(tmp)
            os.replace(tmp, self.folder / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _save(self, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._write(name, lambda tmp: save_file(_cpu(tensors), tmp, metadata={"lamina": json.dumps(meta)}))

    def _json(self, name: str, obj: dict) -> None:
        self._write(name, lambda tmp: Path(tmp).write_text(json_dumps(obj), encoding="utf-8"))

    @contextlib.contextmanager
    def open(self) -> Iterator["Store"]:
        """Create or check the folder and hold its lock for the duration of the ``with`` block."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = open(self.folder / "lock", "a+")
        try:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not POSIX: no cross-process lock
                pass
            except OSError:
                raise LaminaError(f"another process is writing this capture ({self.folder}); wait for it to "
                                  "finish, then run again") from None
            os.utime(self.folder / "lock")  # the last use, for the cache's LRU eviction (lamina.cache)
            for stray in self.folder.glob(".tmp-*"):  # left by a run killed mid-write (we hold the lock)
                stray.unlink(missing_ok=True)
            existing = self.folder / "manifest.json"
            if existing.is_file():
                try:
                    old = json.loads(existing.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    old = None
                if old is None or old.get("format") != _FORMAT or old.get("key") != self.key:
                    self._reset()
            if not existing.is_file():
                self._json("manifest.json", self.manifest)
            yield self
        finally:
            lock.close()

    def _reset(self) -> None:
        """Forget an unreadable or foreign store (files named by this module only)."""
        for f in self.folder.iterdir():
            if _STATE.match(f.name) or _ROWS.match(f.name) or f.name in ("manifest.json", "complete.json"):
                f.unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return (self.folder / "complete.json").is_file()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint(self, reducers: Sequence[Reducer], batches: tuple[int, int], rows: tuple[int, int]) -> None:
        """Commit the chunk of batches [b0, b1) covering capture rows [r0, r1)."""
        (b0, b1), (r0, r1) = batches, rows
        row_tensors, state = {}, {}
        for i, r in enumerate(reducers):
            if r.row_state:
                row_tensors.update({f"{i}/{k}": v for k, v in r.rows_state(r0, r1).items()})
            else:
                state.update({f"{i}/{k}": v for k, v in r.state_dict().items()})
        meta = {"batches": [b0, b1], "rows": [r0, r1]}
        if row_tensors:
            self._save(f"rows-{b0:06d}-{b1:06d}.safetensors", row_tensors, meta)
        self._save(f"state-{b1:06d}.safetensors", state, meta)
        for f in self.folder.iterdir():  # older states are superseded
            m = _STATE.match(f.name)
            if m and int(m.group(1)) < b1:
                f.unlink(missing_ok=True)

    def finish(self, n_batches: int, n_rows: int) -> None:
        self._json("complete.json", {"batches": n_batches, "rows": n_rows})
        if self.folder.parent == cache_dir("store"):  # in the cache: keep it within $LAMINA_CACHE_MAX_GB
            from ..cache import evict

            with contextlib.suppress(OSError):
                evict(keep=self.folder)

    def resume(self, reducers: Sequence[Reducer], device) -> tuple[int, int]:
        """Load the newest checkpoint into ``reducers``; returns (batches done, rows done), (0, 0) if none."""
        states = sorted((int(m.group(1)), f) for f in self.folder.iterdir() if (m := _STATE.match(f.name)))
        if not states:
            return 0, 0
        b1, path = states[-1]
        tensors, meta = _load(path)
        rows_done = meta["rows"][1]
        for i, r in enumerate(reducers):
            if not r.row_state:
                r.load_state_dict({k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(i)},
                                  device=device)
        chunks = sorted((int(m.group(1)), int(m.group(2)), f) for f in self.folder.iterdir()
                        if (m := _ROWS.match(f.name)))
        for c0, c1, path in chunks:
            if c1 > b1:  # written before a kill, without its state: redone from batch b1
                path.unlink(missing_ok=True)
                continue
            part, pmeta = _load(path)
            r0, r1 = pmeta["rows"]
            for i, r in enumerate(reducers):
                if r.row_state:
                    mine = {k.split("/", 1)[1]: v for k, v in part.items() if k.split("/", 1)[0] == str(i)}
                    r.load_rows_state(r0, r1, mine, device=device)
        return b1, rows_done


def stored_rows(folder: str | os.PathLike, index: int) -> Iterator[dict[str, torch.Tensor]]:
    """The row state a row-keeping reducer committed to a store, chunk by chunk in row order, one chunk in
    memory at a time (``index``: the reducer's position in the capture, as in its ``provenance["reducers"]``).
    For reducers that hand their rows over to the store (``RunSums(spill=True)``)."""
    from safetensors import safe_open

    folder = Path(folder)
    chunks = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := _ROWS.match(f.name)))
    prefix = f"{index}/"
    for _, path in chunks:
        try:
            with safe_open(str(path), framework="pt") as f:
                yield {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        except (OSError, ValueError) as exc:
            raise LaminaError(f"cannot read the stored capture {path}: {exc}; delete {folder} and run again") \
                from None


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("lamina", "{}"))
        return load_file(str(path)), meta
    except (OSError, ValueError) as exc:
        raise LaminaError(f"cannot read the stored capture {path}: {exc}; delete {path.parent} and run again") \
            from None
