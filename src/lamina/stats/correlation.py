"""Correlations with p-values, many-column correlations, and the tests the studies report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ..errors import LaminaError
from .mi import _as_real

__all__ = [
    "CorrelationResult",
    "correlate",
    "correlate_columns",
    "partial_correlate_columns",
    "partial_from_correlations",
    "fisher_z_compare",
    "fisher_z_variance",
    "independent_ttest",
    "correct_pvalues",
]

_METHODS = ("pearson", "spearman", "kendall")


@dataclass(frozen=True)
class CorrelationResult:
    """A correlation coefficient with its two-sided p-value and sample size."""

    r: float
    p: float
    n: int
    method: str


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = _as_real(x, "x").ravel()
    y = _as_real(y, "y").ravel()
    if x.shape != y.shape:
        raise LaminaError(f"x and y must have the same length (got {x.size} and {y.size})")
    if x.size < 3:
        raise LaminaError(f"a correlation needs at least 3 pairs (got {x.size})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise LaminaError("x or y contains NaN or infinite values; remove them first")
    return x, y


def correlate(x, y, method: str = "pearson") -> CorrelationResult:
    """Pearson r, Spearman rho or Kendall tau-b between two vectors (scipy.stats), with a two-sided p.

    Kendall's tau-b is the right choice when one variable is ordinal with ties (e.g. token distance).
    A constant input gives r = 0 and p = 1 instead of NaN.
    """
    if method not in _METHODS:
        raise LaminaError(f"method={method!r} is not valid; use one of {', '.join(_METHODS)}")
    x, y = _pair(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return CorrelationResult(0.0, 1.0, x.size, method)
    if method == "pearson":
        res = sps.pearsonr(x, y)
    elif method == "spearman":
        res = sps.spearmanr(x, y)
    else:
        res = sps.kendalltau(x, y, variant="b")
    return CorrelationResult(float(res.statistic), float(res.pvalue), x.size, method)


def _zscore_cols(A: np.ndarray, axis: int) -> np.ndarray:
    mean = A.mean(axis=axis, keepdims=True)
    std = A.std(axis=axis, ddof=1, keepdims=True)
    return (A - mean) / np.where(std > 0, std, np.inf)  # a constant column correlates 0


def correlate_columns(x, Y, *, return_p: bool = False):
    """Pearson r between one vector (or each of k vectors) and every column of ``Y``, vectorised.

    ``r_j = sum_i z(x)_i z(Y[:, j])_i / (n - 1)`` with ddof=1 z-scores (equal to ``np.corrcoef``). Computed
    as ``z(x) @ (Y - mean) / ((n - 1) std)`` with one centred copy of ``Y``: several vectors share it.

    Args:
        x: shape (n,), or (k, n) for k vectors at once.
        Y: shape (..., n, m): e.g. (n_layers, n_tokens, n_neurons).
        return_p: also return two-sided p-values (t distribution with n - 2 degrees of freedom).

    Returns:
        r of shape (..., m), or (k, ..., m) for a 2-D ``x`` (and p of the same shape). Constant columns give
        r = 0.
    """
    x = _as_real(x, "x")
    if x.ndim not in (1, 2):
        raise LaminaError(f"x must have shape (n,) or (k, n); got {x.shape}")
    Y = _as_real(Y, "Y")
    n = x.shape[-1]
    if Y.ndim < 2 or Y.shape[-2] != n:
        raise LaminaError(f"Y must have shape (..., {n}, m); got {Y.shape}")
    zx = _zscore_cols(x, -1)
    centred = Y - Y.mean(axis=-2, keepdims=True)
    std = np.sqrt(np.einsum("...ij,...ij->...j", centred, centred) / (n - 1))
    scale = np.where(std > 0, std, np.inf) * (n - 1)  # a constant column correlates 0
    if x.ndim == 1:
        r = (zx @ centred) / scale
    else:  # (k, n) @ (..., n, m) -> (..., k, m) -> (k, ..., m)
        r = np.moveaxis(zx @ centred, -2, 0) / scale
    r = np.clip(r, -1.0, 1.0)
    if not return_p:
        return r
    with np.errstate(divide="ignore"):
        t = r * np.sqrt((n - 2) / np.maximum(1e-300, 1 - r**2))
    p = 2 * sps.t.sf(np.abs(t), n - 2)
    return r, p


def partial_correlate_columns(x, z, Y) -> np.ndarray:
    """Partial Pearson correlation of ``x`` with every column of ``Y`` controlling for ``z``.

    ``r_xy.z = (r_xy - r_xz r_zy) / sqrt((1 - r_xz^2)(1 - r_zy^2))``; shapes as in :func:`correlate_columns`.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    z = np.asarray(z, dtype=np.float64).ravel()
    r_xz = float(np.corrcoef(x, z)[0, 1]) if np.ptp(x) and np.ptp(z) else 0.0
    return partial_from_correlations(correlate_columns(x, Y), correlate_columns(z, Y), r_xz)


