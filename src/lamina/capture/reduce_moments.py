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

    def add_(self, inc: torch.Tensor) -> None:
        if self.lo is None:
            self.hi.add_(inc)
            return
        inc = inc.to(torch.float32)
        s = self.hi + inc
        bp = s - self.hi
        self.lo.add_((self.hi - (s - bp)).add_(inc - bp))
        self.hi = s

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
    """Per-feature mean and variance, and co-moments with per-row covariates (token length, log frequency...).

    State (float64 or compensated float32): the count, ``sum y``, ``sum y^2`` for ``y = x - shift``, and with
    covariates ``c`` (shifted too) ``sum c``, ``sum c c^T`` and ``sum c y^T``: enough for Pearson r and partial r
    between every covariate and every feature, with no rows kept.

    Args:
        covariates: None, or an array of shape (n_rows,) or (n_rows, k): one value per captured row, in the
            capture's row order.
        precision: ``"auto"``, ``"float64"`` or ``"float32c"`` (see the module docstring).
    """

    def __init__(self, covariates=None, *, precision: str = "auto"):
        self._settings = {"covariates": covariates, "precision": precision}
        cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
        if cov is not None and cov.ndim == 1:
            cov = cov[:, None]
        if cov is not None and (cov.ndim != 2 or not np.isfinite(cov).all()):
            raise LaminaError("covariates must be a finite array of shape (n_rows,) or (n_rows, k)")
        self._cov_host, self._cov, self.precision = cov, None, None
        self.n = 0
        self.shift_x = self.shift_c = None
        self.s_x = self.s_xx = self.s_c = self.s_cc = self.s_xc = None

    @property
    def k(self) -> int:
        return 0 if self._cov_host is None else self._cov_host.shape[1]

    def bind(self, n_rows, device):
        self.precision = _resolve_precision(self._settings["precision"], torch.device(device))
        if self._cov_host is not None:
            if n_rows is not None and self._cov_host.shape[0] != n_rows:
                raise LaminaError(f"covariates have {self._cov_host.shape[0]} rows but the capture selects "
                                  f"{n_rows}; give one value per captured row")
            dtype = torch.float64 if self.precision == "float64" else torch.float32
            self._cov = torch.as_tensor(self._cov_host, device=device).to(dtype)

    def _init_state(self, width: int, device, shift: torch.Tensor, c: torch.Tensor | None) -> None:
        p = self.precision
        self.shift_x = shift
        self.s_x, self.s_xx = _Sum(width, device, p), _Sum(width, device, p)
        if c is not None:
            self.shift_c = c.mean(0)
            self.s_c, self.s_cc, self.s_xc = (_Sum(self.k, device, p), _Sum((self.k, self.k), device, p),
                                              _Sum((self.k, width), device, p))

    def update(self, x, rows: slice) -> None:
        x = _as_matrix(x)
        if self.precision is None:
            self.bind(None, x.device)
        if x.shape[0] == 0:
            return
        dtype = torch.float64 if self.precision == "float64" else torch.float32
        c = None if self._cov is None else self._cov[rows]
        if c is not None and c.shape[0] != x.shape[0]:
            raise LaminaError(f"rows {rows} do not match a batch of {x.shape[0]} rows")
        if self.s_x is None:
            self._init_state(x.shape[1], x.device, x.mean(0, dtype=torch.float64).to(dtype), c)
        with _OneThread(x.device):
            for i, j in _row_chunks(x):
                y = x[i:j] - self.shift_x  # promoted to the accumulation dtype in the same pass
                self.s_x.add_(y.sum(0))
                if c is not None:
                    cc = c[i:j] - self.shift_c
                    self.s_c.add_(cc.sum(0))
                    self.s_cc.add_(cc.T @ cc)
                    self.s_xc.add_(cc.T @ y)
                self.s_xx.add_(y.square_().sum(0))
        self.n += x.shape[0]

    # -- results (float64) ---------------------------------------------------------------------------------
    def _centred(self):
        n = self.n
        if n < 2:
            raise LaminaError(f"moments need at least 2 rows (got {n})")
        sx = self.s_x.value()
        m2 = (self.s_xx.value() - sx * sx / n).clamp_min(0)
        return sx, m2

    def mean(self) -> torch.Tensor:
        """(width,) mean of every feature."""
        return self.shift_x.to(torch.float64).to(self.s_x.value().device) + self.s_x.value() / self.n

    def variance(self, ddof: int = 1) -> torch.Tensor:
        """(width,) variance of every feature."""
        return self._centred()[1] / (self.n - ddof)

    def std(self, ddof: int = 1) -> torch.Tensor:
        return self.variance(ddof).sqrt()

    def pooled(self, ddof: int = 0) -> tuple[float, float]:
        """Mean and std of all values (every row and feature together)."""
        k = self.shift_x.to(torch.float64).to(self.s_x.value().device)
        total = self.n * self.s_x.value().numel()
        s1 = (self.s_x.value() + self.n * k).sum()
        s2 = (self.s_xx.value() + 2 * k * self.s_x.value() + self.n * k * k).sum()
        mean = s1 / total
        return float(mean), float(((s2 - s1 * mean).clamp_min(0) / (total - ddof)).sqrt())

    def covariate_correlations(self) -> torch.Tensor:
        """(k, k) Pearson correlations between the covariates."""
        cov = self._covariate_m2()
        d = cov.diagonal().sqrt()
        return _safe_div(cov, d[:, None] * d[None, :])

    def _covariate_m2(self) -> torch.Tensor:
        sc = self.s_c.value()
        return self.s_cc.value() - torch.outer(sc, sc) / self.n

    def correlations(self) -> torch.Tensor:
        """(k, width) Pearson r between each covariate and each feature (a constant feature gets r = 0)."""
        if self.k == 0:
            raise LaminaError("this Moments reducer has no covariates; pass covariates=...")
        sx, m2x = self._centred()
        cxy = self.s_xc.value() - torch.outer(self.s_c.value(), sx) / self.n
        m2c = self._covariate_m2().diagonal().clamp_min(0)
        return _safe_div(cxy, torch.sqrt(m2c[:, None] * m2x[None, :])).clamp_(-1, 1)

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
        m = other.n
        d = other.shift_x.double().to(self.s_x.hi.device) - self.shift_x.double()
        sxb = other.s_x.value().to(d.device)
        self.s_x.add_exact_(sxb + m * d)
        self.s_xx.add_exact_(other.s_xx.value().to(d.device) + 2 * d * sxb + m * d * d)
        if self.k:
            e = other.shift_c.double().to(d.device) - self.shift_c.double()
            scb = other.s_c.value().to(d.device)
            self.s_c.add_exact_(scb + m * e)
            self.s_cc.add_exact_(other.s_cc.value().to(d.device) + torch.outer(e, scb) + torch.outer(scb, e)
                                 + m * torch.outer(e, e))
            self.s_xc.add_exact_(other.s_xc.value().to(d.device) + torch.outer(e, sxb) + torch.outer(scb, d)
                                 + m * torch.outer(e, d))
        self.n += m
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.s_x is None:
            return {"n": torch.tensor(0, dtype=torch.int64)}
        out = {"n": torch.tensor(self.n, dtype=torch.int64), "shift_x": self.shift_x}
        for name in ("s_x", "s_xx"):
            out.update(getattr(self, name).state(name))
        if self.k:
            out["shift_c"] = self.shift_c
            for name in ("s_c", "s_cc", "s_xc"):
                out.update(getattr(self, name).state(name))
        return out

    def load_state_dict(self, state, device=None) -> None:
        device = torch.device(device) if device is not None else state["n"].device
        self.n = int(state["n"])
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
            self.shift = x.mean(0, dtype=torch.float64).to(dtype)
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
