"""Covariance, correlation and cosine similarity matrices, batched over leading axes.

Row versions compare the n rows of ``X`` of shape (..., n, d) (each row a vector whose d values are the
samples); column versions compare the m columns of ``X`` of shape (..., s, m) over its s rows (the Q/K/V study
compares 2304 neuron vectors over 54 sentences).
"""

from __future__ import annotations

import numpy as np

from ..errors import LaminaError

__all__ = [
    "covariance_matrix",
    "correlation_matrix",
    "cosine_similarity_matrix",
    "column_cosine_similarity",
    "column_correlation",
    "masked_correlation_matrix",
]


def _as_float(X, min_ndim: int = 2) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim < min_ndim:
        raise LaminaError(f"expected an array with at least {min_ndim} dimensions, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise LaminaError("input contains NaN or infinite values; remove them first")
    return X


def covariance_matrix(X, *, ddof: int = 1) -> np.ndarray:
    """Covariance between every pair of rows.

    Args:
        X: array of shape (..., n, d).
        ddof: delta degrees of freedom (1: the sample covariance, like ``np.cov``).

    Returns:
        Array of shape (..., n, n) equal to ``np.cov(X)`` for 2-D input.
    """
    X = _as_float(X)
    centred = X - X.mean(axis=-1, keepdims=True)
    return centred @ np.swapaxes(centred, -1, -2) / (X.shape[-1] - ddof)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)  # a zero vector has similarity 0 with everything


def correlation_matrix(X) -> np.ndarray:
    """Pearson correlation between every pair of rows: (..., n, d) -> (..., n, n) (``np.corrcoef``).

    A constant row gets correlation 0 with every row (``np.corrcoef`` would give NaN).
    """
    X = _as_float(X)
    return cosine_similarity_matrix(X - X.mean(axis=-1, keepdims=True))


def cosine_similarity_matrix(X) -> np.ndarray:
    """Cosine similarity between every pair of rows: (..., n, d) -> (..., n, n). Keeps the mean offset."""
    unit = _unit_rows(_as_float(X))
    return np.clip(unit @ np.swapaxes(unit, -1, -2), -1.0, 1.0)


def column_cosine_similarity(X) -> np.ndarray:
    """Cosine similarity between every pair of columns: (..., s, m) -> (..., m, m).

    Each column is normalised to unit length over the s rows, then ``X^T X``.
    """
    return cosine_similarity_matrix(np.swapaxes(_as_float(X), -1, -2))


def column_correlation(X) -> np.ndarray:
    """Pearson correlation between every pair of columns (mean-centre each column first): (..., s, m) ->
    (..., m, m)."""
    return correlation_matrix(np.swapaxes(_as_float(X), -1, -2))


def masked_correlation_matrix(X, keep) -> np.ndarray:
    """Pearson correlation between every pair of rows over the dimensions both rows keep.

    For rows i and j only the dimensions with ``keep[i] & keep[j]`` count (e.g. the complement of each
    vector's |z| outliers, as the trimmed MI uses). Exact and vectorised: the five pairwise sums are matrix
    products of the masked rows.

    Args:
        X: (..., n, d) values.
        keep: (..., n, d) booleans.

    Returns:
        (..., n, n) correlations; a pair with fewer than 2 shared dimensions or a constant row gets 0.
    """
    X = _as_float(X)
    M = np.asarray(keep, dtype=np.float64)
    if M.shape != X.shape:
        raise LaminaError(f"keep must have the shape of X {X.shape}; got {M.shape}")
    XM = np.where(M > 0, X, 0.0)
    shift = (XM.sum(axis=-1, keepdims=True) / np.maximum(M.sum(axis=-1, keepdims=True), 1))
    XM = np.where(M > 0, X - shift, 0.0)  # centring each row first keeps the sums well conditioned
    t = lambda A: np.swapaxes(A, -1, -2)  # noqa: E731
    n = M @ t(M)
    sx = XM @ t(M)  # sum of row i's kept values over the shared dimensions
    sxx = (XM**2) @ t(M)
    sxy = XM @ t(XM)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * t(sx) / n
        var_i = sxx - sx**2 / n
        var_j = t(var_i)
        r = cov / np.sqrt(var_i * var_j)
    ok = (n >= 2) & (var_i > 1e-12 * np.maximum(sxx, 1e-300)) & (var_j > 1e-12 * np.maximum(t(sxx), 1e-300))
    return np.clip(np.where(ok, r, 0.0), -1.0, 1.0)
