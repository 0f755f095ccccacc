"""Captured activations: one (n_rows, width) tensor per site plus a description of every row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_dir, json_dumps
from ..errors import LaminaError
from .sites import parse_site

__all__ = ["Rows", "Activations"]

_FORMAT = 1


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

    def save(self, directory: str | Path) -> Path:
        """Write ``activations.safetensors`` + ``activations.json`` into ``directory`` atomically."""
        directory = Path(directory)
        tensors = {f"site/{k}": v.contiguous() for k, v in self._tensors.items()}
        tensors["rows/text_index"] = torch.from_numpy(np.ascontiguousarray(self.rows.text_index, np.int64))
        tensors["rows/position"] = torch.from_numpy(np.ascontiguousarray(self.rows.position, np.int64))
        tensors["rows/token_id"] = torch.from_numpy(np.ascontiguousarray(self.rows.token_id, np.int64))
        meta = {"format": _FORMAT, "sites": self.sites, "tokens": list(self.rows.token),
                "provenance": self.provenance}
        with atomic_dir(directory) as tmp:
            save_file(tensors, str(tmp / "activations.safetensors"))
            (tmp / "activations.json").write_text(json_dumps(meta), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Activations":
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "activations.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "activations.safetensors"))
        except (OSError, ValueError) as exc:
            raise LaminaError(f"cannot read saved activations in {directory}: {exc}") from None
        rows = Rows(
            text_index=tensors["rows/text_index"].numpy(),
            position=tensors["rows/position"].numpy(),
            token_id=tensors["rows/token_id"].numpy(),
            token=tuple(meta["tokens"]),
        )
        sites = {name: tensors[f"site/{name}"] for name in meta["sites"]}
        return cls(sites, rows, meta["provenance"])

    def __repr__(self) -> str:
        return f"Activations({len(self)} rows, {len(self._tensors)} sites)"
