"""Reducers with exact state: fixed-edge histograms, top-k rows per feature, kept rows and Gram matrices.

Counts, selected values and copied rows involve no rounding, so merging two of these reducers gives exactly
the state of one pass over both parts (see :mod:`lamina.capture.reduce` for the shared interface).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import LaminaError
from .reduce import Reducer, _as_matrix, _OneThread, _row_chunks, _safe_div

__all__ = ["Histogram", "TopK", "KeepRows", "Gram"]


def _group_labels(groups) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.ndim != 1 or not np.issubdtype(g.dtype, np.integer) or (g.size and g.min() < -1):
        raise LaminaError("groups must be a 1-D integer array of labels 0..G-1 per captured row (-1: leave out)")
    return g.astype(np.int64)


class Histogram(Reducer):
    """Counts of values in fixed bins, pooled over features (or per feature), optionally per group of rows.

    Bins follow ``np.histogram``: ``[e_i, e_{i+1})``, the last one closed; values below the first edge, above
    the last one and NaNs are counted apart (``below``, ``above``, ``nan``). Values are compared in float64.

    Args:
        edges: (B + 1,) increasing bin edges.
        groups: None, or (n_rows,) integer labels 0..G-1, one per captured row (-1: the row is not counted);
            the counts then have a leading group axis.
        per_feature: count each feature separately (counts of shape (..., width, B)) instead of pooling.
    """

    def __init__(self, edges, *, groups=None, per_feature: bool = False):
        self._settings = {"edges": edges, "groups": groups, "per_feature": per_feature}
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0) or not np.isfinite(e).all():
            raise LaminaError("edges must be a 1-D increasing finite array of at least 2 values")
        self._edges_host, self._groups_host = e, _group_labels(groups)
        self.n_groups = 1 if self._groups_host is None else int(self._groups_host.max(initial=-1)) + 1
        self._edges = self._groups = None
        self.slots = None  # (G, [width,] B + 3): below, B bins, above, nan

    @property
    def n_bins(self) -> int:
        return self._edges_host.size - 1

    def bind(self, n_rows, device):
        self._edges = torch.as_tensor(self._edges_host, device=device)
        if self._groups_host is not None:
            if n_rows is not None and self._groups_host.size != n_rows:
                raise LaminaError(f"groups have {self._groups_host.size} labels but the capture selects {n_rows} "
                                  "rows; give one label per captured row")
            self._groups = torch.as_tensor(self._groups_host, device=device)

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        if self._edges is None:
            self.bind(None, x.device)
        n, width = x.shape
        n_slots = self.n_bins + 3
        if self.slots is None:
            shape = (self.n_groups, width, n_slots) if self._settings["per_feature"] else (self.n_groups, n_slots)
            self.slots = torch.zeros(shape, dtype=torch.int64, device=x.device)
        if n == 0:
            return
        groups = torch.zeros(n, dtype=torch.int64, device=x.device) if self._groups is None else \
            self._groups[rows.start:rows.start + n]
        with _OneThread(x.device):
            for i, j in _row_chunks(x):
                v = x[i:j].to(torch.float64)
                slot = torch.bucketize(v, self._edges, right=True)  # 0: below, i: bin i-1, B + 1: above
                slot = torch.where(v == self._edges[-1], self.n_bins, slot)  # the last bin is closed
                slot = torch.where(torch.isnan(v), self.n_bins + 2, slot)
                g = groups[i:j]
                if self._settings["per_feature"]:
                    base = (g[:, None] * width + torch.arange(width, device=x.device)) * n_slots
                else:
                    base = (g * n_slots)[:, None]
                flat = (base + slot)[g >= 0].reshape(-1)
                if self._settings["per_feature"]:  # many slots: add in place rather than count them all
                    self.slots.view(-1).index_put_((flat,), torch.ones_like(flat), accumulate=True)
                else:
                    self.slots.view(-1).add_(torch.bincount(flat, minlength=self.slots.numel()))

    def _part(self, sl) -> torch.Tensor:
        out = self.slots[..., sl]
        return out[0] if self._groups_host is None else out

    def counts(self) -> torch.Tensor:
        """Counts per bin: (B,), (width, B), or with groups (G, B) / (G, width, B)."""
        return self._part(slice(1, self.n_bins + 1))

    def density(self) -> torch.Tensor:
        """Counts normalised like ``np.histogram(..., density=True)`` (each histogram integrates to 1)."""
        c = self.counts().double()
        widths = torch.as_tensor(np.diff(self._edges_host), device=c.device)
        total = c.sum(-1, keepdim=True)
        return _safe_div(c, total * widths)

    @property
    def below(self) -> torch.Tensor:
        return self._part(0)

    @property
    def above(self) -> torch.Tensor:
        return self._part(self.n_bins + 1)

    @property
    def nan(self) -> torch.Tensor:
        return self._part(self.n_bins + 2)

    def finite(self) -> bool:
        return self.slots is None or int(self.slots[..., self.n_bins + 2].sum()) == 0

    def merge(self, other: "Histogram") -> "Histogram":
        self._check_merge(other)
        if other.slots is not None:
            if self.slots is None:
                self.slots = other.slots.clone()
            else:
                self.slots.add_(other.slots.to(self.slots.device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.slots is None else {"slots": self.slots}

    def load_state_dict(self, state, device=None) -> None:
        if "slots" in state:
            self.slots = state["slots"].to(device if device is not None else state["slots"].device).clone()
            if self._edges is None:
                self.bind(None, self.slots.device)


class TopK(Reducer):
    """The k largest (or smallest) values of every feature and the rows they came from.

    Ties are broken by the lower row number, so the result does not depend on how the rows were batched.

    Args:
        k: values kept per feature.
        largest: keep the largest (True) or the smallest values.
    """

    def __init__(self, k: int, *, largest: bool = True):
        if k < 1:
            raise LaminaError(f"k must be >= 1 (got {k})")
        self._settings = {"k": int(k), "largest": bool(largest)}
        self.values = self.index = None  # (m <= k, width) float64 and int64

    def _fold(self, values: torch.Tensor, index: torch.Tensor) -> None:
        if self.values is not None:
            values = torch.cat([self.values, values.to(self.values.device)])
            index = torch.cat([self.index, index.to(self.index.device)])
        by_row = torch.sort(index, dim=0, stable=True).indices  # secondary key: the row number, ascending
        values, index = values.gather(0, by_row), index.gather(0, by_row)
        order = torch.sort(values, dim=0, descending=self._settings["largest"], stable=True).indices
        order = order[:self._settings["k"]]
        self.values, self.index = values.gather(0, order), index.gather(0, order)

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        if x.shape[0] == 0:
            return
        for i, j in _row_chunks(x, minimum=64):  # bounded temporaries: the sorts see k + chunk rows
            index = torch.arange(rows.start + i, rows.start + j, device=x.device)[:, None].expand(j - i, x.shape[1])
            self._fold(x[i:j].to(torch.float64), index)

    def merge(self, other: "TopK") -> "TopK":
        self._check_merge(other)
        if other.values is not None:
            self._fold(other.values, other.index)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.values is None else {"values": self.values, "index": self.index}

    def load_state_dict(self, state, device=None) -> None:
        if "values" in state:
            device = device if device is not None else state["values"].device
            self.values, self.index = state["values"].to(device).clone(), state["index"].to(device).clone()


class KeepRows(Reducer):
    """Keep the rows themselves (all of them, or the rows in ``where``), or a per-row transform of them.

    This is what a plain capture does; use it for the rows a study really needs (a block's activations for a
    histogram with data-dependent edges, the few selected tokens of an MI study, per-token norms).

    Args:
        where: None (every row), a boolean mask over the captured rows, or increasing row numbers.
        dtype: storage dtype (None: as captured; e.g. ``torch.float16`` halves the memory).
        device: where the kept rows live: ``"cpu"`` (host RAM, the default) or None (the model's device).
        transform: a module-level function ``f(x) -> (n, k)`` (or ``f(x1, x2, ...)`` for several sites) whose
            per-row output is kept instead of the rows.
    """

    row_state = True

    def __init__(self, *, where=None, dtype: torch.dtype | None = None, device: str | None = "cpu",
                 transform: Callable | None = None):
        self._settings = {"where": where, "dtype": dtype, "device": device, "transform": transform}
        self._where_host = None
        if where is not None:
            w = np.asarray(where)
            if w.dtype == bool:
                w = np.flatnonzero(w)
            if w.ndim != 1 or not np.issubdtype(w.dtype, np.integer) or np.any(np.diff(w) <= 0) or \
                    (w.size and w[0] < 0):
                raise LaminaError("where must be a boolean mask or increasing row numbers of the captured rows")
            self._where_host = w.astype(np.int64)
        self.n_rows = None if where is None or np.asarray(where).dtype != bool else len(where)
        self.buffer: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None

    @property
    def index(self) -> np.ndarray:
        """Row numbers (in the capture) of the kept rows."""
        return self._where_host if self._where_host is not None else np.arange(self.n_kept)

    @property
    def n_kept(self) -> int:
        if self._where_host is not None:
            return int(self._where_host.size)
        if self.n_rows is None:
            raise LaminaError("KeepRows needs the number of rows: bind(n_rows, device) first (capture does)")
        return self.n_rows

    def bind(self, n_rows, device):
        if self._where_host is not None and n_rows is not None and self._where_host.size and \
                self._where_host[-1] >= n_rows:
            raise LaminaError(f"where selects row {self._where_host[-1]} but the capture has {n_rows} rows")
        if self.n_rows is not None and n_rows is not None and self.n_rows != n_rows:
            raise LaminaError(f"where has {self.n_rows} entries but the capture selects {n_rows} rows")
        self.n_rows = n_rows if n_rows is not None else self.n_rows

    def _span(self, start: int, stop: int) -> tuple[int, int]:
        if self._where_host is None:
            return start, stop
        return (int(np.searchsorted(self._where_host, start)), int(np.searchsorted(self._where_host, stop)))

    def _allocate(self, width: int, dtype: torch.dtype, device) -> None:
        target = self._settings["device"]
        self.buffer = torch.zeros((self.n_kept, width), dtype=self._settings["dtype"] or dtype,
                                  device=device if target is None else target)
        self.filled = torch.zeros(self.n_kept, dtype=torch.bool)

    def update(self, x, rows: slice) -> None:
        parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        n = parts[0].shape[0]
        lo, hi = self._span(rows.start, rows.start + n)
        if hi == lo:
            return
        if self._where_host is not None and hi - lo != n:
            local = torch.as_tensor(self._where_host[lo:hi] - rows.start, device=parts[0].device)
            parts = tuple(p.index_select(0, local) for p in parts)
        fn = self._settings["transform"]
        sel = fn(*parts) if fn is not None else _as_matrix(parts if len(parts) > 1 else parts[0])
        if sel.ndim == 1:
            sel = sel[:, None]
        if self.buffer is None:
            self._allocate(sel.shape[1], sel.dtype, sel.device)
        self.buffer[lo:hi].copy_(sel, non_blocking=True)
        self.filled[lo:hi] = True

    def rows(self) -> torch.Tensor:
        """(n_kept, width) kept rows (or transformed values), in row order."""
        if self.buffer is None or not bool(self.filled.all()):
            raise LaminaError("not every row was kept yet: the capture is incomplete")
        return self.buffer

    def finite(self) -> bool:
        if self.buffer is None or not self.buffer.is_floating_point():
            return True
        return bool(torch.isfinite(self.buffer.sum(dtype=torch.float32))) or bool(torch.isfinite(self.buffer).all())

    # -- state: whole, or per range of rows (what the store writes per chunk) ------------------------------
    def rows_state(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """The kept rows among capture rows [start, stop)."""
        lo, hi = self._span(start, stop)
        return {} if self.buffer is None or hi == lo else {"rows": self.buffer[lo:hi]}

    def load_rows_state(self, start: int, stop: int, state: dict, device=None) -> None:
        if "rows" not in state:
            return
        lo, hi = self._span(start, stop)
        part = state["rows"]
        if self.buffer is None:
            self._allocate(part.shape[1], part.dtype, device if device is not None else part.device)
        self.buffer[lo:hi].copy_(part)
        self.filled[lo:hi] = True

    def merge(self, other: "KeepRows") -> "KeepRows":
        self._check_merge(other)
        if other.buffer is None:
            return self
        if self.buffer is None:
            self._allocate(other.buffer.shape[1], other.buffer.dtype, other.buffer.device)
        if bool((self.filled & other.filled).any()):
            raise LaminaError("the two KeepRows reducers hold some of the same rows; merge disjoint parts")
        mask = other.filled
        self.buffer[mask.to(self.buffer.device)] = other.buffer[mask.to(other.buffer.device)].to(self.buffer.device)
        self.filled |= mask
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.buffer is None else {"rows": self.buffer, "filled": self.filled}

    def load_state_dict(self, state, device=None) -> None:
        if "rows" in state:
            rows = state["rows"]
            self.buffer = rows.to(device if device is not None else rows.device).clone()
            self.filled = state["filled"].clone()


class Gram(KeepRows):
    """Similarity between items (rows) over their features: Gram, cosine and correlation matrices.

    Every pair of rows enters the result, so the state is the rows themselves (n_items x width, on the model's
    device by default); the matrices are computed there in float64 when asked. Meant for item sets (words,
    sentences), not corpora: use :class:`Covariance` for feature x feature statistics over many rows.
    """

    def __init__(self, *, where=None, dtype: torch.dtype | None = None, device: str | None = None,
                 transform: Callable | None = None):
        super().__init__(where=where, dtype=dtype, device=device, transform=transform)

    def gram(self) -> torch.Tensor:
        """(n, n) ``X X^T`` in float64."""
        x = self.rows().double()
        return x @ x.T

    def cosine(self) -> torch.Tensor:
        """(n, n) cosine similarity of the rows (as :func:`lamina.stats.cosine_similarity_matrix`)."""
        x = self.rows().double()
        norms = x.norm(dim=1, keepdim=True)
        unit = x / torch.where(norms > 0, norms, torch.ones_like(norms))
        return (unit @ unit.T).clamp_(-1, 1)

    def correlation(self) -> torch.Tensor:
        """(n, n) Pearson correlation of the rows over features (as :func:`lamina.stats.correlation_matrix`)."""
        x = self.rows().double()
        x = x - x.mean(dim=1, keepdim=True)
        norms = x.norm(dim=1, keepdim=True)
        unit = x / torch.where(norms > 0, norms, torch.ones_like(norms))
        return (unit @ unit.T).clamp_(-1, 1)
