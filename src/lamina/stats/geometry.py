"""Residual-stream geometry: path lengths, adjustment cosines, effective dimensionality."""

from __future__ import annotations

import numpy as np

from ..errors import LaminaError

__all__ = [
    "path_lengths",
    "adjustment_cosine",
    "pca_spectrum",
    "components_for_variance",
    "participation_ratio",
]


def path_lengths(hidden, attn_out, mlp_out) -> dict[str, np.ndarray]:
    """Euclidean lengths of each block's steps through the residual stream.

    Args:
        hidden: hidden states of shape (L + 1, T, d) (embeddings, then every block's output).
        attn_out: attention adjustments of shape (L, T, d) (what attention adds in block l).
        mlp_out: MLP adjustments of shape (L, T, d).

    Returns:
        ``{"attn", "mlp", "hidden"}`` of shape (L, T) (``hidden[l] = ||h[l+1] - h[l]||``) and their
        cumulative sums along depth ``{"attn_cumulative", "mlp_cumulative", "hidden_cumulative"}``.
    """
    hidden = np.asarray(hidden, dtype=np.float64)
    attn_out = np.asarray(attn_out, dtype=np.float64)
    mlp_out = np.asarray(mlp_out, dtype=np.float64)
    if hidden.shape[0] != attn_out.shape[0] + 1 or attn_out.shape != mlp_out.shape:
        raise LaminaError(f"shapes do not line up: hidden {hidden.shape}, attn {attn_out.shape}, "
                          f"mlp {mlp_out.shape}; expected (L+1, T, d), (L, T, d), (L, T, d)")
    out = {
        "attn": np.linalg.norm(attn_out, axis=-1),
        "mlp": np.linalg.norm(mlp_out, axis=-1),
        "hidden": np.linalg.norm(np.diff(hidden, axis=0), axis=-1),
    }
    for key in ("attn", "mlp", "hidden"):
        out[f"{key}_cumulative"] = np.cumsum(out[key], axis=0)
    return out


def adjustment_cosine(a, b) -> np.ndarray:
    """Cosine between matching vectors of ``a`` and ``b`` (shape (..., d)) -> (...). Zero vectors give 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def pca_spectrum(X) -> np.ndarray:
    """Explained-variance ratios of PCA on the rows of ``X`` (n_samples, n_features), largest first.

    Equal to ``sklearn.decomposition.PCA().fit(X).explained_variance_ratio_`` (length min(n, d)).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise LaminaError(f"PCA needs a 2-D array with at least 2 samples; got shape {X.shape}")
    centred = X - X.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    var = s**2
    total = var.sum()
    return var / total if total > 0 else np.zeros_like(var)


def components_for_variance(ratios, threshold: float = 0.95) -> int:
    """Fewest leading components whose explained-variance ratios sum to at least ``threshold``."""
    if not 0 < threshold <= 1:
        raise LaminaError(f"threshold must be in (0, 1] (got {threshold})")
    cumulative = np.cumsum(np.asarray(ratios, dtype=np.float64))
    # A tiny tolerance so a spectrum summing to 1 - 1e-16 still reaches threshold 1.
    return int(min(len(cumulative), np.searchsorted(cumulative, threshold - 1e-12) + 1))


def participation_ratio(ratios) -> float:
    """``(sum lambda)^2 / sum lambda^2`` of a variance spectrum: an effective number of dimensions."""
    lam = np.asarray(ratios, dtype=np.float64)
    denom = np.sum(lam**2)
    return float(np.sum(lam) ** 2 / denom) if denom > 0 else 0.0
