"""Mutual information between vectors whose dimensions are the samples (histogram and kNN estimators).

Definition (histogram estimator, ``estimator="histogram"``) for two vectors ``x``, ``y`` of shape (d,):

1. Trimming (``trim_z=t``): z-score each vector over its d values (ddof=0, like ``scipy.stats.zscore``; a
   constant vector has z = 0 everywhere) and keep the dimensions where ``|z| <= t`` in BOTH vectors.
   Without trimming every dimension is kept.
2. Joint histogram of the kept values exactly as ``np.histogram2d(x_kept, y_kept, bins=B)``: each axis
   spans that vector's kept min..max in B equal bins, the last bin closed.
3. ``p = counts / total``; ``MI = H(x) + H(y) - H(x, y)`` with ``H = -sum p log p`` (0 log 0 = 0) in the
   given log base (bits by default). The marginals are the joint histogram's row and column sums.

The pairwise version computes this for every pair of rows at once with compiled kernels (each vector is
binned once; a pair whose partner drops the dimension holding a vector's kept minimum or maximum is re-binned
for that pair alone, so the fast path stays exact).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import LaminaError

__all__ = [
    "BIN_RULES",
    "resolve_bins",
    "trim_mask",
    "mutual_information",
    "pairwise_mutual_information",
    "mutual_information_null",
    "entropy",
    "joint_entropy",
    "gaussian_mutual_information",
    "naive_mutual_information",
]

#: Most bins per axis (the joint table is indexed with 16 bits).
MAX_BINS = 255

#: Bin rules accepted for ``bins`` (resolved to one integer per call).
BIN_RULES = ("fd", "sqrt", "sturges", "scott", "rice", "doane", "auto")


def _check_finite(X: np.ndarray, what: str = "X") -> None:
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise LaminaError(f"{what} contains NaN or infinite values (first at index {tuple(bad.tolist())}); "
                          "remove or impute them before computing mutual information")


def trim_mask(X: np.ndarray, trim_z: float | None) -> np.ndarray:
    """Dimensions kept by z-score trimming, per vector.

    Args:
        X: array of shape (..., d).
        trim_z: keep ``|z| <= trim_z`` (z over the last axis, ddof=0); None keeps everything.

    Returns:
        Boolean array of shape (..., d). A constant vector keeps every dimension (its z is defined as 0).
    """
    X = np.asarray(X, dtype=np.float64)
    if trim_z is None:
        return np.ones(X.shape, dtype=bool)
    if not trim_z > 0:
        raise LaminaError(f"trim_z must be positive (got {trim_z})")
    from ._mi_kernels import zscore_keep

    flat = np.ascontiguousarray(X.reshape(-1, X.shape[-1]))
    keep = np.empty(flat.shape, dtype=bool)
    zscore_keep(flat, float(trim_z), keep)
    return keep.reshape(X.shape)


def resolve_bins(X: np.ndarray, bins: int | str = 15, trim_z: float | None = None) -> int:
    """Resolve a bin count or rule to ONE integer for a whole analysis.

    Args:
        X: array of shape (..., d) (vectors along the last axis).
        bins: a positive int, or a rule of ``np.histogram_bin_edges`` (``"fd"``, ``"sqrt"``, ``"sturges"``,
            ``"scott"``, ...). A rule is applied to every vector's kept values and the median count is used.
        trim_z: the trimming threshold that will be used (rules see the kept values).

    Returns:
        The number of bins per axis.
    """
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if not 1 <= bins <= MAX_BINS:
            raise LaminaError(f"bins must be between 1 and {MAX_BINS} (got {bins})")
        return int(bins)
    if bins not in BIN_RULES:
        raise LaminaError(f"bins={bins!r} is not valid; use a positive integer or one of {', '.join(BIN_RULES)}")
    X = np.asarray(X, dtype=np.float64)
    flat = X.reshape(-1, X.shape[-1])
    keep = trim_mask(flat, trim_z)
    counts = [len(np.histogram_bin_edges(row[k], bins=bins)) - 1 for row, k in zip(flat, keep) if k.any()]
    return min(MAX_BINS, max(1, int(round(float(np.median(counts)))))) if counts else 1


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.triu_indices(n)
    return a.astype(np.int64), b.astype(np.int64)


def pairwise_mutual_information(
    X,
    *,
    bins: int | str = 15,
    trim_z: float | None = None,
    base: float = 2.0,
    estimator: str = "histogram",
    correction: str | None = None,
    backend: str = "auto",
    n_neighbors: int = 3,
    random_state: int = 0,
    return_bins: bool = False,
):
    """Mutual information between every pair of rows, for every leading index at once.

    Args:
        X: array of shape (..., n, d): n vectors of d values (the d dimensions are the samples), e.g.
            (n_layers, n_tokens, d_model). A torch tensor on CUDA uses the GPU path.
        bins: bins per axis (int) or a rule resolved to one integer for the whole call (see
            :func:`resolve_bins`).
        trim_z: drop dimensions where ``|z| > trim_z`` in either vector of a pair (None: keep all).
        base: logarithm base (2: bits, e for nats).
        estimator: ``"histogram"`` (the definition in this module) or ``"ksg"`` (scikit-learn's
            ``mutual_info_regression``, the Kraskov kNN estimator; no trimming, no bins).
        correction: None or ``"miller-madow"`` (adds (m_x + m_y - m_xy - 1) / 2N nats, m = occupied bins).
        backend: ``"auto"`` (GPU path for CUDA tensors, else compiled CPU kernels), ``"numba"`` or ``"torch"``.
        n_neighbors: k of the kNN estimator.
        random_state: seed of the kNN estimator's jitter.
        return_bins: also return the resolved bin count.

    Returns:
        Array of shape (..., n, n), symmetric. For the histogram estimator the diagonal is each row's own
        entropy with its own binning; for ``"ksg"`` the diagonal is NaN. With ``return_bins``, a tuple
        ``(mi, bins)``.
    """
    if estimator not in ("histogram", "ksg"):
        raise LaminaError(f"estimator={estimator!r} is not valid; use 'histogram' or 'ksg'")
    if correction not in (None, "miller-madow"):
        raise LaminaError(f"correction={correction!r} is not valid; use None or 'miller-madow'")
    if not base > 0 or base == 1:
        raise LaminaError(f"base must be positive and not 1 (got {base})")
    is_torch = type(X).__module__.startswith("torch")
    on_cuda = is_torch and X.is_cuda
    if backend == "auto":
        backend = "torch" if on_cuda else "numba"
    if backend not in ("numba", "torch"):
        raise LaminaError(f"backend={backend!r} is not valid; use 'auto', 'numba' or 'torch'")
    Xn = X.detach().to("cpu").double().numpy() if is_torch else np.asarray(X, dtype=np.float64)
    if Xn.ndim < 2:
        raise LaminaError(f"X must have shape (..., n, d); got shape {Xn.shape}")
    if Xn.shape[-1] < 2 or Xn.shape[-2] < 1:
        raise LaminaError(f"X needs at least 1 vector of at least 2 values; got shape {Xn.shape}")
    _check_finite(Xn)
    lead, n, d = Xn.shape[:-2], Xn.shape[-2], Xn.shape[-1]
    flat = np.ascontiguousarray(Xn.reshape(-1, d))
    if estimator == "ksg":
        mi = _pairwise_ksg(flat.reshape(-1, n, d), n_neighbors, random_state) / math.log(base)
        mi = mi.reshape(*lead, n, n)
        return (mi, None) if return_bins else mi
    n_bins = resolve_bins(Xn, bins, trim_z)
    keep = trim_mask(flat, trim_z)
    if backend == "torch":
        from ._mi_torch import pairwise_mi_torch

        nats, mm = pairwise_mi_torch(X if is_torch else flat, flat, keep, trim_z is not None, n_bins, n)
    else:
        nats, mm = _pairwise_numba(flat, keep, trim_z is not None, n_bins, n, correction is not None)
    if correction == "miller-madow":
        nats = nats + mm
    nats /= math.log(base)
    mi = nats.reshape(*lead, n, n)
    return (mi, n_bins) if return_bins else mi


def _pairwise_numba(flat, keep, use_keep, n_bins, n, want_mm):
    from ._mi_kernels import bin_vectors, clogc_table, pair_mi

    m, d = flat.shape
    code_dtype = np.uint8 if n_bins < 255 else np.uint16
    codes = np.empty((m, d), dtype=code_dtype)
    imin = np.empty(m, dtype=np.int64)
    imax = np.empty(m, dtype=np.int64)
    own = np.empty((m, n_bins), dtype=np.int64)
    bin_vectors(flat, keep, use_keep, n_bins, codes, imin, imax, own)
    pa, pb = _pairs(n)
    groups = m // n
    out = np.zeros((groups, n, n))
    out_mm = np.zeros((groups, n, n) if want_mm else (1, 1, 1))
    pair_mi(flat, keep, use_keep, codes, imin, imax, own, n_bins, n, pa, pb, clogc_table(d), out, out_mm,
            want_mm, 256)
    return _mirror(out), (_mirror(out_mm) if want_mm else 0.0)


def _mirror(upper: np.ndarray) -> np.ndarray:
    """Fill the lower triangle of (..., n, n) from the upper one."""
    full = upper + np.swapaxes(upper, -1, -2)  # the lower triangle of ``upper`` is zero
    diag = np.arange(upper.shape[-1])
    full[..., diag, diag] = upper[..., diag, diag]
    return full


def _pairwise_ksg(X3, n_neighbors, random_state):
    from sklearn.feature_selection import mutual_info_regression

    groups, n, d = X3.shape
    out = np.full((groups, n, n), np.nan)
    for g in range(groups):
        for a in range(n):
            for b in range(a + 1, n):
                value = mutual_info_regression(X3[g, a].reshape(-1, 1), X3[g, b], n_neighbors=n_neighbors,
                                               random_state=random_state)[0]
                out[g, a, b] = out[g, b, a] = value
    return out


def mutual_information(x, y, *, bins: int | str = 15, trim_z: float | None = None, base: float = 2.0,
                       estimator: str = "histogram", correction: str | None = None) -> float:
    """Mutual information between two vectors of shape (d,) whose dimensions are the samples.

    See the module docstring for the exact definition; ``bins`` rules resolve over both vectors.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise LaminaError(f"x and y must have the same length (got {x.size} and {y.size})")
    mi = pairwise_mutual_information(np.stack([x, y]), bins=bins, trim_z=trim_z, base=base,
                                     estimator=estimator, correction=correction)
    return float(mi[0, 1])


