"""Moment reducers: per-feature moments with per-row covariates (Pearson and partial r), and the covariance.

Sums are float64, or compensated float32 (:class:`_Sum`), accumulated about a shift (the first batch's mean);
see :mod:`lamina.capture.reduce` for precision and merging.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LaminaError
from .reduce import Reducer, _as_matrix, _OneThread, _resolve_precision, _row_chunks, _safe_div

__all__ = ["Moments", "Covariance"]


class _Sum:
    """A running sum of one shape: a float64 tensor, or a float32 (hi, lo) pair with TwoSum compensation."""

    def __init__(self, shape, device, precision: str):
        dtype = torch.float64 if precision == "float64" else torch.float32
        self.hi = torch.zeros(shape, dtype=dtype, device=device)
        self.lo = torch.zeros_like(self.hi) if precision == "float32c" else None

    def add_(self, inc: torch.Tensor, at: int | None = None) -> None:
        """Add ``inc`` to the whole sum, or to row ``at`` of its leading axis."""
        hi = self.hi if at is None else self.hi[at]
        if self.lo is None:
            hi.add_(inc)
            return
        inc = inc.to(torch.float32)
        s = hi + inc
        bp = s - hi
        (self.lo if at is None else self.lo[at]).add_((hi - (s - bp)).add_(inc - bp))
        hi.copy_(s)

    def add_exact_(self, inc64: torch.Tensor) -> None:
        """Add a float64 increment (merges); in float32c mode split into a float32 head and tail first."""
        if self.lo is None:
            self.hi.add_(inc64.to(self.hi.device, torch.float64))
            return
        head = inc64.to(torch.float32)
        tail = (inc64 - head.to(torch.float64)).to(torch.float32)
        self.add_(head.to(self.hi.device))
        self.add_(tail.to(self.hi.device))

    def value(self) -> torch.Tensor:
        """The sum in float64 (on the CPU if the device has no float64)."""
        if self.lo is None:
            return self.hi
        if self.hi.device.type == "mps":
            return self.hi.cpu().double() + self.lo.cpu().double()
        return self.hi.double() + self.lo.double()

    def state(self, name: str) -> dict[str, torch.Tensor]:
        return {name: self.hi} if self.lo is None else {f"{name}.hi": self.hi, f"{name}.lo": self.lo}

    @classmethod
    def from_state(cls, state: dict, name: str, device) -> "_Sum":
        out = cls.__new__(cls)
        if name in state:
            out.hi, out.lo = state[name].to(device).clone(), None
        else:
            out.hi, out.lo = state[f"{name}.hi"].to(device).clone(), state[f"{name}.lo"].to(device).clone()
        return out


class Moments(Reducer):
    """Per-feature mean and variance, and co-moments with per-row covariates (token length, log frequency...),
    in total or per group of rows.

    State (float64 or compensated float32): the count, ``sum y`` and ``sum y^2`` for ``y = x - shift``, and with
    covariates ``c`` (shifted too) ``sum c``, ``sum c c^T`` and ``sum c y^T``: enough for Pearson r and partial r
    between every covariate and every feature, with no rows kept. With ``groups`` every sum is kept per group
    (e.g. runs of consecutive tokens), so resamples of the groups (a block bootstrap) need no second pass:
    ``correlations(weights)``.

    Args:
        covariates: None, or an array of shape (n_rows,) or (n_rows, k): one value per captured row, in the
            capture's row order.
        groups: None, or (n_rows,) integer labels 0..G-1 per captured row (-1: the row is left out).
        precision: ``"auto"``, ``"float64"`` or ``"float32c"`` (see :mod:`lamina.capture.reduce`).
    """

    def __init__(self, covariates=None, *, groups=None, precision: str = "auto"):
        self._settings = {"covariates": covariates, "groups": groups, "precision": precision}
        cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
        if cov is not None and cov.ndim == 1:
            cov = cov[:, None]
        if cov is not None and (cov.ndim != 2 or not np.isfinite(cov).all()):
            raise LaminaError("covariates must be a finite array of shape (n_rows,) or (n_rows, k)")
        g = None if groups is None else np.asarray(groups)
        if g is not None and (g.ndim != 1 or not np.issubdtype(g.dtype, np.integer) or (g.size and g.min() < -1)):
            raise LaminaError("groups must be a 1-D integer array of labels 0..G-1 per captured row (-1: leave out)")
        self._cov_host, self._groups_host = cov, None if g is None else g.astype(np.int64)
        self.n_groups = 1 if g is None else int(g.max(initial=-1)) + 1
        self._cov = self._groups = self.precision = None
        self.counts = torch.zeros(self.n_groups, dtype=torch.int64)
        self.shift_x = self.shift_c = None
        self.s_x = self.s_xx = self.s_c = self.s_cc = self.s_xc = None

    @property
    def k(self) -> int:
        return 0 if self._cov_host is None else self._cov_host.shape[1]

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def bind(self, n_rows, device):
        self.precision = _resolve_precision(self._settings["precision"], torch.device(device))
        for name, host in (("covariates", self._cov_host), ("groups", self._groups_host)):
            if host is not None and n_rows is not None and host.shape[0] != n_rows:
                raise LaminaError(f"{name} have {host.shape[0]} rows but the capture selects {n_rows}; give one "
                                  "per captured row")
        if self._cov_host is not None:
            dtype = torch.float64 if self.precision == "float64" else torch.float32
            self._cov = torch.as_tensor(self._cov_host, device=device).to(dtype)
        if self._groups_host is not None:
            self._groups = torch.as_tensor(self._groups_host)  # on the CPU: it only steers the loop

    def _init_state(self, width: int, device, shift: torch.Tensor, c: torch.Tensor | None) -> None:
        p, G = self.precision, self.n_groups
        self.shift_x = shift
        self.s_x, self.s_xx = _Sum((G, width), device, p), _Sum((G, width), device, p)
        if c is not None:
            self.shift_c = c.mean(0)
            self.s_c, self.s_cc, self.s_xc = (_Sum((G, self.k), device, p), _Sum((G, self.k, self.k), device, p),
                                              _Sum((G, self.k, width), device, p))

    def _runs(self, rows: slice, n: int):
        """(group, first, stop) runs of equal labels among the batch's rows, in row order."""
        if self._groups is None:
            return [(0, 0, n)]
        g = self._groups[rows.start:rows.start + n]
        labels, counts = torch.unique_consecutive(g, return_counts=True)
        stops = torch.cumsum(counts, 0).tolist()
        return [(int(lab), stop - int(cnt), stop) for lab, cnt, stop in zip(labels, counts, stops) if lab >= 0]

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        if self.precision is None:
            self.bind(None, x.device)
        if x.shape[0] == 0:
            return
        dtype = torch.float64 if self.precision == "float64" else torch.float32
        c = None if self._cov is None else self._cov[rows.start:rows.start + x.shape[0]]
        if c is not None and c.shape[0] != x.shape[0]:
            raise LaminaError(f"rows {rows} do not match a batch of {x.shape[0]} rows")
        if self.s_x is None:
            self._init_state(x.shape[1], x.device, x.mean(0).to(dtype), c)
        with _OneThread(x.device):
            for group, first, stop in self._runs(rows, x.shape[0]):
                for i, j in _row_chunks(x[first:stop]):
                    i, j = i + first, j + first
                    y = x[i:j] - self.shift_x  # promoted to the accumulation dtype in the same pass
                    self.s_x.add_(y.sum(0), group)
                    if c is not None:
                        cc = c[i:j] - self.shift_c
                        self.s_c.add_(cc.sum(0), group)
                        self.s_cc.add_(cc.T @ cc, group)
                        self.s_xc.add_(cc.T @ y, group)
                    self.s_xx.add_(y.square_().sum(0), group)
                self.counts[group] += stop - first

    # -- results (float64) ---------------------------------------------------------------------------------
    def _totals(self, weights=None) -> dict[str, torch.Tensor]:
        """Sums over groups (or weighted by ``weights`` of shape (B, G): a leading resample axis)."""
        sums = {"n": self.counts.double(), "x": self.s_x.value(), "xx": self.s_xx.value()}
        if self.k:
            sums.update(c=self.s_c.value(), cc=self.s_cc.value(), xc=self.s_xc.value())
        if weights is None:
            return {k: v.sum(0) for k, v in sums.items()}
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 2 or w.shape[1] != self.n_groups:
            raise LaminaError(f"weights must have shape (B, {self.n_groups}) (one weight per group)")
        return {k: torch.tensordot(w.to(v.device), v, dims=([1], [0])) for k, v in sums.items()}

    def _m2x(self, t: dict) -> torch.Tensor:
        n = t["n"] if t["n"].ndim == 0 else t["n"][..., None]
        return (t["xx"] - t["x"] * t["x"] / n).clamp_min(0)

    def _need(self, n: int) -> None:
        if n < 2:
            raise LaminaError(f"moments need at least 2 rows (got {n})")

    def mean(self) -> torch.Tensor:
        """(width,) mean of every feature."""
        t = self._totals()
        return self.shift_x.to(t["x"].device, torch.float64) + t["x"] / t["n"]

    def variance(self, ddof: int = 1) -> torch.Tensor:
        """(width,) variance of every feature."""
        self._need(self.n)
        return self._m2x(self._totals()) / (self.n - ddof)

    def std(self, ddof: int = 1) -> torch.Tensor:
        return self.variance(ddof).sqrt()

    def pooled(self, ddof: int = 0) -> tuple[float, float]:
        """Mean and std of all values (every row and feature together)."""
        t = self._totals()
        k = self.shift_x.to(t["x"].device, torch.float64)
        total = t["n"] * t["x"].numel()
        s1 = (t["x"] + t["n"] * k).sum()
        s2 = (t["xx"] + 2 * k * t["x"] + t["n"] * k * k).sum()
        mean = s1 / total
        return float(mean), float(((s2 - s1 * mean).clamp_min(0) / (total - ddof)).sqrt())

    def covariate_correlations(self) -> torch.Tensor:
        """(k, k) Pearson correlations between the covariates."""
        t = self._totals()
        cov = t["cc"] - torch.outer(t["c"], t["c"]) / t["n"]
        d = cov.diagonal().clamp_min(0).sqrt()
        return _safe_div(cov, d[:, None] * d[None, :])

    def correlations(self, weights=None) -> torch.Tensor:
        """(k, width) Pearson r between each covariate and each feature (a constant feature gets r = 0); with
        ``weights`` of shape (B, G) (e.g. bootstrap counts of the groups), (B, k, width): one per resample."""
        if self.k == 0:
            raise LaminaError("this Moments reducer has no covariates; pass covariates=...")
        self._need(self.n)
        t = self._totals(weights)
        n = t["n"][..., None]
        cxy = t["xc"] - t["c"][..., :, None] * t["x"][..., None, :] / n[..., None]
        m2c = (t["cc"].diagonal(dim1=-2, dim2=-1) - t["c"] * t["c"] / n).clamp_min(0)
        return _safe_div(cxy, torch.sqrt(m2c[..., :, None] * self._m2x(t)[..., None, :])).clamp_(-1, 1)

    def partial_correlations(self) -> torch.Tensor:
        """(k, width) partial r between each covariate and each feature, controlling for the other covariates.

        For two covariates this is ``(r_xy - r_xz r_zy) / sqrt((1 - r_xz^2)(1 - r_zy^2))``; a zero denominator
        gives 0 (as :func:`lamina.stats.partial_from_correlations`).
        """
        r = self.correlations()
        k = self.k
        if k == 1:
            return r
        rcc = self.covariate_correlations()
        if k == 2:
            out = []
            for i, j in ((0, 1), (1, 0)):
                denom = torch.sqrt(((1 - rcc[i, j] ** 2) * (1 - r[j] ** 2)).clamp_min(0))
                out.append(_safe_div(r[i] - rcc[i, j] * r[j], denom))
            return torch.stack(out)
        full = torch.zeros((r.shape[1], k + 1, k + 1), dtype=torch.float64, device=r.device)
        full[:, :k, :k] = rcc
        full[:, :k, k] = r.T
        full[:, k, :k] = r.T
        full[:, k, k] = 1
        prec = torch.linalg.pinv(full, hermitian=True)
        diag = prec.diagonal(dim1=-2, dim2=-1)
        return torch.nan_to_num(_safe_div(-prec[:, :k, k], torch.sqrt(diag[:, :k] * diag[:, k:])).T)

    # -- merge and state ----------------------------------------------------------------------------------
    def merge(self, other: "Moments") -> "Moments":
        self._check_merge(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self.load_state_dict(other.state_dict(), device=other.s_x.hi.device)
            return self
        m = other.counts.double().to(self.s_x.hi.device)[:, None]  # (G, 1)
        d = other.shift_x.double().to(m.device) - self.shift_x.double()
        sxb = other.s_x.value().to(d.device)
        self.s_x.add_exact_(sxb + m * d)
        self.s_xx.add_exact_(other.s_xx.value().to(d.device) + 2 * d * sxb + m * d * d)
        if self.k:
            e = other.shift_c.double().to(d.device) - self.shift_c.double()
            scb = other.s_c.value().to(d.device)
            ein = torch.einsum
            self.s_c.add_exact_(scb + m * e)
            self.s_cc.add_exact_(other.s_cc.value().to(d.device) + ein("i,gj->gij", e, scb)
                                 + ein("gi,j->gij", scb, e) + m[..., None] * torch.outer(e, e))
            self.s_xc.add_exact_(other.s_xc.value().to(d.device) + ein("i,gw->giw", e, sxb)
                                 + ein("gi,w->giw", scb, d) + m[..., None] * torch.outer(e, d))
        self.counts += other.counts
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.s_x is None:
            return {"n": self.counts}
        out = {"n": self.counts, "shift_x": self.shift_x}
        for name in ("s_x", "s_xx"):
            out.update(getattr(self, name).state(name))
        if self.k:
            out["shift_c"] = self.shift_c
            for name in ("s_c", "s_cc", "s_xc"):
                out.update(getattr(self, name).state(name))
        return out

    def load_state_dict(self, state, device=None) -> None:
        device = torch.device(device) if device is not None else state["n"].device
        self.counts = state["n"].to("cpu").clone()
        if self.precision is None:
            self.bind(None, device)
        if self.n == 0:
            return
        self.shift_x = state["shift_x"].to(device).clone()
        self.s_x, self.s_xx = (_Sum.from_state(state, name, device) for name in ("s_x", "s_xx"))
        if self.k:
            self.shift_c = state["shift_c"].to(device).clone()
            self.s_c, self.s_cc, self.s_xc = (_Sum.from_state(state, name, device)
                                              for name in ("s_c", "s_cc", "s_xc"))


class Covariance(Reducer):
    """Running mean and width x width co-moment of the features: covariance, correlation and PCA spectrum.

    The co-moment is kept as its upper triangle (half the memory of the full matrix: at width 2560 in float64,
    26 MB instead of 52 MB per site). Each batch costs one (width x n) @ (n x width) product on the device.

    Args:
        precision: ``"auto"``, ``"float64"`` or ``"float32c"`` (see the module docstring).
    """

    _CACHE: dict = {}  # triangle indices and product buffers, per width and device

    def __init__(self, *, precision: str = "auto"):
        self._settings = {"precision": precision}
        self.precision, self.n, self.shift, self.s, self.s2 = None, 0, None, None, None

    def bind(self, n_rows, device):
        self.precision = _resolve_precision(self._settings["precision"], torch.device(device))

    @classmethod
    def _tri(cls, width: int, device) -> torch.Tensor:
        key = (width, str(device))
        if key not in cls._CACHE:
            i, j = torch.triu_indices(width, width, device=device)
            cls._CACHE[key] = i * width + j
        return cls._CACHE[key]

    def update(self, x, rows: slice | None = None) -> None:
        x = _as_matrix(x)
        if self.precision is None:
            self.bind(None, x.device)
        if x.shape[0] == 0:
            return
        dtype = torch.float64 if self.precision == "float64" else torch.float32
        width = x.shape[1]
        if self.s is None:
            self.shift = x.mean(0).to(dtype)
            self.s = _Sum(width, x.device, self.precision)
            self.s2 = _Sum(width * (width + 1) // 2, x.device, self.precision)
        gram = self._scratch(width, x.device, dtype)
        for k, (i, j) in enumerate(_row_chunks(x, minimum=256)):  # >= 256 rows: an efficient product
            y = x[i:j] - self.shift
            self.s.add_(y.sum(0))
            if k == 0:
                torch.mm(y.T, y, out=gram)
            else:
                gram.addmm_(y.T, y)
        self.s2.add_(gram.view(-1)[self._tri(width, x.device)])
        self.n += x.shape[0]

    @classmethod
    def _scratch(cls, width: int, device, dtype) -> torch.Tensor:
        """One width x width product buffer per width, device and dtype, shared by every Covariance (they
        update one after another) and kept between batches: no fresh 50 MB allocation per site and batch."""
        key = ("gram", width, str(device), dtype)
        if key not in cls._CACHE:
            cls._CACHE[key] = torch.empty((width, width), dtype=dtype, device=device)
        return cls._CACHE[key]

    def _m2(self) -> torch.Tensor:
        """The centred co-moment sum (x - mean)(x - mean)^T, full (width, width) float64."""
        if self.n < 2:
            raise LaminaError(f"a covariance needs at least 2 rows (got {self.n})")
        s = self.s.value()
        width = s.numel()
        full = torch.empty(width * width, dtype=torch.float64, device=s.device)
        full[self._tri(width, s.device)] = self.s2.value()
        m = full.view(width, width)
        step = 256
        for i in range(0, width, step):  # mirror the upper triangle block by block: no full-size temporaries
            j = min(width, i + step)
            m[i:j, :i] = m[:i, i:j].T
            block = m[i:j, i:j]
            block.copy_(block.triu() + block.triu(1).T)
        return m.addr_(s, s, alpha=-1.0 / self.n)

    def mean(self) -> torch.Tensor:
        return self.shift.double().to(self.s.value().device) + self.s.value() / self.n

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """(width, width) covariance (``np.cov(X, rowvar=False)`` for ddof=1)."""
        return self._m2() / (self.n - ddof)

    def correlation(self) -> torch.Tensor:
        """(width, width) Pearson correlation (a constant feature correlates 0 with everything)."""
        m2 = self._m2()
        d = m2.diagonal().clamp_min(0).sqrt()
        return _safe_div(m2, torch.outer(d, d)).clamp_(-1, 1)

    def spectrum(self) -> torch.Tensor:
        """Explained-variance ratios of PCA, largest first, length min(n, width) (as ``pca_spectrum``)."""
        eig = torch.linalg.eigvalsh(self._m2()).flip(0).clamp_min(0)[:min(self.n, self.s.value().numel())]
        total = eig.sum()
        return eig / total if total > 0 else torch.zeros_like(eig)

    def merge(self, other: "Covariance") -> "Covariance":
        self._check_merge(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self.load_state_dict(other.state_dict(), device=other.s.hi.device)
            return self
        m = other.n
        d = other.shift.double().to(self.s.hi.device) - self.shift.double()
        sb = other.s.value().to(d.device)
        tri = self._tri(d.numel(), d.device)
        cross = (torch.outer(d, sb) + torch.outer(sb, d) + m * torch.outer(d, d)).view(-1)[tri]
        self.s.add_exact_(sb + m * d)
        self.s2.add_exact_(other.s2.value().to(d.device) + cross)
        self.n += m
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.s is None:
            return {"n": torch.tensor(0, dtype=torch.int64)}
        return {"n": torch.tensor(self.n, dtype=torch.int64), "shift": self.shift, **self.s.state("s"),
                **self.s2.state("s2")}

    def load_state_dict(self, state, device=None) -> None:
        device = torch.device(device) if device is not None else state["n"].device
        self.n = int(state["n"])
        if self.precision is None:
            self.bind(None, device)
        if self.n:
            self.shift = state["shift"].to(device).clone()
            self.s, self.s2 = _Sum.from_state(state, "s", device), _Sum.from_state(state, "s2", device)
