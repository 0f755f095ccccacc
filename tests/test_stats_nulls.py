"""Null models (issue #11) against brute-force loops and scipy, calibration under the null, power under a
planted effect; the stats input edge cases of issue #10."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from lamina import LaminaError
from lamina.stats import (
    bootstrap_ci,
    bootstrap_curve_ci,
    correlate,
    empirical_null,
    entropy,
    fisher_z_compare,
    fisher_z_variance,
    label_permutation_test,
    mantel_test,
    mutual_information,
    mutual_information_bias,
    mutual_information_null,
    pairwise_mutual_information,
    permutation_test,
    trend_test,
    trim_mask,
)

TOL = 1e-12  # same quantity through different float arithmetic: rounding only
SCIPY_CORR = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}
N_DRAWS = 300  # calibration draws per test


def symmetric(rng, n):
    M = rng.normal(size=(n, n))
    return M + M.T


def brute_p(observed, null, alternative, exact):
    """The module's documented convention, written out: ties within a relative 100 eps count as extreme."""
    gamma = abs(observed) * 100 * np.finfo(float).eps
    adj = 0 if exact else 1
    greater = (np.sum(null >= observed - gamma) + adj) / (null.size + adj)
    less = (np.sum(null <= observed + gamma) + adj) / (null.size + adj)
    return {"greater": greater, "less": less, "two-sided": min(1.0, 2 * min(greater, less))}[alternative]


def assert_calibrated(p):
    """Null p-values must be (super-)uniform.

    KS against U(0, 1) with p > 0.001 (a correct test fails this 1 time in 1000), and the fraction of
    p <= 0.05 inside the binomial 99.9% interval of Binomial(N_DRAWS, 0.05) (for 300 draws: 5..27).
    """
    p = np.asarray(p)
    assert sps.kstest(p, "uniform").pvalue > 0.001
    lo, hi = sps.binom.interval(0.999, p.size, 0.05)
    assert lo <= np.sum(p <= 0.05) <= hi
    return float(np.mean(p <= 0.05))


# ---------------------------------------------------------------- Mantel


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_mantel_exact_equals_brute_force_loop(method):
    rng = np.random.default_rng(0)
    n = 6
    A = symmetric(rng, n)
    B = np.round(symmetric(rng, n))  # ties in B
    B[0, 1] = B[1, 0] = B[2, 3]
    iu = np.triu_indices(n, 1)
    corr = SCIPY_CORR[method]
    null = np.array([corr(A[iu], B[np.ix_(p, p)][iu]).statistic for p in itertools.permutations(range(n))])
    observed = corr(A[iu], B[iu]).statistic
    for alternative in ("two-sided", "greater", "less"):
        res = mantel_test(A, B, method=method, alternative=alternative)
        assert res.exact and res.n_permutations == math.factorial(n) == res.null.size
        assert res.statistic == pytest.approx(observed, abs=TOL)
        np.testing.assert_allclose(np.sort(res.null), np.sort(null), atol=TOL)
        assert res.p == brute_p(observed, null, alternative, exact=True)  # exact equality of the p-value


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_mantel_sampled_equals_loop_over_the_same_orderings(method):
    rng = np.random.default_rng(1)
    n, N = 9, 300
    A, B = symmetric(rng, n), np.round(symmetric(rng, n))
    res = mantel_test(A, B, method=method, n_permutations=N, seed=7)
    perms = np.random.default_rng(7).permuted(np.tile(np.arange(n), (N, 1)), axis=1)  # the documented draw
    iu = np.triu_indices(n, 1)
    corr = SCIPY_CORR[method]
    null = np.array([corr(A[iu], B[np.ix_(p, p)][iu]).statistic for p in perms])
    assert not res.exact and res.n_permutations == N
    np.testing.assert_allclose(res.null, null, atol=TOL)
    assert res.p == brute_p(res.statistic, null, "two-sided", exact=False)


def test_mantel_pearson_statistic_is_corrcoef_and_validation():
    rng = np.random.default_rng(2)
    A, B = symmetric(rng, 10), symmetric(rng, 10)
    iu = np.triu_indices(10, 1)
    res = mantel_test(A, B, method="pearson", n_permutations=99)
    assert res.statistic == pytest.approx(np.corrcoef(A[iu], B[iu])[0, 1], abs=TOL)
    assert res.as_dict()["n_permutations"] == 99 and "null" not in res.as_dict()
    assert json.loads(json.dumps(res.as_dict()))["p"] == res.p  # JSON-able as is
    with pytest.raises(LaminaError, match="symmetric"):
        mantel_test(A, rng.normal(size=(10, 10)))
    with pytest.raises(LaminaError, match="same shape"):
        mantel_test(A, symmetric(rng, 9))
    with pytest.raises(LaminaError, match="complex"):
        mantel_test(A.astype(complex), B)
    const = mantel_test(A, np.ones((10, 10)), n_permutations=99)
    assert const.statistic == 0.0 and const.p == 1.0  # no structure in B: no evidence


@pytest.mark.parametrize("n, method", [(7, "spearman"), (12, "pearson"), (12, "kendall")])  # exact, sampled
def test_mantel_calibrated_under_the_null_and_powerful_with_an_effect(n, method):
    rng = np.random.default_rng(10 + n)
    p = [mantel_test(symmetric(rng, n), symmetric(rng, n), method=method, n_permutations=199,
                     seed=i).p for i in range(N_DRAWS)]
    assert_calibrated(p)
    A = symmetric(rng, n)
    planted = mantel_test(A, A + 0.3 * symmetric(rng, n), method=method, n_permutations=199)
    assert planted.p <= 0.01  # B is A plus noise (r ~ 0.9): the relabelling null almost never matches it


def test_mantel_exact_n7_is_fast():
    import time

    rng = np.random.default_rng(3)
    A, B = symmetric(rng, 7), symmetric(rng, 7)
    mantel_test(A, B, method="kendall")  # compile / warm up once
    for method in ("pearson", "spearman", "kendall"):
        start = time.perf_counter()
        res = mantel_test(A, B, method=method)
        assert res.n_permutations == 5040
        assert time.perf_counter() - start < 1.0  # the bound; measured ~5-80 ms on a shared core


# ---------------------------------------------------------------- generic permutation nulls


def test_permutation_test_wraps_scipy_and_reports_exactness():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=5), rng.normal(1, size=4)

    def diff(a, b):
        return np.mean(a) - np.mean(b)

    res = permutation_test(diff, x, y)
    ref = sps.permutation_test((x, y), diff, vectorized=False, n_resamples=9999)
    assert res.exact and res.n_permutations == math.comb(9, 4) == 126  # every split enumerated
    assert res.p == pytest.approx(ref.pvalue, abs=TOL)
    sampled = permutation_test(diff, x, y, n_permutations=50, seed=1)
    ref = sps.permutation_test((x, y), diff, vectorized=False, n_resamples=50, rng=np.random.default_rng(1))
    assert not sampled.exact and sampled.p == pytest.approx(ref.pvalue, abs=TOL)
    z = rng.normal(size=6)
    corr = permutation_test(lambda a: np.corrcoef(a, z)[0, 1], rng.normal(size=6), permutation_type="pairings")
    assert corr.exact and corr.n_permutations == 720
    flips = permutation_test(np.mean, rng.normal(size=8), permutation_type="samples")
    assert flips.exact and flips.n_permutations == 2**8


