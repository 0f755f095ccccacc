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


def _as_real(X, what: str = "X") -> np.ndarray:
    """``X`` as a float64 array; complex input is a user mistake (a silent cast would drop the imaginary part)."""
    complex_input = X.is_complex() if type(X).__module__.startswith("torch") else np.iscomplexobj(X)
    if complex_input:
        raise LaminaError(f"{what} is complex ({X.dtype}); these statistics need real values: pass its .real, "
                          ".imag or abs() explicitly")
    return np.asarray(X, dtype=np.float64)


def _index_of(row: int, n: int, lead: tuple) -> str:
    """Human-readable position of flat row ``row`` of an (..., n, d) array: 'vector 3' or 'vector 3 of X[2]'."""
    g, a = divmod(int(row), n)
    return f"vector {a}" + (f" of X[{', '.join(map(str, np.unravel_index(g, lead)))}]" if lead else "")


def _check_range(flat: np.ndarray, trim_z: float | None, n: int, lead: tuple) -> None:
    """Raise if a vector's range (histogram bins) or, with trimming, its z-scores overflow float64."""
    lo = flat.min(axis=-1)
    hi = flat.max(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        span = hi - lo
    bad = np.flatnonzero(~np.isfinite(span))
    if bad.size:
        r = bad[0]
        raise LaminaError(f"{_index_of(r, n, lead)} spans {lo[r]:.3g}..{hi[r]:.3g}, a range float64 cannot hold, "
                          "so its histogram bins overflow; rescale X (e.g. divide it by its largest absolute value)")
    if trim_z is None:
        return
    # The z-scores square deviations: only values beyond ~1e150 can overflow there.
    big = np.flatnonzero(np.maximum(np.abs(lo), np.abs(hi)) > 1e150)
    if big.size:
        with np.errstate(over="ignore", invalid="ignore"):
            var = flat[big].var(axis=-1)
        bad = big[~np.isfinite(var)]
        if bad.size:
            raise LaminaError(f"the z-scores of {_index_of(bad[0], n, lead)} overflow float64 (values up to "
                              f"{max(abs(lo[bad[0]]), abs(hi[bad[0]])):.3g}), so trim_z cannot be applied; "
                              "rescale X (e.g. divide it by its largest absolute value)")


def _check_kept(keep: np.ndarray, n: int, lead: tuple, trim_z: float) -> None:
    """Raise if trimming leaves a vector, or a pair of vectors of the same group, without any dimension.

    Args:
        keep: (m, d) trim mask of m = groups * n vectors.
    """
    kept = keep.sum(axis=-1)
    if (kept == 0).any():
        r = int(np.flatnonzero(kept == 0)[0])
        raise LaminaError(f"trim_z={trim_z} keeps no dimension of {_index_of(r, n, lead)}; use a larger trim_z "
                          "(>= 1 always keeps some) or trim_z=None")
    d = keep.shape[-1]
    K = kept.reshape(-1, n)
    # Two kept sets of sizes ka and kb share at least ka + kb - d dimensions: only pairs with ka + kb <= d
    # can be disjoint, and those are checked explicitly.
    if n < 2:
        return
    two_smallest = np.partition(K, 1, axis=1)[:, :2].sum(axis=1)
    groups = np.flatnonzero(two_smallest <= d)  # usually none: then no pair can be disjoint
    g, a, b = np.nonzero(np.triu(K[groups, :, None] + K[groups, None, :] <= d, 1))
    g = groups[g]
    for start in range(0, g.size, 4096):
        ra = g[start:start + 4096] * n + a[start:start + 4096]
        rb = g[start:start + 4096] * n + b[start:start + 4096]
        empty = ~(keep[ra] & keep[rb]).any(axis=-1)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise LaminaError(f"trim_z={trim_z} keeps no dimension shared by {_index_of(ra[i], n, lead)} and "
                              f"{_index_of(rb[i], n, lead)}; use a larger trim_z or trim_z=None")


def check_mi_options(estimator: str, correction: str | None, base: float) -> None:
    """Raise :class:`LaminaError` for an unknown estimator or correction, or a log base that is not > 0 and != 1."""
    if estimator not in ("histogram", "ksg"):
        raise LaminaError(f"estimator={estimator!r} is not valid; use 'histogram' or 'ksg'")
    if correction not in (None, "miller-madow"):
        raise LaminaError(f"correction={correction!r} is not valid; use None or 'miller-madow'")
    if not base > 0 or base == 1:
        raise LaminaError(f"base must be positive and not 1 (got {base})")


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
    X = _as_real(X)
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
    X = _as_real(X)
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
    device=None,
    max_bytes: int | None = None,
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
        backend: ``"auto"`` (torch for a CUDA tensor or a non-CPU ``device``, else numba), ``"numba"`` (compiled
            CPU kernels) or ``"torch"`` (one-hot matrix products on a torch device; the same numbers as numba
            up to float64 summation order, ~1e-15).
        device: torch backend only: where to compute (``"cuda"``, ``"cuda:1"``, ``"cpu"``). None: the device of
            a tensor ``X``, else CUDA if available, else the CPU.
        max_bytes: torch backend only: the device working-set budget in bytes (default 1 GiB), bounding the
            blocks of pairs computed at once.
        n_neighbors: k of the kNN estimator.
        random_state: seed of the kNN estimator's jitter.
        return_bins: also return the resolved bin count.

    Returns:
        Array of shape (..., n, n), symmetric. For the histogram estimator the diagonal is each row's own
        entropy with its own binning; for ``"ksg"`` the diagonal is NaN. With ``return_bins``, a tuple
        ``(mi, bins)``.
    """
    check_mi_options(estimator, correction, base)
    is_torch = type(X).__module__.startswith("torch")
    on_cuda = is_torch and X.is_cuda
    requested = backend
    if backend == "auto":
        on_gpu = on_cuda or (device is not None and str(device).split(":")[0] not in ("cpu", "meta"))
        backend = "torch" if on_gpu and estimator == "histogram" else "numba"
    if backend not in ("numba", "torch"):
        raise LaminaError(f"backend={backend!r} is not valid; use 'auto', 'numba' or 'torch'")
    if requested == "numba" and (device is not None or max_bytes is not None):
        raise LaminaError("device= and max_bytes= apply to backend='torch' only; pass backend='torch' or drop them")
    torch_device = None
    if backend == "torch":
        from ._mi_torch import resolve_device

        torch_device = resolve_device(device, X if is_torch else None)  # a missing GPU fails before any work
    if is_torch and X.is_complex():
        _as_real(X)  # raises
    Xn = X.detach().to("cpu").double().numpy() if is_torch else _as_real(X)
    if Xn.ndim < 2:
        raise LaminaError(f"X must have shape (..., n, d); got shape {Xn.shape}")
    if Xn.shape[-1] < 2 or Xn.shape[-2] < 1:
        raise LaminaError(f"X needs at least 1 vector of at least 2 values; got shape {Xn.shape}")
    _check_finite(Xn)
    lead, n, d = Xn.shape[:-2], Xn.shape[-2], Xn.shape[-1]
    flat = np.ascontiguousarray(Xn.reshape(-1, d))
    _check_range(flat, trim_z if estimator == "histogram" else None, n, lead)
    if estimator == "ksg":
        mi = _pairwise_ksg(flat.reshape(-1, n, d), n_neighbors, random_state) / math.log(base)
        mi = mi.reshape(*lead, n, n)
        return (mi, None) if return_bins else mi
    n_bins = resolve_bins(Xn, bins, trim_z)
    keep = trim_mask(flat, trim_z)
    if trim_z is not None:
        _check_kept(keep, n, lead, trim_z)
    if backend == "torch":
        from ._mi_torch import pairwise_mi_torch

        source = X if is_torch and X.device == torch_device else None  # already there: no second upload
        nats, mm = pairwise_mi_torch(flat, keep, trim_z is not None, n_bins, n, device=torch_device,
                                     source=source, max_bytes=max_bytes, want_mm=correction is not None)
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
    from ._ksg import pairwise_ksg

    return np.stack([pairwise_ksg(X, n_neighbors, random_state) for X in X3])


def mutual_information(x, y, *, bins: int | str = 15, trim_z: float | None = None, base: float = 2.0,
                       estimator: str = "histogram", correction: str | None = None) -> float:
    """Mutual information between two vectors of shape (d,) whose dimensions are the samples.

    See the module docstring for the exact definition; ``bins`` rules resolve over both vectors.
    """
    x = _as_real(x, "x").ravel()
    y = _as_real(y, "y").ravel()
    if x.shape != y.shape:
        raise LaminaError(f"x and y must have the same length (got {x.size} and {y.size})")
    mi = pairwise_mutual_information(np.stack([x, y]), bins=bins, trim_z=trim_z, base=base,
                                     estimator=estimator, correction=correction)
    return float(mi[0, 1])


def entropy(x, *, bins: int | str = 15, trim_z: float | None = None, base: float = 2.0) -> float:
    """Entropy of the histogram of one vector's (kept) values: ``-sum p log p``."""
    x = _as_real(x, "x").ravel()
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
    x = _as_real(x, "x").ravel()
    y = _as_real(y, "y").ravel()
    m = pairwise_mutual_information(np.stack([x, y]), bins=bins, base=base)
    return float(m[0, 0] + m[1, 1] - m[0, 1])


def mutual_information_null(x, y, *, n_permutations: int = 200, seed: int = 0, **kwargs) -> np.ndarray:
    """MI of ``x`` with randomly permuted copies of ``y`` (the permutation null), shape (n_permutations,).

    The bias of the histogram estimator shows here: independent data still give MI > 0.
    """
    x = _as_real(x, "x").ravel()
    y = _as_real(y, "y").ravel()
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
