"""The Kraskov-Stoegbauer-Grassberger MI estimator (algorithm 1) for every pair of vectors, compiled.

Each pair gives the same number as scikit-learn's ``mutual_info_regression(a[:, None], b, n_neighbors=k,
random_state=seed)[0]``, which :func:`lamina.stats.pairwise_mutual_information` used to call once per pair
(about 4 ms a pair at d = 576, most of it per-call overhead). The preparation is scikit-learn's, step for step:
each vector scaled to unit standard deviation (``np.nanstd``, ddof 0, near-zero scales left at 1) and jittered by
``1e-10 * max(1, mean |v|)`` times seeded normal noise -- the first ``d`` normals of ``RandomState(seed)`` for the
feature, the next ``d`` for the target, the same for every pair. Then, per sample i, the Chebyshev distance to
its k-th nearest neighbour in the joint space gives ``r_i``; ``n_x(i)`` and ``n_y(i)`` count the other samples
strictly closer than ``r_i`` along each axis (scikit-learn's ``query_radius`` at ``nextafter(r_i, 0)``); and

    MI = psi(d) + psi(k) - mean psi(n_x + 1) - mean psi(n_y + 1), floored at 0 (nats).

Brute force over the d^2 sample pairs is exact and, at the widths lamina sees (hundreds to a few thousand
dimensions), faster than trees.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from scipy.special import digamma

__all__ = ["pairwise_ksg"]

#: Neighbour counts held at once (two int64 arrays of this size: 64 MB).
_COUNTS_PER_CHUNK = 1 << 22


def _prepared(X: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(as_feature, as_target), each (m, d): every row of X (m, d) as scikit-learn prepares it in each role."""
    m, d = X.shape
    rng = np.random.RandomState(seed)
    noise_feature = rng.standard_normal(size=(d, 1))  # drawn first, as scikit-learn draws it
    noise_target = rng.standard_normal(size=d)
    feature = np.empty((m, d))
    target = np.empty((m, d))
    eps10 = 10 * np.finfo(np.float64).eps
    for a in range(m):
        col = np.array(X[a], dtype=np.float64).reshape(-1, 1)  # the (d, 1) column scikit-learn scales
        scale = np.nanstd(col, axis=0)
        scale[scale < eps10] = 1.0
        col /= scale
        col += 1e-10 * np.maximum(1, np.mean(np.abs(col), axis=0)) * noise_feature
        feature[a] = col[:, 0]
        y = np.array(X[a], dtype=np.float64)
        s = np.nanstd(y, axis=0)
        y /= 1.0 if s == 0.0 else s
        y += 1e-10 * np.maximum(1, np.mean(np.abs(y))) * noise_target
        target[a] = y
    return feature, target


@njit(cache=True, parallel=True)
def _counts(feature, target, first, second, k):  # pragma: no cover - compiled; pairwise_ksg is the entry point
    n_pairs, d = first.size, feature.shape[1]
    nx = np.empty((n_pairs, d), dtype=np.int64)
    ny = np.empty((n_pairs, d), dtype=np.int64)
    for p in prange(n_pairs):
        x = feature[first[p]]
        y = target[second[p]]
        nearest = np.empty(k)
        for i in range(d):
            nearest[:] = np.inf  # the k smallest joint distances to the other samples, ascending
            for j in range(d):
                if j == i:
                    continue
                dist = max(abs(x[j] - x[i]), abs(y[j] - y[i]))
                if dist < nearest[k - 1]:
                    t = k - 1
                    while t > 0 and nearest[t - 1] > dist:
                        nearest[t] = nearest[t - 1]
                        t -= 1
                    nearest[t] = dist
            radius = np.nextafter(nearest[k - 1], 0.0)
            cx = 0
            cy = 0
            for j in range(d):
                if abs(x[j] - x[i]) <= radius:
                    cx += 1
                if abs(y[j] - y[i]) <= radius:
                    cy += 1
            nx[p, i] = cx - 1  # without the sample itself
            ny[p, i] = cy - 1
    return nx, ny


def pairwise_ksg(X: np.ndarray, n_neighbors: int = 3, seed: int = 0) -> np.ndarray:
    """KSG mutual information between every pair of rows of X.

    Args:
        X: (m, d) vectors; their d dimensions are the samples.
        n_neighbors: k of the estimator.
        seed: seed of scikit-learn's jitter.

    Returns:
        (m, m) MI in nats, symmetric, entry (a, b) computed with row min(a, b) as the feature (as the loop over
        ``a < b`` calling scikit-learn would); NaN on the diagonal.
    """
    m, d = X.shape
    out = np.full((m, m), np.nan)
    if m < 2:
        return out
    if not 1 <= n_neighbors < d:
        raise ValueError(f"n_neighbors must be between 1 and the number of samples - 1 ({d - 1}); "
                         f"got {n_neighbors}")
    feature, target = _prepared(X, seed)
    first, second = (i.astype(np.int64) for i in np.triu_indices(m, 1))
    step = max(1, _COUNTS_PER_CHUNK // d)  # pairs per kernel call: bounds the count arrays
    for lo in range(0, first.size, step):
        a, b = first[lo:lo + step], second[lo:lo + step]
        nx, ny = _counts(feature, target, a, b, int(n_neighbors))
        mi = (digamma(d) + digamma(n_neighbors) - np.mean(digamma(nx + 1.0), axis=1)
              - np.mean(digamma(ny + 1.0), axis=1))
        out[a, b] = out[b, a] = np.maximum(0, mi)
    return out