def test_label_permutation_exact_equals_brute_force_and_is_calibrated():
    rng = np.random.default_rng(5)
    labels = np.array(["a"] * 4 + ["b"] * 4)
    v = rng.normal(size=8)

    def stat(lab):
        return v[lab == "a"].mean() - v[lab == "b"].mean()

    res = label_permutation_test(stat, labels)
    arrangements = {tuple(labels[list(p)]) for p in itertools.permutations(range(8))}
    null = np.array([stat(np.array(a)) for a in arrangements])
    assert res.exact and res.n_permutations == 70 == len(arrangements)
    np.testing.assert_allclose(np.sort(res.null), np.sort(null), atol=TOL)
    assert res.p == brute_p(stat(labels), null, "greater", exact=True)

    # Calibration: exact (70 arrangements) and sampled (99 shuffles of 20 items) under random labels.
    p_exact = [label_permutation_test(lambda lab, w=rng.normal(size=8): w[lab == 1].mean(),
                                      rng.permutation([0] * 4 + [1] * 4)).p for _ in range(N_DRAWS)]
    assert_calibrated(p_exact)
    p_sampled = [label_permutation_test(lambda lab, w=rng.normal(size=20): w[lab == 1].mean(),
                                        np.repeat([0, 1], 10), n_permutations=99, seed=i).p for i in range(N_DRAWS)]
    assert_calibrated(p_sampled)
    # Power: category 1 items are shifted by 2 sd.
    w = rng.normal(size=20) + 2.0 * np.repeat([0, 1], 10)
    assert label_permutation_test(lambda lab: w[lab == 1].mean(), np.repeat([0, 1], 10)).p <= 0.01


def test_empirical_null_p_convention():
    null = np.arange(99.0)
    res = empirical_null(95.5, null)
    assert res.p == (3 + 1) / (99 + 1)  # 96, 97 and 98 are at least as large; the observed counts once
    assert empirical_null(-1.0, null, alternative="less").p == 1 / 100  # never 0
    assert empirical_null(95.5, null, alternative="two-sided").p == 2 * 4 / 100
    with pytest.raises(LaminaError, match="alternative"):
        empirical_null(1.0, null, alternative="bigger")


# ---------------------------------------------------------------- trend


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_trend_exact_equals_brute_force(method):
    rng = np.random.default_rng(6)
    v = np.round(rng.normal(size=6), 1)
    v[3] = v[5]  # a tie
    corr = SCIPY_CORR[method]
    pos = np.arange(6)
    null = np.array([corr(pos, v[list(p)]).statistic for p in itertools.permutations(range(6))])
    observed = corr(pos, v).statistic
    for alternative in ("two-sided", "less"):
        res = trend_test(v, method=method, alternative=alternative)
        assert res.exact and res.statistic == pytest.approx(observed, abs=TOL)
        assert res.p == brute_p(observed, null, alternative, exact=True)
    large = trend_test(rng.normal(size=12), method=method)  # 12! orderings: scipy's p
    ref = corr(np.arange(12), large_values := rng.normal(size=12))
    assert trend_test(large_values, method=method).p == pytest.approx(ref.pvalue, abs=TOL)
    assert not large.exact and large.n_permutations == 0


@pytest.mark.parametrize("k", [7, 12])
def test_trend_calibrated_and_powerful(k):
    rng = np.random.default_rng(20 + k)
    assert_calibrated([trend_test(rng.normal(size=k)).p for _ in range(N_DRAWS)])
    falling = -np.arange(k) + 0.5 * rng.normal(size=k)
    assert trend_test(falling, alternative="less").p <= 0.01  # falls with depth
    assert trend_test(falling, alternative="greater").p > 0.5  # the other direction is not supported


# ---------------------------------------------------------------- MI bias


def test_mi_bias_matches_independent_and_separates_dependent_vectors():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(7, 576))
    kw = dict(bins=15, trim_z=4)
    bias = mutual_information_bias(X, **kw)
    mi = pairwise_mutual_information(X, **kw)
    iu = np.triu_indices(7, 1)
    sd = bias.sd[iu].mean()
    # Independent vectors: observed MI is one more draw of the bias distribution. 21 pairs: the mean
    # difference must be within 4 standard errors (sd / sqrt(21)).
    assert abs(bias.corrected(mi)[iu].mean()) < 4 * sd / math.sqrt(iu[0].size)
    assert 0.15 < bias.mean[iu].mean() < 0.3  # ~(B-1)^2 / (2 d ln 2) = 0.245 bits: the known histogram bias
    np.testing.assert_allclose(np.diag(bias.mean), np.diag(mi), atol=TOL)  # permuting keeps each entropy

    Y = X.copy()
    Y[1] = 0.8 * X[0] + 0.6 * rng.normal(size=576)  # rho = 0.8: 0.74 bits of true MI
    corrected = mutual_information_bias(Y, **kw).corrected(pairwise_mutual_information(Y, **kw))
    assert corrected[0, 1] > 10 * sd  # the planted dependence stands far above the bias
    # Below the analytic 0.74 bits: 15 bins lose ~0.05, and a dependent pair's joint histogram occupies fewer
    # cells than an independent one's, so the independence bias over-corrects it (measured 0.53).
    assert 0.74 - 0.3 < corrected[0, 1] < 0.74


