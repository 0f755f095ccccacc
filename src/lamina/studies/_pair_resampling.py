"""Bootstrap over ITEMS for statistics taken over all pairs of items (the MI studies' pair means and taus).

A statistic over the n(n-1)/2 pairs of n vectors (mean pairwise MI, mean covariance, Kendall's tau between
pairwise MI and token distance) does not rest on n(n-1)/2 independent observations: each vector enters n-1
pairs. Resampling the vectors with replacement and keeping the pairs of two DIFFERENT draws (a U-statistic
bootstrap) gives confidence intervals that respect this; resampling the pairs would not.

Every function takes the resampled item indices ``idx`` of shape (B, n) from :func:`bootstrap_indices`, so
several statistics (layers, sites, models run on the same items) share one set of resamples and their
differences are paired.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import LaminaError

__all__ = ["bootstrap_indices", "pair_means", "pair_kendall", "percentile_ci"]


def bootstrap_indices(n: int, n_resamples: int, seed) -> np.ndarray:
    """Seeded item resamples with replacement, shape (n_resamples, n)."""
    if n_resamples < 2:
        raise LaminaError(f"n_bootstrap must be at least 2 (got {n_resamples})")
    return np.random.default_rng(seed).integers(0, n, (int(n_resamples), int(n)))


def pair_means(M: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of ``M[a, b]`` over the pairs of resampled items with ``a != b``, for every resample.

    With ``w`` the draw counts of a resample, the ordered pairs of two different draws sum to
    ``w @ M @ w - sum_k w_k^2 M_kk`` over ``n^2 - sum_k w_k^2`` pairs; for ``idx = arange(n)`` this is the plain
    mean of the upper triangle.

    Args:
        M: (..., n, n) symmetric matrices (e.g. (n_layers, n, n) pairwise MI).
        idx: (B, n) resampled item indices.

    Returns:
        (..., B) means; NaN for a resample that drew a single distinct item.
    """
    M = np.asarray(M, dtype=np.float64)
    n = M.shape[-1]
    w = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)  # (B, n)
    diag = np.diagonal(M, axis1=-2, axis2=-1)  # (..., n)
    quad = np.einsum("...bn,bn->...b", np.matmul(w, M), w)  # (..., B): w M w for every resample
    same = diag @ (w**2).T  # (..., B)
    count = n * n - (w**2).sum(axis=1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (quad - same) / np.where(count > 0, count, 1.0), np.nan)


def pair_kendall(M: np.ndarray, D: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between ``M`` and ``D`` over the pairs of two different draws, for every resample.

    Pairs of draws (i < j, positions in the resample) with ``idx_i != idx_j`` are kept; a pair drawn twice
    is tied with itself in both variables and so leaves tau-b's numerator and denominator unchanged, as in
    ``scipy.stats.kendalltau``.

    Args:
        M: (..., n, n) symmetric matrices (e.g. pairwise MI per layer).
        D: (n, n) symmetric matrix (e.g. token distance).
        idx: (B, n) resampled item indices.

    Returns:
        (..., B) tau-b values; NaN where a resample leaves fewer than 2 pairs or a constant variable.
    """
    M = np.asarray(M, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    iu, ju = np.triu_indices(idx.shape[1], 1)
    a, b = idx[:, iu], idx[:, ju]  # (B, m)
    valid = a != b
    y = D[a, b]  # (B, m)
    x = M[..., a, b]  # (..., B, m)
    both = (valid[:, :, None] & valid[:, None, :]).astype(np.int8)  # (B, m, m)
    sy = np.sign(y[:, :, None] - y[:, None, :]).astype(np.int8) * both
    sx = np.sign(x[..., :, None] - x[..., None, :]).astype(np.int8) * both
    num = np.einsum("...bkl,bkl->...b", sx, sy, dtype=np.int64).astype(np.float64)
    tx = np.abs(sx).sum(axis=(-1, -2), dtype=np.int64).astype(np.float64)
    ty = np.abs(sy).sum(axis=(-1, -2), dtype=np.int64).astype(np.float64)
    denom = np.sqrt(tx * ty)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)


def percentile_ci(samples: np.ndarray, confidence: float = 0.95, axis: int = -1) -> tuple:
    """Percentile interval of bootstrap samples (NaN samples ignored): ``(lo, hi)`` of the remaining shape."""
    alpha = (1 - confidence) / 2
    samples = np.asarray(samples, dtype=np.float64)
    with warnings.catch_warnings():  # an all-NaN slice (no resample defined the statistic) gives NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(samples, [alpha, 1 - alpha], axis=axis)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi
