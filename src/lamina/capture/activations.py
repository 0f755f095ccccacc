"""Captured activations: one (n_rows, width) tensor per site plus a description of every row."""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._io import _json_default, atomic_dir, default_file_mode, json_dumps
from ..errors import LaminaError
from .sites import parse_site

__all__ = ["Rows", "Activations", "DamagedActivations"]

# Format 2 adds checksums: xxh3-128 (https://xxhash.com) of the whole safetensors file and of the JSON
# metadata. Every byte is hashed (a sampled hash would miss a flipped byte between samples); xxh3 runs at
# ~18 GB/s here, so verifying adds a few percent to loading a GB entry (blake2b: ~0.5 GB/s, sha256: ~1.2).
# Format 1 (no checksum) is still read from user folders; the cache recomputes such entries.
_FORMAT = 2
_ALGORITHM = "xxh3_128"
_META, _WEIGHTS = "activations.json", "activations.safetensors"


class DamagedActivations(LaminaError):
    """Saved activations that fail a check: truncated, altered (checksum), incomplete or not lamina's."""

    def __init__(self, directory, reason: str):
        self.directory, self.reason = Path(directory), reason
        super().__init__(f"saved activations in {directory} are damaged: {reason}; capture them again")


def _digest(data) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def _meta_digest(meta: dict) -> str:
    """Digest of the metadata in a canonical compact JSON form (the C encoder: fast for long token lists)."""
    text = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return _digest(text.encode("utf-8"))


def _checksum_fd(fd: int) -> dict:
    """{"algorithm", "bytes", "digest"} of the whole file open at ``fd``.

    Hashed through a read-only memory map: ~10 GB/s from the page cache here, 3x faster than reading
    into a buffer first (the copy costs more than the hash).
    """
    import mmap

    size = os.fstat(fd).st_size
    if size == 0:
        return {"algorithm": _ALGORITHM, "bytes": 0, "digest": _digest(b"")}
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ) as view:
        return {"algorithm": _ALGORITHM, "bytes": size, "digest": _digest(view)}