def partial_from_correlations(r_xy, r_zy, r_xz) -> np.ndarray:
    """The first-order partial correlation from the three pairwise correlations (any broadcastable shapes).

    Where ``z`` explains ``x`` or ``y`` completely (a zero denominator) the result is 0.
    """
    r_xy = np.asarray(r_xy, dtype=np.float64)
    r_zy = np.asarray(r_zy, dtype=np.float64)
    denom = np.sqrt(np.maximum(0.0, (1 - np.square(r_xz)) * (1 - np.square(r_zy))))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (r_xy - r_xz * r_zy) / np.where(denom > 0, denom, 1.0), 0.0)


#: Variance of atanh(r) for n observations: (numerator, n offset) of ``numerator / (n - offset)``. Pearson:
#: Fisher (1921); Spearman and Kendall: Fieller, Hartley & Pearson (1957), Biometrika 44, 470-481.
FISHER_Z_VARIANCE = {"pearson": (1.0, 3), "spearman": (1.06, 3), "kendall": (0.437, 4)}


def fisher_z_variance(n, method: str = "pearson") -> float:
    """Sampling variance of ``atanh`` of a correlation from ``n`` observations (see ``FISHER_Z_VARIANCE``)."""
    if method not in FISHER_Z_VARIANCE:
        raise LaminaError(f"method={method!r} is not valid; use one of {', '.join(FISHER_Z_VARIANCE)}")
    num, offset = FISHER_Z_VARIANCE[method]
    if n <= offset:
        raise LaminaError(f"the Fisher z test of a {method} correlation needs more than {offset} observations "
                          f"(got {n})")
    return num / (n - offset)


def fisher_z_compare(r1, n1, r2, n2, *, method: str = "pearson") -> tuple[float, float]:
    """Compare two independent correlations with Fisher's z: returns (z, two-sided p).

    ``z = (atanh r1 - atanh r2) / sqrt(v(n1) + v(n2))`` with ``v(n) = 1/(n - 3)`` for Pearson r,
    ``1.06/(n - 3)`` for Spearman rho and ``0.437/(n - 4)`` for Kendall tau (Fieller, Hartley & Pearson 1957).
    """
    var = fisher_z_variance(n1, method) + fisher_z_variance(n2, method)
    clip = 1 - 1e-15
    z1 = np.arctanh(np.clip(r1, -clip, clip))
    z2 = np.arctanh(np.clip(r2, -clip, clip))
    z = (z1 - z2) / np.sqrt(var)
    return float(z), float(2 * sps.norm.sf(abs(z)))


def independent_ttest(a, b, *, equal_var: bool = True) -> tuple[float, float]:
    """Independent two-sample t-test (scipy.stats.ttest_ind): returns (t, two-sided p)."""
    a = _as_real(a, "a").ravel()
    b = _as_real(b, "b").ravel()
    if a.size < 2 or b.size < 2:
        raise LaminaError("a t-test needs at least 2 values per group")
    if np.ptp(np.concatenate([a, b])) == 0:
        return 0.0, 1.0
    res = sps.ttest_ind(a, b, equal_var=equal_var)
    return float(res.statistic), float(res.pvalue)


def correct_pvalues(p, method: str = "fdr_bh", alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-comparison correction.

    Args:
        p: p-values of any shape.
        method: ``"fdr_bh"`` (Benjamini-Hochberg, ``scipy.stats.false_discovery_control``) or
            ``"bonferroni"``.
        alpha: family-wise / false-discovery level.

    Returns:
        (reject, adjusted p), both of p's shape.
    """
    p = np.asarray(p, dtype=np.float64)
    if method == "fdr_bh":
        adjusted = sps.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
    elif method == "bonferroni":
        adjusted = np.minimum(1.0, p * p.size)
    else:
        raise LaminaError(f"method={method!r} is not valid; use 'fdr_bh' or 'bonferroni'")
    return adjusted <= alpha, adjusted