def test_mi_bias_agrees_with_single_pair_null_and_moves_trim_masks():
    rng = np.random.default_rng(8)
    x, y = rng.standard_t(3, size=(2, 400))  # heavy tails: trimming drops dimensions
    bias = mutual_information_bias(np.stack([x, y]), bins=15, trim_z=3, n_draws=100)
    null = mutual_information_null(x, y, n_permutations=100, bins=15, trim_z=3)
    se = null.std() * math.sqrt(2 / 100)  # standard error of a difference of two 100-draw means
    assert abs(bias.mean[0, 1] - null.mean()) < 4 * se

    # Permuting after trimming equals trimming after permuting: reproduce the draws by re-trimming the
    # permuted vectors (the implementation's seeded permutations: one batch, draw-major, for small inputs).
    X = rng.standard_t(3, size=(2, 5, 300))
    bias = mutual_information_bias(X, bins=12, trim_z=2.5, n_draws=3, seed=4)
    all_idx = np.random.default_rng(4).permuted(np.tile(np.arange(300), (3 * 10, 1)), axis=1)
    flat = X.reshape(10, 300)
    draws = []
    for t in range(3):
        idx = all_idx[t * 10:(t + 1) * 10]
        Xp = np.take_along_axis(flat, idx, axis=1)
        assert (trim_mask(Xp, 2.5) == np.take_along_axis(trim_mask(flat, 2.5), idx, axis=1)).all()
        draws.append(pairwise_mutual_information(Xp.reshape(2, 5, 300), bins=12, trim_z=2.5))
    np.testing.assert_allclose(bias.mean, np.mean(draws, axis=0), atol=TOL)
    np.testing.assert_allclose(bias.sd, np.std(draws, axis=0, ddof=1), atol=TOL)
    assert bias.mean.shape == (2, 5, 5)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_scipy_and_covers():
    rng = np.random.default_rng(9)
    x = rng.exponential(size=40)
    for method in ("percentile", "bca"):
        ref = sps.bootstrap((x,), np.median, n_resamples=500, method=method, rng=np.random.default_rng(3))
        assert bootstrap_ci(x, np.median, n_resamples=500, seed=3, method=method) == pytest.approx(
            tuple(ref.confidence_interval), abs=TOL)
    V = rng.normal(size=(4, 30))  # 4 layers x 30 items
    lo, hi = bootstrap_curve_ci(V, n_resamples=500, seed=3)
    ref = sps.bootstrap((V,), np.mean, n_resamples=500, axis=-1, method="percentile", rng=np.random.default_rng(3))
    np.testing.assert_allclose(lo, ref.confidence_interval.low, atol=TOL)
    np.testing.assert_allclose(hi, ref.confidence_interval.high, atol=TOL)
    cols = bootstrap_ci(V.T, np.mean, n_resamples=500, seed=3)  # items x columns: the same joint resampling
    np.testing.assert_allclose(cols[0], lo, atol=TOL)

    # Coverage of the mean of N(0, 1) samples of 30: percentile intervals run slightly short of 95%
    # (~93% at n = 30); 200 intervals must fall in the binomial 99.9% interval around 0.95, widened by 2 points.
    covered = [lo <= 0 <= hi for lo, hi in (bootstrap_ci(rng.normal(size=30), np.mean, n_resamples=400, seed=s)
                                            for s in range(200))]
    lo_ok = sps.binom.interval(0.999, 200, 0.95)[0] / 200 - 0.02
    assert lo_ok <= np.mean(covered) <= 1.0