def entropy(x, *, bins: int | str = 15, trim_z: float | None = None, base: float = 2.0) -> float:
    """Entropy of the histogram of one vector's (kept) values: ``-sum p log p``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(pairwise_mutual_information(x[None, :], bins=bins, trim_z=trim_z, base=base)[0, 0])


def joint_entropy(x, y, *, bins: int | str = 15, base: float = 2.0) -> float:
    """Entropy of the 2-D histogram of two vectors (``np.histogram2d`` edges): ``H(x) + H(y) - MI(x, y)``.

    Each axis of the joint histogram has the vector's own edges, so its marginals are the vectors' own
    histograms and the identity is exact.

    Args:
        x, y: vectors of shape (d,).

    Returns:
        H(x, y) in units of ``base``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    m = pairwise_mutual_information(np.stack([x, y]), bins=bins, base=base)
    return float(m[0, 0] + m[1, 1] - m[0, 1])


def mutual_information_null(x, y, *, n_permutations: int = 200, seed: int = 0, **kwargs) -> np.ndarray:
    """MI of ``x`` with randomly permuted copies of ``y`` (the permutation null), shape (n_permutations,).

    The bias of the histogram estimator shows here: independent data still give MI > 0.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(y) for _ in range(n_permutations)])
    X = np.stack([np.broadcast_to(x, shuffled.shape), shuffled], axis=1)  # (n_permutations, 2, d)
    return pairwise_mutual_information(X, **kwargs)[:, 0, 1]


def gaussian_mutual_information(rho, base: float = 2.0):
    """Analytic MI of a bivariate Gaussian with correlation ``rho``: ``-0.5 log(1 - rho^2)``."""
    rho = np.asarray(rho, dtype=np.float64)
    return -0.5 * np.log1p(-rho**2) / math.log(base)


def naive_mutual_information(x, y, *, bins: int = 15, trim_z: float | None = None, base: float = 2.0) -> float:
    """Slow reference: one ``np.histogram2d`` per pair, written straight from the definition (for tests and
    benchmarks)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.ones(x.shape, dtype=bool)
    if trim_z is not None:
        for v in (x, y):
            std = v.std()
            if std > 0:  # z as scipy.stats.zscore (ddof=0); a constant vector keeps everything (z = 0)
                keep &= np.abs((v - v.mean()) / std) <= trim_z
    if not keep.any():
        return 0.0
    h, _, _ = np.histogram2d(x[keep], y[keep], bins=bins)
    p = h / h.sum()

    def ent(q):
        q = q[q > 0]
        return -np.sum(q * np.log(q))

    return float((ent(p.sum(axis=1)) + ent(p.sum(axis=0)) - ent(p.ravel())) / math.log(base))
