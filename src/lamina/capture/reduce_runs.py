"""Reducers for resampling and sampling: per-run sums for a block bootstrap of Pearson r, and single values.

:class:`RunSums` keeps, for each run of consecutive rows (a block bootstrap's unit), the sums a Pearson r
between one covariate and every feature needs; a resample of the runs is then a weighted sum of them
(:meth:`RunSums.resampled_r`), with no second pass over the rows. Its state grows with the number of runs, so
it is a row-state reducer: the store writes each chunk's runs once, and with ``spill=True`` they leave memory
once written (read back one chunk at a time with :func:`lamina.capture.store.stored_rows`): memory stays
bounded at any corpus size. :class:`KeepValues` keeps single values ``x[row, col]`` (e.g. a seeded sample of
pooled activations), exactly.
"""

from __future__ import annotations

import mmap
import sys
from typing import Iterable

import numpy as np
import torch

from ..errors import LaminaError
from .reduce import Reducer, _as_matrix, _OneThread, _row_chunks, _safe_div

__all__ = ["RunSums", "KeepValues"]

_PIECE_KEYS = ("meta", "sums")


def _long_lived(sums: torch.Tensor, meta: np.ndarray) -> dict[str, torch.Tensor]:
    """One batch's pieces: ``sums`` (P, 3, m) in float32 and ``meta`` (P, 5) [start, run, n, sum c, sum c^2],
    on the CPU in one anonymous memory map of their own rather than the malloc heap: blocks that outlive a
    batch, allocated between the forward pass's temporaries, fragment the heap (at gpt-neo-125M shape the
    capture's peak RSS grew ~90 MB per 1024-token batch with per-piece heap tensors)."""
    n, k = sums.numel(), meta.size
    if sums.device.type != "cpu" or not sys.platform.startswith("linux"):
        block = {"sums": sums.to(torch.float32), "meta": torch.as_tensor(meta, dtype=torch.float64)}
    else:
        head = -(-4 * n // 8) * 8  # float32 sums, then float64 meta on an 8-byte boundary
        buf = mmap.mmap(-1, head + 8 * k)
        block = {"sums": torch.frombuffer(buf, dtype=torch.float32, count=n).view(sums.shape).copy_(sums),
                 "meta": torch.frombuffer(buf, dtype=torch.float64, count=k, offset=head).view(meta.shape)}
        block["meta"].copy_(torch.from_numpy(meta.astype(np.float64)))
    return block


class RunSums(Reducer):
    """Per run of consecutive rows: the count, ``sum c``, ``sum c^2`` and per feature ``sum y``, ``sum y^2``,
    ``sum c y`` (``y = x - shift``, ``c`` centred on the covariate's mean), for a block bootstrap of r.

    A run met by two batches is kept as two pieces (summed when resampled); the pieces of one batch are kept
    as one block. The per-feature sums are accumulated in float64 within a batch and kept in float32 (half the
    bytes of the largest state of the token-length study; the resampled r moves by ~1e-7).

    Args:
        covariate: (n_rows,) one value per captured row.
        runs: (n_rows,) run label 0..K-1 per row, non-decreasing (runs are consecutive rows).
        spill: hand each chunk's runs to the store and drop them from memory (with ``store=True`` only).
    """

    row_state = True

    def __init__(self, covariate, runs, *, spill: bool = False):
        self._settings = {"covariate": covariate, "runs": runs, "spill": bool(spill)}
        c = np.asarray(covariate, dtype=np.float64)
        g = np.asarray(runs)
        if c.ndim != 1 or not np.isfinite(c).all():
            raise LaminaError("covariate must be a finite 1-D array, one value per captured row")
        if g.shape != c.shape or not np.issubdtype(g.dtype, np.integer) or (g.size and (g.min() < 0 or
                                                                                           np.any(np.diff(g) < 0))):
            raise LaminaError("runs must be non-decreasing integer labels 0..K-1, one per captured row")
        self._c = c - (c.mean() if c.size else 0.0)
        self._runs = g.astype(np.int64)
        self.n_runs = int(g.max(initial=-1)) + 1
        self.shift: torch.Tensor | None = None
        self._pieces: list[dict[str, torch.Tensor]] = []
        self._buffer: torch.Tensor | None = None

    def bind(self, n_rows, device):
        if n_rows is not None and self._c.size != n_rows:
            raise LaminaError(f"covariate has {self._c.size} rows but the capture selects {n_rows}; give one per "
                              "captured row")

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        n = x.shape[0]
        if n == 0:
            return
        if self.shift is None:
            self.shift = x.mean(0, dtype=torch.float64)
        labels = self._runs[rows.start:rows.start + n]
        cuts = np.flatnonzero(np.diff(labels)) + 1
        bounds = np.concatenate([[0], cuts, [n]])
        c_all = torch.as_tensor(self._c[rows.start:rows.start + n])
        width, starts, stops = x.shape[1], bounds[:-1].tolist(), bounds[1:].tolist()
        sums = self._scratch((len(starts), 3, width), x.device)
        with _OneThread(x.device):
            for p, (i, j) in enumerate(zip(starts, stops)):
                for a, b in _row_chunks(x[i:j]):
                    y = x[i + a:i + b].to(torch.float64) - self.shift
                    sums[p, 0] += y.sum(0)
                    sums[p, 2] += c_all[i + a:i + b].to(x.device) @ y
                    sums[p, 1] += y.square_().sum(0)
        c = c_all.numpy()
        meta = np.stack([rows.start + bounds[:-1], labels[bounds[:-1]], np.diff(bounds),
                         np.add.reduceat(c, bounds[:-1]), np.add.reduceat(c * c, bounds[:-1])], 1)
        self._pieces.append(_long_lived(sums, meta))

    def _scratch(self, shape, device) -> torch.Tensor:
        """A zeroed float64 buffer for one batch's pieces, reused from batch to batch (no fresh allocation
        between the forward pass's temporaries)."""
        need = int(np.prod(shape))
        if self._buffer is None or self._buffer.numel() < need or self._buffer.device != torch.device(device):
            self._buffer = torch.empty(need, dtype=torch.float64, device=device)
        return self._buffer[:need].view(shape).zero_()

    # -- state: per chunk of rows (the store), or whole ---------------------------------------------------------
    @staticmethod
    def _flat(blocks: list[dict]) -> dict[str, torch.Tensor]:
        """Blocks as tensors ``sums.<i>``, ``meta.<i>`` (no concatenated copy: one chunk's run sums are the
        largest state of the token-length study)."""
        return {f"{k}.{i}": b[k] for i, b in enumerate(blocks) for k in _PIECE_KEYS}

    @staticmethod
    def _blocks(state: dict) -> list[dict]:
        n = sum(1 for k in state if k.startswith("sums."))
        return [{k: state[f"{k}.{i}"] for k in _PIECE_KEYS} for i in range(n)]

    def rows_state(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """The pieces of rows [start, stop) (with ``spill``, handed over: they leave memory)."""
        mine = [p for p in self._pieces if start <= int(p["meta"][0, 0]) < stop]  # a block: one batch's pieces
        if self._settings["spill"]:
            self._pieces = [p for p in self._pieces if not start <= int(p["meta"][0, 0]) < stop]
        out = self._flat(mine)
        if out:
            out["shift"] = self.shift.to("cpu")
        return out

    def load_rows_state(self, start: int, stop: int, state: dict, device=None) -> None:
        if "shift" in state and self.shift is None:
            self.shift = state["shift"].to(device if device is not None else "cpu").clone()
        if not self._settings["spill"]:
            self._pieces.extend({k: v.clone() for k, v in b.items()} for b in self._blocks(state))

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = self._flat(self._pieces)
        if self.shift is not None:
            out["shift"] = self.shift
        return out

    def load_state_dict(self, state, device=None) -> None:
        self.shift = None if "shift" not in state else state["shift"].to(device or "cpu").clone()
        self._pieces = [{k: v.clone() for k, v in b.items()} for b in self._blocks(state)]

    def finite(self) -> bool:
        return all(bool(torch.isfinite(p["sums"]).all()) for p in self._pieces)

    def merge(self, other: "RunSums") -> "RunSums":
        """Add ``other``'s pieces (other rows), re-centred on this reducer's shift."""
        self._check_merge(other)
        if not other._pieces:
            return self
        if self.shift is None:
            self.shift = other.shift.clone()
        d = (other.shift.double() - self.shift.double().to(other.shift.device)).cpu()  # y_self = y_other + d
        for p in other._pieces:
            s = p["sums"].double()
            n, c = p["meta"][:, 2:3].double(), p["meta"][:, 3:4].double()
            moved = torch.stack([s[:, 0] + n * d, s[:, 1] + 2 * d * s[:, 0] + n * d * d, s[:, 2] + c * d], dim=1)
            self._pieces.append({**p, "sums": moved.to(torch.float32)})
        self._pieces.sort(key=lambda q: int(q["meta"][0, 0]))
        return self

    # -- the statistic --------------------------------------------------------------------------------------
    def correlations(self, weights) -> torch.Tensor:
        """(B, width) Pearson r between the covariate and every feature for each resample of the runs
        (``weights``: (B, K) counts per run); from the pieces in memory."""
        return self.resampled_r([self.state_dict()], weights)

    @staticmethod
    def resampled_r(chunks: Iterable[dict], weights) -> torch.Tensor:
        """(B, width) Pearson r per resample from pieces given chunk by chunk (each as :meth:`rows_state`
        returns them: one chunk in memory at a time), ``weights`` (B, K) counts per run. A constant feature
        gets r = 0."""
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        acc = scal = None
        for block in (b for chunk in chunks for b in RunSums._blocks(chunk)):
            meta = block["meta"].double()  # (P, 5): start, run, n, sum c, sum c^2
            wp = w[:, meta[:, 1].long()]  # (B, P)
            part = wp @ block["sums"].reshape(meta.shape[0], -1).double()
            sc = wp @ meta[:, 2:]
            acc, scal = (part, sc) if acc is None else (acc.add_(part), scal.add_(sc))
        if acc is None:
            raise LaminaError("no runs were reduced: the capture is empty or incomplete")
        acc = acc.view(w.shape[0], 3, -1)
        n, sc, scc = (scal[:, i:i + 1] for i in range(3))
        cov = acc[:, 2] - sc * acc[:, 0] / n
        vx = (scc - sc * sc / n).clamp_min(0)
        vy = (acc[:, 1] - acc[:, 0] ** 2 / n).clamp_min(0)
        return _safe_div(cov, torch.sqrt(vx * vy)).clamp_(-1, 1)


class KeepValues(Reducer):
    """The values ``x[row, col]`` at given (row, col) pairs of the captured rows, in the order given (float64:
    exact for float32, float16 and bfloat16 activations).

    Args:
        rows: (n,) captured row of each value.
        cols: (n,) feature (column) of each value.
    """

    def __init__(self, rows, cols):
        self._settings = {"rows": rows, "cols": cols}
        r, c = np.asarray(rows), np.asarray(cols)
        if r.shape != c.shape or r.ndim != 1 or not (np.issubdtype(r.dtype, np.integer) and
                                                     np.issubdtype(c.dtype, np.integer)):
            raise LaminaError("rows and cols must be 1-D integer arrays of the same length")
        self._order = np.argsort(r, kind="stable")
        self._sorted_rows = r[self._order].astype(np.int64)
        self._cols = c.astype(np.int64)
        self.values = torch.zeros(r.size, dtype=torch.float64)
        self.filled = torch.zeros(r.size, dtype=torch.bool)

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        lo, hi = np.searchsorted(self._sorted_rows, [rows.start, rows.start + x.shape[0]])
        if hi == lo:
            return
        which = self._order[lo:hi]
        r = torch.as_tensor(self._sorted_rows[lo:hi] - rows.start, device=x.device)
        c = torch.as_tensor(self._cols[which], device=x.device)
        if int(c.max()) >= x.shape[1]:
            raise LaminaError(f"cols reach {int(c.max())} but the site has width {x.shape[1]}")
        idx = torch.as_tensor(which)
        self.values[idx] = x[r, c].to("cpu", torch.float64)
        self.filled[idx] = True

    def result(self) -> torch.Tensor:
        """(n,) the values, in the order of the pairs."""
        if not bool(self.filled.all()):
            raise LaminaError("not every value was captured yet: the capture is incomplete")
        return self.values

    def merge(self, other: "KeepValues") -> "KeepValues":
        self._check_merge(other)
        if bool((self.filled & other.filled).any()):
            raise LaminaError("the two KeepValues reducers hold some of the same values; merge disjoint parts")
        self.values[other.filled] = other.values[other.filled]
        self.filled |= other.filled
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "filled": self.filled}

    def load_state_dict(self, state, device=None) -> None:
        if "values" in state:
            self.values, self.filled = state["values"].to("cpu").clone(), state["filled"].to("cpu").clone()
