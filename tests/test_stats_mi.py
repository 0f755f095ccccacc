"""Histogram MI against a naive np.histogram2d loop, scikit-learn, analytic values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lamina import LaminaError
from lamina.stats import (
    joint_entropy,
    entropy,
    gaussian_mutual_information,
    mutual_information,
    mutual_information_null,
    naive_mutual_information,
    pairwise_mutual_information,
    resolve_bins,
)

EXACT = 1e-9  # the bound against the naive reference; observed ~1e-14 (float rounding only)


def naive_matrix(X, bins, trim_z):
    n = X.shape[-2]
    return np.array([[naive_mutual_information(X[a], X[b], bins=bins, trim_z=trim_z) for b in range(n)]
                     for a in range(n)])


@pytest.fixture
def heavy_tailed():
    rng = np.random.default_rng(0)
    X = rng.standard_t(3, size=(3, 12, 400))
    X[0, 1] = 0.5 * X[0, 0] + 0.1 * rng.normal(size=400)  # a dependent pair
    X[1, 2] = 3.0  # a constant vector
    X[2, 3] = np.round(X[2, 3])  # heavy ties
    X[2, 4, :50] = 40.0  # a block of outliers that trimming removes
    return X


@pytest.mark.parametrize("trim_z", [None, 4.0, 2.0, 1.0])
@pytest.mark.parametrize("bins", [15, 25, 4])
def test_pairwise_equals_naive_histogram2d_loop(heavy_tailed, trim_z, bins):
    mi = pairwise_mutual_information(heavy_tailed, bins=bins, trim_z=trim_z)
    for g in range(heavy_tailed.shape[0]):
        np.testing.assert_allclose(mi[g], naive_matrix(heavy_tailed[g], bins, trim_z), atol=EXACT, rtol=0)


def test_rebinning_case_is_exact():
    # y drops (by trimming) the dimension that holds x's kept maximum: x's bins change for that pair only.
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    y = rng.normal(size=300)
    top = int(np.argmax(x))
    y[top] = 50.0
    X = np.stack([x, y])
    mi = pairwise_mutual_information(X, bins=10, trim_z=4)
    assert abs(mi[0, 1] - naive_mutual_information(x, y, bins=10, trim_z=4)) < EXACT


def test_torch_path_equals_numba(heavy_tailed):
    for trim_z in (None, 2.0):
        a = pairwise_mutual_information(heavy_tailed, trim_z=trim_z, backend="numba", correction="miller-madow")
        b = pairwise_mutual_information(heavy_tailed, trim_z=trim_z, backend="torch", correction="miller-madow")
        np.testing.assert_allclose(a, b, atol=EXACT, rtol=0)


def test_matches_sklearn_mutual_info_score_on_same_bins():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=1000)
    y = x + rng.normal(size=1000)
    _, ex, ey = np.histogram2d(x, y, bins=15)
    bx = np.clip(np.searchsorted(ex, x, side="right") - 1, 0, 14)
    by = np.clip(np.searchsorted(ey, y, side="right") - 1, 0, 14)
    ref = mutual_info_score(bx, by) / math.log(2)  # nats -> bits
    assert abs(mutual_information(x, y, bins=15) - ref) < EXACT


def test_diagonal_is_entropy_and_units(heavy_tailed):
    X = heavy_tailed[0]
    mi_bits = pairwise_mutual_information(X, bins=15)
    mi_nats = pairwise_mutual_information(X, bins=15, base=math.e)
    np.testing.assert_allclose(mi_bits * math.log(2), mi_nats, atol=EXACT)
    for a in range(X.shape[0]):
        h, _ = np.histogram(X[a], bins=15)
        p = h[h > 0] / h.sum()
        assert abs(mi_bits[a, a] - (-(p * np.log2(p)).sum())) < EXACT
        assert abs(entropy(X[a], bins=15) - mi_bits[a, a]) < EXACT


def test_constant_vector_gives_zero_and_nan_raises():
    x = np.ones(100)
    y = np.random.default_rng(2).normal(size=100)
    assert mutual_information(x, y) == 0.0
    assert mutual_information(x, y, trim_z=3) == 0.0
    y[3] = np.nan
    with pytest.raises(LaminaError, match="NaN"):
        mutual_information(np.arange(100.0), y)


def test_bin_rules_resolve_to_one_integer():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 5, 1000))
    n = resolve_bins(X, "sturges")
    assert n == int(np.ceil(np.log2(1000)) + 1)  # Sturges: log2(n) + 1 for every vector
    mi, used = pairwise_mutual_information(X, bins="sturges", return_bins=True)
    assert used == n
    np.testing.assert_allclose(mi, pairwise_mutual_information(X, bins=n), atol=0)
    with pytest.raises(LaminaError, match="bins"):
        resolve_bins(X, "nonsense")


def test_analytic_gaussian_limit():
    """Histogram MI of a bivariate Gaussian (rho = 0.8) against -0.5 log2(1 - rho^2) = 0.737 bits.

    Measured (seed 4), error in bits for 15 / 25 / 50 bins: d=200: +0.31 / +0.91 / +2.16 (small-sample bias,
    ~(B-1)^2 / (2 d ln 2), grows with the bin count); d=2000: -0.03 / +0.05 / +0.26; d=200k: -0.07 / -0.03 /
    -0.003 (coarse bins lose information: a negative discretisation bias that finer bins remove).
    """
    rho = 0.8
    truth = float(gaussian_mutual_information(rho))
    rng = np.random.default_rng(4)

    def sample(d):
        x = rng.normal(size=d)
        return x, rho * x + math.sqrt(1 - rho**2) * rng.normal(size=d)

    x, y = sample(200)
    assert mutual_information(x, y, bins=25) - truth > 0.5  # small d: large upward bias
    x, y = sample(200_000)
    assert abs(mutual_information(x, y, bins=50) - truth) < 0.01  # large d, fine bins: close to the truth
    assert -0.1 < mutual_information(x, y, bins=15) - truth < -0.03  # coarse bins: discretisation loss


def test_permutation_null_shows_positive_bias():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 500))
    null = mutual_information_null(x, y, n_permutations=50, bins=15)
    assert null.shape == (50,)
    assert (null > 0).all()  # independent data still give MI > 0: the estimator's bias
    # Miller-Madow removes most of it: the corrected null mean is closer to 0.
    corrected = mutual_information_null(x, y, n_permutations=50, bins=15, correction="miller-madow")
    assert abs(corrected.mean()) < null.mean()


@pytest.mark.parametrize("kind, k, seed", [("gaussian", 3, 0), ("ties", 5, 1), ("constant", 1, 2)])
def test_ksg_matches_sklearn(kind, k, seed):
    # Every pair equals scikit-learn's mutual_info_regression exactly: the same jitter, radii and counts.
    from sklearn.feature_selection import mutual_info_regression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(4, 300)) * rng.uniform(0.1, 50, size=(4, 1))  # different scales
    X[1] += X[0]
    if kind == "ties":
        X = np.round(X)  # many equal values: the strict-radius counts matter
    elif kind == "constant":
        X[2] = 3.0  # a zero standard deviation (scaled by 1, as scikit-learn does)
    mi = pairwise_mutual_information(X, estimator="ksg", base=math.e, n_neighbors=k, random_state=seed)
    for a in range(4):
        assert np.isnan(mi[a, a])
        for b in range(a + 1, 4):
            ref = mutual_info_regression(X[a].reshape(-1, 1), X[b], n_neighbors=k, random_state=seed)[0]
            assert abs(mi[a, b] - ref) < 1e-12 and mi[a, b] == mi[b, a]  # 1e-12: float64 round-off only


vectors = arrays(np.float64, st.integers(8, 60), elements=st.floats(-1e3, 1e3, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(vectors, st.integers(0, 2**31 - 1), st.sampled_from([None, 2.0]))
def test_properties(x, seed, trim_z):
    rng = np.random.default_rng(seed)
    y = rng.permutation(x) + rng.normal(size=x.size)
    xy = mutual_information(x, y, trim_z=trim_z)
    assert xy >= 0
    assert abs(xy - mutual_information(y, x, trim_z=trim_z)) < EXACT  # symmetric
    assert abs(mutual_information(x, x, trim_z=trim_z) - entropy(x, trim_z=trim_z)) < EXACT
    # Invariant to shifting and positive scaling (bins follow min..max; z-scores are unchanged). Scaling by a
    # power of two keeps every floating-point comparison exact.
    assert abs(mutual_information(4.0 * x + 0.0, y, trim_z=trim_z) - xy) < EXACT
    assert abs(mutual_information(x, y + 3.0, trim_z=None) - mutual_information(x, y)) < 1e-6 or trim_z


def test_joint_entropy_equals_histogram2d():
    rng = np.random.default_rng(11)
    x = rng.normal(size=3000)
    y = 0.6 * x + rng.standard_t(3, size=3000)
    for bins in (15, 25):
        counts = np.histogram2d(x, y, bins=bins)[0].ravel()
        p = counts[counts > 0] / counts.sum()
        want = -np.sum(p * np.log2(p))
        # Two summation orders of the same p log p terms: float64 rounding only.
        assert joint_entropy(x, y, bins=bins) == pytest.approx(want, abs=1e-10)


def test_warmup_compiles_every_kernel():
    # `make install` runs it so the first demo compiles nothing: every kernel Python calls gets a signature
    # (the kernels they call are compiled into them).
    from lamina._warmup import compile_kernels
    from lamina.stats import _ksg, _mi_kernels, _null_kernels
    from lamina.studies import _clusters_1d

    compile_kernels()
    for kernel in (_mi_kernels.bin_vectors, _mi_kernels.zscore_keep, _mi_kernels.clogc_table, _mi_kernels.pair_mi,
                   _null_kernels.kendall_numerators, _ksg._counts, _clusters_1d._kmeans_dp):
        assert kernel.signatures, f"{kernel.py_func.__qualname__} was not compiled by the warm-up"
