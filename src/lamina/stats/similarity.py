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