# ---------------------------------------------------------------- Fisher z for Kendall / Spearman


def test_fisher_z_kendall_variance():
    assert fisher_z_variance(30, "kendall") == pytest.approx(0.437 / 26)
    assert fisher_z_variance(30, "spearman") == pytest.approx(1.06 / 27)
    z, p = fisher_z_compare(0.5, 30, 0.2, 40, method="kendall")
    ref = (np.arctanh(0.5) - np.arctanh(0.2)) / math.sqrt(0.437 / 26 + 0.437 / 36)
    assert z == pytest.approx(ref, abs=TOL) and p == pytest.approx(2 * sps.norm.sf(ref), abs=TOL)
    assert fisher_z_compare(0.5, 30, 0.2, 40) == fisher_z_compare(0.5, 30, 0.2, 40, method="pearson")
    with pytest.raises(LaminaError, match="more than 4"):
        fisher_z_compare(0.5, 4, 0.2, 40, method="kendall")

    # The formula against simulation: var(atanh tau) over 4000 bivariate-normal samples of n = 30, rho = 0.5.
    rng = np.random.default_rng(11)
    n = 30
    x = rng.normal(size=(4000, n))
    y = 0.5 * x + math.sqrt(0.75) * rng.normal(size=(4000, n))
    i, j = np.triu_indices(n, 1)
    tau = np.mean(np.sign(x[:, i] - x[:, j]) * np.sign(y[:, i] - y[:, j]), axis=1)
    # 4000 draws: the sample variance has a relative sd of sqrt(2/4000) = 2.2%; 10% is > 4 sd. The Pearson
    # formula 1/(n-3) would be 2.2x too large.
    assert np.var(np.arctanh(tau)) == pytest.approx(0.437 / (n - 4), rel=0.10)


# ---------------------------------------------------------------- issue #10 input edge cases


def test_complex_input_raises():
    X = np.random.default_rng(12).normal(size=(3, 50)).astype(complex)
    for call in (lambda: pairwise_mutual_information(X), lambda: mutual_information(X[0], X[1]),
                 lambda: entropy(X[0]), lambda: trim_mask(X, 3), lambda: correlate(X[0], X[1]),
                 lambda: mutual_information_bias(X)):
        with pytest.raises(LaminaError, match="complex"):
            call()


def test_trimming_that_keeps_nothing_raises():
    a = 10.0
    with pytest.raises(LaminaError, match="keeps no dimension of vector 0"):
        entropy(np.tile([0.0, 1.0], 50), trim_z=0.5)  # every |z| = 1
    x = np.concatenate([np.zeros(50), np.tile([a, -a], 25)])  # keeps only its first half at trim_z=1
    y = x[::-1].copy()  # keeps only its second half
    X = np.stack([x, y, np.linspace(0, 1, 100)])
    with pytest.raises(LaminaError, match="shared by vector 0 and vector 1"):
        pairwise_mutual_information(X, trim_z=1.0)
    with pytest.raises(LaminaError, match="shared by"):
        mutual_information_bias(X, trim_z=1.0)
    assert pairwise_mutual_information(X, trim_z=1.5).shape == (3, 3)  # sqrt(2) is kept: no error


def test_overflowing_range_raises_and_large_finite_values_work():
    x = np.array([1e308, -1e308, 0.0, 5.0])
    with pytest.raises(LaminaError, match="range float64 cannot hold"):
        entropy(x)
    rng = np.random.default_rng(13)
    u, v = rng.normal(size=(2, 200))
    scale = 2.0**600  # ~4e180: exact in binary, so bins are identical
    assert mutual_information(u * scale, v * scale) == mutual_information(u, v)
    with pytest.raises(LaminaError, match="z-scores"):
        mutual_information(u * scale, v * scale, trim_z=3)
