"""Seeded bootstrap confidence intervals over resampled items (tokens, pairs, words)."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ..errors import LaminaError
from .mi import _as_real

__all__ = ["bootstrap_ci", "bootstrap_curve_ci"]

_METHODS = ("percentile", "basic", "bca")

#: Resampled values evaluated per chunk in :func:`bootstrap_curve_ci` (~32 MB of float64).
_CHUNK = 4_000_000


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise LaminaError(f"confidence must be between 0 and 1 (got {confidence})")


def bootstrap_ci(data, statistic=np.mean, *, n_resamples: int = 2000, confidence: float = 0.95, seed=0,
                 axis: int = 0, method: str = "percentile"):
    """Seeded ``scipy.stats.bootstrap`` confidence interval of a statistic over resampled items.

    Args:
        data: (n_items,) or (n_items, ...) with items along ``axis``; a 2-D array gives one CI per column,
            every column resampled with the same item indices.
        statistic: ``statistic(sample, axis=...)`` (vectorised, e.g. ``np.mean``, ``np.median``) or
            ``statistic(sample_1d) -> float``.
        n_resamples: bootstrap resamples.
        confidence: confidence level of the two-sided interval.
        seed: seed of the resamples.
        axis: the items axis.
        method: ``"percentile"``, ``"basic"`` or ``"bca"`` (as scipy).

    Returns:
        (lo, hi): floats for 1-D data, arrays of the remaining shape otherwise.
    """
    method = method.lower()
    if method not in _METHODS:
        raise LaminaError(f"method={method!r} is not valid; use one of {', '.join(_METHODS)}")
    _check_confidence(confidence)
    data = _as_real(data, "data")
    if data.ndim == 0 or data.shape[axis] < 2:
        raise LaminaError(f"a bootstrap needs at least 2 items along axis {axis}; got shape {data.shape}")
    if not np.isfinite(data).all():
        raise LaminaError("data contains NaN or infinite values; remove them before bootstrapping")
    res = sps.bootstrap((data,), statistic, n_resamples=int(n_resamples), confidence_level=confidence,
                        method=method, axis=axis, rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def bootstrap_curve_ci(values, *, n_resamples: int = 1000, confidence: float = 0.95, seed=0,
                       statistic=np.mean) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of a per-layer curve, items resampled jointly across layers.

    Every resample draws one set of item indices and applies it to every layer, so the CIs respect the
    correlation between layers (the same tokens at every depth). Equal to ``scipy.stats.bootstrap`` with
    ``method="percentile"``, ``axis=-1`` and the same seed.

    Args:
        values: (n_layers, n_items), e.g. a per-token quantity at every layer. NaN is allowed if
            ``statistic`` ignores it (``np.nanmean``).
        n_resamples: bootstrap resamples.
        confidence: confidence level of the two-sided interval.
        seed: seed of the resamples.
        statistic: vectorised statistic over items, called as ``statistic(x, axis=-1)``.

    Returns:
        (lo, hi), each of shape (n_layers,).
    """
    _check_confidence(confidence)
    values = _as_real(values, "values")
    if values.ndim != 2 or values.shape[1] < 2:
        raise LaminaError(f"values must have shape (n_layers, n_items) with n_items >= 2; got {values.shape}")
    if np.isinf(values).any():
        raise LaminaError("values contains infinite values; remove them before bootstrapping")
    if n_resamples < 2:
        raise LaminaError(f"n_resamples must be at least 2 (got {n_resamples})")
    n_layers, n = values.shape
    idx = np.random.default_rng(seed).integers(0, n, (int(n_resamples), n))  # scipy's draw, one batch
    boot = np.empty((n_layers, len(idx)))
    step = max(1, _CHUNK // (n_layers * n))
    for start in range(0, len(idx), step):
        boot[:, start:start + step] = statistic(values[:, idx[start:start + step]], axis=-1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=1)
    return lo, hi