def _reason(exc: Exception) -> str:
    """A one-line cause of a failed write (safetensors wraps the OSError in its own error's text)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    found = re.search(r"I/O error: (.+?) \(os error \d+\)", text)
    return found.group(1) if found else text


def _still_there(directory: Path, folder_fd: int) -> bool:
    """Whether ``directory`` still names the folder open at ``folder_fd`` (not removed or replaced)."""
    try:
        a, b = os.stat(directory), os.fstat(folder_fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _legacy_files(folder: Path) -> set[str] | None:
    """The files of a capture folder saved before manifests existed (format 1), else None."""
    try:
        if set(os.listdir(folder)) >= {_META, _WEIGHTS}:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
            if isinstance(meta, dict) and meta.get("format") == 1 and "sites" in meta and "provenance" in meta:
                return {_META, _WEIGHTS}
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class Rows:
    """What each captured row is. All arrays have shape (n_rows,); rows are ordered by text then position.

    Attributes:
        text_index: index of the row's text in the capture's list of texts.
        position: token position within that text.
        token_id: the token id.
        token: the token as text (``tokenizer.decode([id])``, so GPT-2's " coffee" keeps its space).
    """

    text_index: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    token: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.position)

    def for_text(self, text_index: int) -> np.ndarray:
        """Row numbers belonging to one text."""
        return np.flatnonzero(self.text_index == text_index)

    def to_records(self) -> list[dict]:
        return [
            {"text_index": int(t), "position": int(p), "token_id": int(i), "token": s}
            for t, p, i, s in zip(self.text_index, self.position, self.token_id, self.token)
        ]


class Activations:
    """Activations captured at named sites.

    ``acts[site]`` is a tensor of shape (n_rows, width); ``acts.rows`` describes the rows;
    ``acts.stack("hook_resid_post")`` gives (n_layers, n_rows, width) over the captured layers.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], rows: Rows, provenance: dict):
        self._tensors = dict(tensors)
        self.rows = rows
        self.provenance = dict(provenance)

    @property
    def sites(self) -> list[str]:
        return list(self._tensors)

    def __getitem__(self, site: str) -> torch.Tensor:
        try:
            return self._tensors[site]
        except KeyError:
            raise LaminaError(f"site {site!r} was not captured; captured: {', '.join(self._tensors)}") from None

    def __contains__(self, site: str) -> bool:
        return site in self._tensors

    def __len__(self) -> int:
        return len(self.rows)

    def layers(self, kind: str) -> list[int]:
        """Block indices captured for a site kind (``"hook_resid_post"``, ``"attn.hook_q"``...)."""
        return sorted(layer for layer, k in map(parse_site, self._tensors) if layer is not None and k == kind)

    def stack(self, kind: str) -> torch.Tensor:
        """Tensor of shape (n_layers, n_rows, width) over every captured block of one site kind."""
        layers = self.layers(kind)
        if not layers:
            raise LaminaError(f"no site of kind {kind!r} was captured; captured: {', '.join(self._tensors)}")
        return torch.stack([self._tensors[f"blocks.{layer}.{kind}"] for layer in layers])

    def residual_stream(self) -> torch.Tensor:
        """The L+1 hidden states per row: resid_pre of every block, then the last block's resid_post.

        Returns:
            Tensor of shape (n_layers + 1, n_rows, d_model). Needs ``blocks.*.hook_resid_pre`` and the last
            block's ``hook_resid_post`` to have been captured.
        """
        pre = self.layers("hook_resid_pre")
        post = self.layers("hook_resid_post")
        if not pre or pre != list(range(len(pre))) or (len(pre) - 1) not in post:
            raise LaminaError("the residual stream needs blocks.*.hook_resid_pre and the last block's "
                              "hook_resid_post; capture them with sites=residual_sites(model)")
        last = len(pre) - 1
        return torch.stack([self._tensors[f"blocks.{i}.hook_resid_pre"] for i in pre]
                           + [self._tensors[f"blocks.{last}.hook_resid_post"]])

    def numpy(self, site: str, dtype=np.float64) -> np.ndarray:
        """One site as a numpy array (float64 by default, for the statistics)."""
        return self[site].to(torch.float64 if dtype == np.float64 else torch.float32).numpy().astype(dtype)

    def save(self, directory: str | Path, *, exists: str = "replace") -> Path:
        """Write ``activations.safetensors`` + ``activations.json`` (with checksums) into ``directory``.

        The folder is written beside ``directory`` and swapped in when complete (:func:`lamina._io.atomic_dir`):
        with ``exists="replace"`` (default) an existing capture folder is replaced and files you added to it
        are kept; a folder lamina did not create is refused. ``exists="keep"`` (the cache) keeps an existing
        ``directory`` as it is.
        """
        directory = Path(directory)
        tensors = {f"site/{k}": v.contiguous() for k, v in self._tensors.items()}
        tensors["rows/text_index"] = torch.from_numpy(np.ascontiguousarray(self.rows.text_index, np.int64))
        tensors["rows/position"] = torch.from_numpy(np.ascontiguousarray(self.rows.position, np.int64))
        tensors["rows/token_id"] = torch.from_numpy(np.ascontiguousarray(self.rows.token_id, np.int64))
        meta = {"format": _FORMAT, "sites": self.sites, "tokens": list(self.rows.token),
                "provenance": self.provenance}
        try:
            with atomic_dir(directory, exists=exists, legacy=_legacy_files) as tmp:
                weights = tmp / _WEIGHTS
                save_file(tensors, str(weights))
                os.chmod(weights, default_file_mode())  # safetensors writes through a 0600 temporary file
                with open(weights, "rb") as handle:
                    meta["checksum"] = {**_checksum_fd(handle.fileno()), "json": _meta_digest(meta)}
                (tmp / _META).write_text(json_dumps(meta), encoding="utf-8")
        except (OSError, SafetensorError) as exc:
            if exists == "keep":
                raise  # the cache decides (it warns and goes on)
            raise LaminaError(f"cannot write {directory}: {_reason(exc)}; free some space or choose another "
                              "folder") from None
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Activations":
        """Read what :meth:`save` wrote, verifying its checksums.

        Raises:
            LaminaError: no saved activations there, or they are damaged (:class:`DamagedActivations`).
        """
        try:
            return cls._load(Path(directory), require_checksum=False)
        except FileNotFoundError:
            raise LaminaError(f"no saved activations in {directory}: {_META} and {_WEIGHTS} are needed") from None
        except OSError as exc:
            raise LaminaError(f"cannot read saved activations in {directory}: {exc.strerror}") from None

    @classmethod
    def _load(cls, directory: Path, *, require_checksum: bool) -> "Activations":
        """:meth:`load` for the cache. Raises FileNotFoundError when ``directory`` vanished (or never was)
        while reading, :class:`DamagedActivations` when it is there but fails a check, OSError if unreadable.

        Both files are opened relative to one handle on the folder, so they belong to one entry even if it
        is replaced meanwhile, and the weights are read through their open handle (Linux), so an entry
        removed while we read it is still read whole.
        """
        try:
            folder_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except NotADirectoryError:
            raise DamagedActivations(directory, "is a file, not a folder") from None
        try:
            try:
                meta_fd = os.open(_META, os.O_RDONLY, dir_fd=folder_fd)
                weights_fd = os.open(_WEIGHTS, os.O_RDONLY, dir_fd=folder_fd)
            except FileNotFoundError as exc:
                if _still_there(directory, folder_fd):
                    raise DamagedActivations(directory, f"is incomplete: {exc.filename or 'a file'} is "
                                                        "missing") from None
                raise
            try:
                return cls._read(directory, meta_fd, weights_fd, require_checksum)
            except DamagedActivations:
                if not _still_there(directory, folder_fd):  # removed or replaced while we read: a miss
                    raise FileNotFoundError(errno.ENOENT, "removed while reading", str(directory)) from None
                raise
            finally:
                os.close(meta_fd)
                os.close(weights_fd)
        finally:
            os.close(folder_fd)

    @classmethod
    def _read(cls, directory: Path, meta_fd: int, weights_fd: int, require_checksum: bool) -> "Activations":
        with os.fdopen(os.dup(meta_fd), "rb") as handle:
            raw = handle.read()
        try:
            meta = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError
            raise DamagedActivations(directory, f"{_META} is not valid JSON") from None
        if not (isinstance(meta, dict) and isinstance(meta.get("sites"), list) and isinstance(meta.get("tokens"), list)
                and isinstance(meta.get("provenance"), dict) and "format" in meta):
            raise DamagedActivations(directory, f"{_META} is not lamina's activation format")
        checksum = meta.pop("checksum", None)
        if meta["format"] not in (1, _FORMAT):
            raise DamagedActivations(directory, f"has format {meta['format']!r}, which this lamina does not read")
        if checksum is None:
            if meta["format"] != 1 or require_checksum:
                raise DamagedActivations(directory, "has no checksum (written by an older lamina)")
        else:
            if not isinstance(checksum, dict) or checksum.get("algorithm") != _ALGORITHM:
                raise DamagedActivations(directory, f"has an unknown checksum {checksum!r:.60}")
            if checksum.get("json") != _meta_digest(meta):
                raise DamagedActivations(directory, f"{_META} fails its checksum")
            size = os.fstat(weights_fd).st_size
            if size != checksum.get("bytes"):
                raise DamagedActivations(directory, f"{_WEIGHTS} is truncated or extended ({size} bytes, "
                                                    f"{checksum.get('bytes')} written)")
            if _checksum_fd(weights_fd)["digest"] != checksum.get("digest"):
                raise DamagedActivations(directory, f"{_WEIGHTS} fails its checksum")
        by_fd = f"/proc/self/fd/{weights_fd}"
        try:
            tensors = load_file(by_fd if os.path.exists(by_fd) else str(directory / _WEIGHTS))
        except SafetensorError as exc:
            raise DamagedActivations(directory, f"{_WEIGHTS} cannot be read ({exc})") from None
        try:
            rows = Rows(
                text_index=tensors["rows/text_index"].numpy(),
                position=tensors["rows/position"].numpy(),
                token_id=tensors["rows/token_id"].numpy(),
                token=tuple(meta["tokens"]),
            )
            sites = {name: tensors[f"site/{name}"] for name in meta["sites"]}
        except KeyError as exc:
            raise DamagedActivations(directory, f"{_WEIGHTS} lacks {exc.args[0]}") from None
        if any(len(t) != len(rows) for t in [rows.text_index, rows.token_id, rows.token, *sites.values()]):
            raise DamagedActivations(directory, "its tensors and rows disagree in length")
        return cls(sites, rows, meta["provenance"])

    def __repr__(self) -> str:
        return f"Activations({len(self)} rows, {len(self._tensors)} sites)"
