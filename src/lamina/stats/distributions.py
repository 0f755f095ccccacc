"""Outlier masks, fixed-edge histograms and a bimodality test."""

from __future__ import annotations

import numpy as np

from ..errors import LaminaError

__all__ = ["zscore_outliers", "fixed_histogram", "bimodality_bic"]


def zscore_outliers(x, threshold: float) -> np.ndarray:
    """True where ``|z| > threshold`` (z over the last axis, ddof=0; a constant vector has no outliers)."""
    from .mi import trim_mask

    return ~trim_mask(np.asarray(x, dtype=np.float64), threshold)


def fixed_histogram(values, edges, *, density: bool = False) -> np.ndarray:
    """Histogram of the last axis with fixed edges, batched over leading axes (``np.histogram`` each row).

    Args:
        values: (..., n) values.
        edges: (B + 1,) increasing bin edges; values outside are ignored, the last bin is closed.
        density: normalise each row to a probability density.

    Returns:
        (..., B) counts (or densities).
    """
    values = np.asarray(values, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise LaminaError("edges must be a 1-D increasing array of at least 2 values")
    flat = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
    out = np.stack([np.histogram(row, bins=edges, density=density)[0] for row in flat]).astype(np.float64)
    return out.reshape(*values.shape[:-1], edges.size - 1)


def bimodality_bic(x, *, seed: int = 0) -> dict:
    """Is a sample better described by two Gaussians than one? (scikit-learn GaussianMixture BIC.)

    Returns:
        ``{"bic_1", "bic_2", "delta_bic" (bic_1 - bic_2; > 10 is strong evidence for two modes),
        "bimodal", "means", "weights"}``.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    if x.shape[0] < 10:
        raise LaminaError("a bimodality test needs at least 10 values")
    fits = [GaussianMixture(k, random_state=seed).fit(x) for k in (1, 2)]
    bic1, bic2 = (float(f.bic(x)) for f in fits)
    return {
        "bic_1": bic1,
        "bic_2": bic2,
        "delta_bic": bic1 - bic2,
        "bimodal": bool(bic1 - bic2 > 10),
        "means": sorted(float(m) for m in fits[1].means_.ravel()),
        "weights": [float(w) for w in fits[1].weights_[np.argsort(fits[1].means_.ravel())]],
    }
