"""Null models: an observed statistic against its distribution under "no effect".

Every test returns a :class:`NullTest`. p-values follow ``scipy.stats.permutation_test``:

- exact enumeration (every ordering, the observed one included): ``p = k / N``;
- seeded random resamples: ``p = (k + 1) / (N + 1)`` (the observed ordering counts once), never 0;
- ``k`` counts null values at least as extreme as the observed one, within a relative ``100 * eps`` so that
  values equal in exact arithmetic but not in floating point count as ties;
- ``"two-sided"`` is ``min(1, 2 * min(p_less, p_greater))``: valid for skewed nulls too (a selectivity ratio,
  an MI), not only for nulls centred on 0.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats as sps

from ..errors import LaminaError
from .mi import _as_real

__all__ = [
    "ALTERNATIVES",
    "NullTest",
    "empirical_null",
    "label_permutation_test",
    "mantel_test",
    "permutation_test",
    "trend_test",
]

#: Accepted ``alternative`` values.
ALTERNATIVES = ("two-sided", "greater", "less")

_CORRELATIONS = ("pearson", "spearman", "kendall")

#: Elements (orderings x compared values) evaluated per vectorised chunk: ~32 MB of float64.
_CHUNK = 4_000_000


@dataclass(frozen=True)
class NullTest:
    """Observed statistic vs its null distribution.

    Attributes:
        statistic: the observed value.
        null_mean, null_sd: mean and standard deviation (ddof=0) of the null distribution.
        p: p-value for ``alternative`` (see the module docstring).
        n_permutations: null values used (n! for an exact Mantel test over n items).
        exact: True when the null enumerates every ordering.
        alternative: ``"two-sided"``, ``"greater"`` or ``"less"``.
        method: one line saying what was tested and how.
        null: the null distribution, shape (n_permutations,) (not written to JSON).
    """

    statistic: float
    null_mean: float
    null_sd: float
    p: float
    n_permutations: int
    exact: bool
    alternative: str
    method: str
    null: np.ndarray = field(repr=False)

    @property
    def z(self) -> float:
        """(statistic - null_mean) / null_sd; NaN for a degenerate (constant) null."""
        return (self.statistic - self.null_mean) / self.null_sd if self.null_sd > 0 else float("nan")

    def as_dict(self) -> dict:
        """JSON-able dict of everything except ``null``."""
        return {"statistic": float(self.statistic), "null_mean": float(self.null_mean),
                "null_sd": float(self.null_sd), "p": float(self.p), "n_permutations": int(self.n_permutations),
                "exact": bool(self.exact), "alternative": self.alternative, "method": self.method}


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise LaminaError(f"alternative={alternative!r} is not valid; use one of {', '.join(ALTERNATIVES)}")


def _check_count(n_permutations, what: str = "n_permutations") -> int:
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise LaminaError(f"{what} must be a positive integer (got {n_permutations!r})")
    return int(n_permutations)


def _p_value(observed: float, null: np.ndarray, alternative: str, exact: bool) -> float:
    """p of ``observed`` against ``null`` (see the module docstring)."""
    gamma = abs(observed) * 100 * np.finfo(np.float64).eps
    adjust = 0 if exact else 1
    n = null.size + adjust
    p_greater = (np.count_nonzero(null >= observed - gamma) + adjust) / n
    p_less = (np.count_nonzero(null <= observed + gamma) + adjust) / n
    p = {"greater": p_greater, "less": p_less, "two-sided": 2 * min(p_greater, p_less)}[alternative]
    return float(min(1.0, p))


def _result(observed, null, alternative, exact, method) -> NullTest:
    null = np.asarray(null, dtype=np.float64).ravel()
    observed = float(observed)
    if not np.isfinite(observed):
        raise LaminaError(f"the observed statistic is {observed}; a null test needs a finite value")
    if null.size == 0 or not np.isfinite(null).all():
        raise LaminaError("the null distribution is empty or holds NaN/inf; check the statistic on shuffled data")
    return NullTest(statistic=observed, null_mean=float(null.mean()), null_sd=float(null.std()),
                    p=_p_value(observed, null, alternative, exact), n_permutations=int(null.size), exact=exact,
                    alternative=alternative, method=method, null=null)


@functools.lru_cache(maxsize=8)
def _all_orderings(n: int) -> np.ndarray:
    """All n! orderings of range(n) in lexicographic order (the identity first), read-only, shape (n!, n)."""
    out = np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n)
    out.flags.writeable = False
    return out


def _orderings(n: int, n_permutations: int, exact_max: int, seed) -> tuple[np.ndarray, bool]:
    """Every ordering of n items (the identity first) when n! <= exact_max, else seeded random ones.

    Returns:
        (orderings of shape (N, n), exact).
    """
    if math.factorial(n) <= exact_max:
        return _all_orderings(n), True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n, dtype=np.intp), (n_permutations, 1)), axis=1), False


def empirical_null(observed: float, null_samples, *, alternative: str = "greater", method: str = "") -> NullTest:
    """Wrap an already computed null sample into a :class:`NullTest` with ``p = (k + 1) / (N + 1)``.

    Args:
        observed: the observed statistic.
        null_samples: shape (N,): the statistic under the null (e.g. on a random-init model, on shuffled
            inputs, over several shuffles).
        alternative: which side counts as extreme.
        method: one line describing the null.
    """
    _check_alternative(alternative)
    null = _as_real(null_samples, "null_samples").ravel()
    return _result(observed, null, alternative, False, method or f"empirical null of {null.size} samples")


def _symmetric(M, name: str) -> np.ndarray:
    M = _as_real(M, name)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise LaminaError(f"{name} must be a square (n, n) matrix; got shape {M.shape}")
    if not np.isfinite(M).all():
        raise LaminaError(f"{name} contains NaN or infinite values; remove them before a Mantel test")
    scale = float(np.abs(M).max()) if M.size else 0.0
    if not np.allclose(M, M.T, rtol=1e-8, atol=1e-12 * scale):  # rounding-level asymmetry only
        raise LaminaError(f"{name} is not symmetric; a Mantel test compares symmetric matrices (use (M + M.T) / 2)")
    return M


def _standardised(v: np.ndarray) -> np.ndarray:
    """Centred values scaled to unit norm (all zeros for a constant vector), so that r = za @ zb."""
    c = v - v.mean()
    norm = np.sqrt(c @ c)
    return c / norm if norm > 0 else np.zeros_like(c)


def mantel_test(A, B, *, method: str = "spearman", alternative: str = "two-sided", n_permutations: int = 9999,
                seed=0, exact_max: int = 40320) -> NullTest:
    """Mantel test: correlation of two symmetric matrices' upper triangles against relabelling the items.

    The null permutes the rows and columns of ``B`` jointly (relabels its items), which keeps B's structure
    (values sharing an item stay together) and breaks only its alignment with ``A``.

    Args:
        A, B: (n, n) symmetric matrices, e.g. an MI matrix and a token-distance matrix, or two RDMs.
        method: ``"pearson"``, ``"spearman"`` or ``"kendall"`` (tau-b) over the n(n-1)/2 upper-triangle values.
        alternative: ``"two-sided"``, ``"greater"`` (A and B agree) or ``"less"``.
        n_permutations: random orderings when the test is not exact.
        seed: seed of those orderings.
        exact_max: enumerate all n! orderings when n! <= exact_max (n <= 8 by default: 7 items -> 5040).

    Returns:
        :class:`NullTest`; ``statistic`` equals scipy's pearsonr / spearmanr / kendalltau of the triangles.
    """
    if method not in _CORRELATIONS:
        raise LaminaError(f"method={method!r} is not valid; use one of {', '.join(_CORRELATIONS)}")
    _check_alternative(alternative)
    n_permutations = _check_count(n_permutations)
    A = _symmetric(A, "A")
    B = _symmetric(B, "B")
    if A.shape != B.shape:
        raise LaminaError(f"A and B must have the same shape (got {A.shape} and {B.shape})")
    n = A.shape[0]
    if n < 3:
        raise LaminaError(f"a Mantel test needs at least 3 items (got {n})")
    iu, ju = np.triu_indices(n, 1)
    a, b = A[iu, ju], B[iu, ju]
    perms, exact = _orderings(n, n_permutations, exact_max, seed)
    if method == "kendall":
        null = _mantel_kendall_null(a, b, perms, iu, ju)
    else:
        if method == "spearman":  # ranks are invariant under relabelling: rank once
            a, b = sps.rankdata(a), sps.rankdata(b)
        za = _standardised(a)
        Zb = np.zeros((n, n))
        Zb[iu, ju] = Zb[ju, iu] = _standardised(b)
        null = np.empty(len(perms))
        step = max(1, _CHUNK // iu.size)
        for start in range(0, len(perms), step):
            p = perms[start:start + step]
            null[start:start + step] = Zb[p[:, iu], p[:, ju]] @ za
        null = np.clip(null, -1.0, 1.0)
    observed = null[0] if exact else _mantel_identity(a, b, method)
    how = f"exact over {len(perms)} orderings" if exact else f"{len(perms)} random orderings (seed {seed})"
    return _result(observed, null, alternative, exact, f"Mantel ({method}) over {n} items, {how}")


def _mantel_identity(a, b, method) -> float:
    """The observed statistic by the same arithmetic as the null (a, b already ranked for spearman)."""
    if method == "kendall":
        return float(sps.kendalltau(a, b).statistic) if np.ptp(a) and np.ptp(b) else 0.0
    return float(np.clip(_standardised(b) @ _standardised(a), -1.0, 1.0))


def _mantel_kendall_null(a, b, perms, iu, ju) -> np.ndarray:
    """Kendall tau-b of ``a`` with B's triangle under every ordering in ``perms`` (shape (N, n)).

    tau-b's denominator depends only on the tie counts, which relabelling keeps; the numerators
    ``sum_{k<l} sign(a_k - a_l) sign(b_q(k) - b_q(l))`` (q maps a permuted position to B's pair index) come
    from a compiled O(m log m) count per ordering.
    """
    from ._null_kernels import kendall_numerators

    m = a.size
    if not (np.ptp(a) and np.ptp(b)):
        return np.zeros(len(perms))
    n = perms.shape[1]
    pair_index = np.zeros((n, n), dtype=np.intp)
    pair_index[iu, ju] = pair_index[ju, iu] = np.arange(m)
    rank_b = sps.rankdata(b, method="dense").astype(np.int64)
    order_a = np.argsort(a, kind="stable")
    sorted_a = a[order_a]
    block_end = np.searchsorted(sorted_a, sorted_a, side="right").astype(np.int64)

    def tied_pairs(v):
        counts = np.unique(v, return_counts=True)[1]
        return float(np.sum(counts * (counts - 1) / 2))

    n0 = m * (m - 1) / 2
    denom = math.sqrt((n0 - tied_pairs(a)) * (n0 - tied_pairs(b)))
    null = np.empty(len(perms))
    step = max(1, _CHUNK // m)
    for start in range(0, len(perms), step):
        p = perms[start:start + step]
        ranks = np.ascontiguousarray(rank_b[pair_index[p[:, iu], p[:, ju]]])
        out = np.empty(len(p), dtype=np.int64)
        kendall_numerators(order_a.astype(np.int64), block_end, ranks, int(rank_b.max()), out)
        null[start:start + step] = out / denom
    return np.clip(null, -1.0, 1.0)


def _n_distinct(samples, permutation_type: str) -> int:
    """How many distinct rearrangements ``scipy.stats.permutation_test`` enumerates in an exact test."""
    sizes = [np.shape(s)[-1] for s in samples]
    if permutation_type == "independent":
        total = list(itertools.accumulate(sizes, initial=0))
        return math.prod(math.comb(t, k) for t, k in zip(total[1:], sizes))
    if permutation_type == "pairings":
        return math.factorial(sizes[0]) ** len(samples)
    return math.factorial(max(2, len(samples))) ** sizes[0]  # "samples": swap values within each observation


def permutation_test(statistic, *samples, permutation_type: str = "independent", alternative: str = "two-sided",
                     n_permutations: int = 9999, seed=0, vectorized: bool = False) -> NullTest:
    """Seeded ``scipy.stats.permutation_test``: exact when ``n_permutations`` covers every rearrangement.

    Args:
        statistic: ``statistic(*samples) -> float`` (with ``vectorized=True``: ``statistic(*samples, axis)``).
        samples: 1-D arrays (observations along the only axis).
        permutation_type: ``"independent"`` (reassign observations to samples), ``"pairings"`` (shuffle the
            pairing of observations, e.g. a correlation) or ``"samples"`` (swap within paired observations).
        alternative: which side counts as extreme.
        n_permutations: random rearrangements when not exact.
        seed: seed of those rearrangements.
        vectorized: whether ``statistic`` takes an ``axis`` argument (much faster).
    """
    _check_alternative(alternative)
    n_permutations = _check_count(n_permutations)
    if permutation_type not in ("independent", "pairings", "samples"):
        raise LaminaError(f"permutation_type={permutation_type!r} is not valid; use 'independent', 'pairings' or "
                          "'samples'")
    if not samples:
        raise LaminaError("permutation_test needs at least one sample")
    samples = [_as_real(s, "sample").ravel() for s in samples]
    if not all(np.isfinite(s).all() for s in samples):
        raise LaminaError("a sample contains NaN or infinite values; remove them before a permutation test")
    if permutation_type != "independent" and len({s.size for s in samples}) > 1:
        raise LaminaError(f"permutation_type={permutation_type!r} needs samples of equal length")
    res = sps.permutation_test(samples, statistic, permutation_type=permutation_type, vectorized=vectorized,
                               n_resamples=n_permutations, alternative=alternative,
                               rng=np.random.default_rng(seed))
    null = np.asarray(res.null_distribution, dtype=np.float64)
    exact = n_permutations >= _n_distinct(samples, permutation_type)
    how = f"exact over {null.size} rearrangements" if exact else f"{null.size} random rearrangements (seed {seed})"
    out = _result(res.statistic, null, alternative, exact, f"permutation test ({permutation_type}), {how}")
    return replace(out, p=float(res.pvalue))  # scipy's own p (the same convention)


def _multiset_orderings(codes: np.ndarray) -> np.ndarray:
    """Every distinct ordering of the integer codes (a multiset), shape (N, n); the input's own order first."""
    counts = np.bincount(codes).tolist()
    out, prefix = [], []

    def extend():
        if len(prefix) == codes.size:
            out.append(tuple(prefix))
            return
        for v, c in enumerate(counts):
            if c:
                counts[v] -= 1
                prefix.append(v)
                extend()
                prefix.pop()
                counts[v] += 1

    extend()
    rows = np.array(out, dtype=np.intp)
    first = np.flatnonzero((rows == codes).all(axis=1))[0]
    return np.concatenate([rows[first:first + 1], np.delete(rows, first, axis=0)])


def _count_arrangements(counts: list[int], limit: int) -> int:
    """Distinct orderings of a multiset with these counts (the multinomial), or ``limit + 1`` once above it."""
    total, placed = 1, 0
    for c in counts:
        for i in range(1, c + 1):
            placed += 1
            total = total * placed // i  # stays an integer: the running product of binomials
            if total > limit:
                return limit + 1
    return total


def label_permutation_test(statistic, labels, *, alternative: str = "greater", n_permutations: int = 999,
                           seed=0) -> NullTest:
    """Null of a statistic of labelled items under shuffled labels.

    Exact (every distinct arrangement of the labels) when there are at most ``n_permutations`` of them,
    else ``n_permutations`` seeded shuffles.

    Args:
        statistic: ``statistic(labels) -> float``, e.g. ``lambda l: category_selectivity(S, l)``.
        labels: (n,) one label per item (any values ``np.unique`` can sort).
        alternative: which side counts as extreme (``"greater"``: the real labels give a larger value).
        n_permutations: shuffles when not exact.
        seed: seed of the shuffles.
    """
    _check_alternative(alternative)
    n_permutations = _check_count(n_permutations)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size < 2:
        raise LaminaError(f"labels must be a 1-D array of at least 2 items; got shape {labels.shape}")
    uniques, codes = np.unique(labels, return_inverse=True)
    codes = codes.ravel()
    n_distinct = _count_arrangements(np.bincount(codes).tolist(), n_permutations)
    if n_distinct == 1:
        raise LaminaError("labels has a single distinct arrangement (one label for every item); nothing to shuffle")
    exact = n_distinct <= n_permutations
    if exact:
        arrangements = uniques[_multiset_orderings(codes)]
        null = np.array([float(statistic(lab)) for lab in arrangements])
        observed = null[0]
        how = f"exact over {null.size} label arrangements"
    else:
        rng = np.random.default_rng(seed)
        observed = float(statistic(labels))
        null = np.array([float(statistic(rng.permutation(labels))) for _ in range(n_permutations)])
        how = f"{n_permutations} label shuffles (seed {seed})"
    return _result(observed, null, alternative, exact, f"label permutation over {labels.size} items, {how}")


def trend_test(values, *, method: str = "spearman", alternative: str = "two-sided",
               exact_max: int = 40320) -> NullTest:
    """Monotone trend of ``values`` over positions 0..k-1 (e.g. does a per-layer curve fall with depth?).

    Args:
        values: (k,) one value per position (layer).
        method: ``"spearman"`` (rho) or ``"kendall"`` (tau-b) between position and value.
        alternative: ``"less"`` for "falls with depth", ``"greater"`` for "rises", or ``"two-sided"``.
        exact_max: exact permutation null over all k! orderings when k! <= exact_max (k <= 8 by default);
            beyond that scipy's p (Spearman: t approximation; Kendall: scipy's exact or normal method) with
            ``null`` empty, ``n_permutations`` 0 and the analytic null mean 0 and sd.

    Returns:
        :class:`NullTest` whose statistic equals ``scipy.stats.spearmanr`` / ``kendalltau`` of
        (0..k-1, values).
    """
    if method not in ("spearman", "kendall"):
        raise LaminaError(f"method={method!r} is not valid; use 'spearman' or 'kendall'")
    _check_alternative(alternative)
    v = _as_real(values, "values").ravel()
    k = v.size
    if k < 3:
        raise LaminaError(f"a trend test needs at least 3 positions (got {k})")
    if not np.isfinite(v).all():
        raise LaminaError("values contains NaN or infinite values; remove those positions first")
    pos = np.arange(k, dtype=np.float64)
    if math.factorial(k) > exact_max:
        fn = sps.spearmanr if method == "spearman" else sps.kendalltau
        res = fn(pos, v, alternative=alternative) if np.ptp(v) else None
        stat, p = (float(res.statistic), float(res.pvalue)) if res is not None else (0.0, 1.0)
        sd = 1 / math.sqrt(k - 1) if method == "spearman" else math.sqrt(2 * (2 * k + 5) / (9 * k * (k - 1)))
        how = "t approximation" if method == "spearman" else "scipy p"
        return NullTest(statistic=stat, null_mean=0.0, null_sd=sd, p=p, n_permutations=0, exact=False,
                        alternative=alternative, method=f"trend ({method}) over {k} positions, {how}",
                        null=np.empty(0))
    perms, _ = _orderings(k, 0, exact_max, None)
    if method == "spearman":
        zv = _standardised(sps.rankdata(v))
        null = zv[perms] @ _standardised(pos)
    else:
        i, j = np.triu_indices(k, 1)
        s = np.sign(v[:, None] - v[None, :])
        denom = math.sqrt(i.size * float(np.abs(s[i, j]).sum()))
        vp = v[perms]
        null = np.sign(vp[:, j] - vp[:, i]).sum(axis=1) / denom if denom > 0 else np.zeros(len(perms))
    null = np.clip(null, -1.0, 1.0)
    return _result(null[0], null, alternative, True,
                   f"trend ({method}) over {k} positions, exact over {len(perms)} orderings")
