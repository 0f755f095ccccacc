"""Resampling helpers the studies' claims share: item bootstraps as count matrices, bootstrap summaries,
per-layer trends with a bootstrap spread, and the comparison of a value with the random-init model's.

A bootstrap resample of n items is a row of counts (how often each item was drawn), so statistics that are
sums over items become matrix products with the count matrix (vectorised over resamples).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..stats import trend_test

__all__ = ["bootstrap_counts", "boot", "excess_over_baseline", "layer_trend", "spearman_with_position",
           "CONFIDENCE"]

#: Two-sided confidence level of every bootstrap interval.
CONFIDENCE = 0.95


def bootstrap_counts(n_items: int, n_resamples: int, rng) -> np.ndarray:
    """Seeded bootstrap resamples as counts: (n_resamples, n_items) integers, each row summing to n_items.

    Row b says how many times each item appears in resample b (a multinomial draw, equal to counting
    ``rng.integers(0, n_items, n_items)``).
    """
    draws = rng.integers(0, n_items, (int(n_resamples), int(n_items)))
    counts = np.zeros((int(n_resamples), int(n_items)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(int(n_resamples)), n_items), draws.ravel()), 1)
    return counts


def boot(value, draws) -> dict:
    """Summary of a statistic and its bootstrap draws (NaN draws, where it is undefined, are left out).

    Args:
        value: the statistic on the real items.
        draws: (n_resamples,) the statistic on every resample.

    Returns:
        ``{"value", "sd", "ci": [lo, hi] (percentile, :data:`CONFIDENCE`), "p_gt0", "p_lt0", "n"}``:
        ``p_gt0`` is the bootstrap p of "the statistic is > 0" ((1 + #draws <= 0) / (1 + n)), ``p_lt0`` that of
        "< 0". All None when fewer than 10 draws are defined.
    """
    d = np.asarray(draws, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    value = float(value) if value is not None and np.isfinite(value) else None
    if d.size < 10:  # too few defined draws for a percentile interval
        return {"value": value, "sd": None, "ci": None, "p_gt0": None, "p_lt0": None, "n": int(d.size)}
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    return {"value": value, "sd": float(d.std(ddof=1)), "ci": [float(lo), float(hi)],
            "p_gt0": float((1 + np.count_nonzero(d <= 0)) / (1 + d.size)),
            "p_lt0": float((1 + np.count_nonzero(d >= 0)) / (1 + d.size)), "n": int(d.size)}


def excess_over_baseline(value: float, sd: float, base_value: float, base_sd: float,
                         alternative: str = "greater") -> dict:
    """Is ``value`` beyond the random-init model's ``base_value``? A two-sample z test on bootstrap SDs.

    The two runs are independent (different weights, their own resamples), so
    ``z = (value - base_value) / sqrt(sd^2 + base_sd^2)``; ``p`` is one-sided in the ``alternative`` direction
    (``"greater"`` or ``"less"``). Returns ``{"difference", "z", "p"}`` (None when a spread is missing).
    """
    if None in (value, sd, base_value, base_sd):
        return {"difference": None, "z": None, "p": None}
    diff = float(value - base_value)
    scale = math.sqrt(sd**2 + base_sd**2)
    if scale == 0:
        z = math.copysign(math.inf, diff) if diff else 0.0
    else:
        z = diff / scale
    p = sps.norm.sf(z) if alternative == "greater" else sps.norm.cdf(z)
    return {"difference": diff, "z": float(z), "p": float(p)}


def spearman_with_position(curves) -> np.ndarray:
    """Spearman rho between position (0..k-1) and each column of ``curves`` (k, n_curves) -> (n_curves,)."""
    ranks = sps.rankdata(np.asarray(curves, dtype=np.float64), axis=0)
    pos = np.arange(ranks.shape[0], dtype=np.float64)
    rc = ranks - ranks.mean(axis=0)
    pc = pos - pos.mean()
    den = np.sqrt((rc**2).sum(axis=0) * (pc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pc @ rc) / np.where(den > 0, den, 1), 0.0)


def layer_trend(curve, draws, first: int, alternative: str) -> dict:
    """Monotone trend of a per-layer curve from layer ``first`` on, with its bootstrap spread.

    Args:
        curve: (n_layers,) the real values.
        draws: (n_layers, n_resamples) the curve on every resample of the items (same resample at every layer).
        first: first layer of the trend (1 leaves out a layer that is fixed by construction).
        alternative: ``"less"`` (falls with depth) or ``"greater"`` (rises).

    Returns:
        ``{"rho", "p", "method", "first_layer", "bootstrap": boot(rho, rho of every resample)}``, or
        ``{"rho": None, ...}`` with fewer than 3 layers.
    """
    curve = np.asarray(curve, dtype=np.float64)[first:]
    if curve.size < 3:
        return {"rho": None, "p": None, "method": None, "first_layer": first, "bootstrap": boot(None, [])}
    test = trend_test(curve, method="spearman", alternative=alternative)
    rhos = spearman_with_position(np.asarray(draws, dtype=np.float64)[first:])
    return {"rho": test.statistic, "p": test.p, "method": test.method, "first_layer": first,
            "bootstrap": boot(test.statistic, rhos)}
