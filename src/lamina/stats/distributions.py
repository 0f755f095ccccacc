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


def bimodality_bic(x, *, seed: int = 0, min_separation: float = 2.0) -> dict:
    """Is a sample made of two separated modes? A 2- vs 1-component Gaussian mixture (scikit-learn BIC) plus
    Ashman's D for the separation of the two components.

    A BIC gain alone also rewards heavy tails (a narrow and a wide component with one centre), so a sample is
    called bimodal only when two components fit much better (``bic_1 - bic_2 > 10``) *and* they are apart:
    ``D = sqrt(2) |mu_1 - mu_2| / sqrt(s_1^2 + s_2^2) > min_separation`` (Ashman et al. 1994: D > 2 for a
    clean separation).

    Args:
        x: (n,) values, n >= 10.
        seed: mixture initialisation seed.
        min_separation: the Ashman's D threshold.

    Returns:
        ``{"bic_1", "bic_2", "delta_bic", "ashman_d", "bimodal", "means", "weights"}`` (means ascending).
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    if x.shape[0] < 10:
        raise LaminaError("a bimodality test needs at least 10 values")
    if not np.isfinite(x).all():
        raise LaminaError("the sample contains NaN or infinite values; remove them first")
    fits = [GaussianMixture(k, random_state=seed).fit(x) for k in (1, 2)]
    bic1, bic2 = (float(f.bic(x)) for f in fits)
    order = np.argsort(fits[1].means_.ravel())
    means = fits[1].means_.ravel()[order]
    variances = fits[1].covariances_.reshape(-1)[order]
    d = float(np.sqrt(2) * abs(means[1] - means[0]) / np.sqrt(max(variances.sum(), 1e-300)))
    return {
        "bic_1": bic1,
        "bic_2": bic2,
        "delta_bic": bic1 - bic2,
        "ashman_d": d,
        "bimodal": bool(bic1 - bic2 > 10 and d > min_separation),
        "means": [float(m) for m in means],
        "weights": [float(w) for w in fits[1].weights_[order]],
    }
