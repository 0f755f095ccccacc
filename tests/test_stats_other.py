"""Similarity, correlation, tests, geometry, RSA and distributions against numpy / scipy / scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lamina import stats
from lamina.stats import (
    adjustment_cosine,
    bimodality_bic,
    category_selectivity,
    column_correlation,
    column_cosine_similarity,
    compare_rdms,
    components_for_variance,
    correct_pvalues,
    correlate,
    correlate_columns,
    correlation_matrix,
    cosine_similarity_matrix,
    covariance_matrix,
    fisher_z_compare,
    fixed_histogram,
    independent_ttest,
    kendall_tau_a,
    label_blocks,
    label_product_mask,
    partial_correlate_columns,
    participation_ratio,
    path_lengths,
    pca_spectrum,
    rdm,
    zscore_outliers,
)

TOL = 1e-10  # float64 matrix products vs numpy/scipy references: rounding only


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(3, 6, 50)) * np.arange(1, 7)[:, None]


def test_matrices_match_numpy(X):
    for g in range(3):
        np.testing.assert_allclose(covariance_matrix(X)[g], np.cov(X[g]), atol=TOL)
        np.testing.assert_allclose(correlation_matrix(X)[g], np.corrcoef(X[g]), atol=TOL)
        unit = X[g] / np.linalg.norm(X[g], axis=1, keepdims=True)
        np.testing.assert_allclose(cosine_similarity_matrix(X)[g], unit @ unit.T, atol=TOL)
    cols = X[0].T  # (50 samples, 6 columns)
    np.testing.assert_allclose(column_correlation(cols), np.corrcoef(cols, rowvar=False), atol=TOL)
    unit = cols / np.linalg.norm(cols, axis=0, keepdims=True)
    np.testing.assert_allclose(column_cosine_similarity(cols), unit.T @ unit, atol=TOL)


def test_correlate_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 8, size=40).astype(float)  # ordinal with ties
    y = x + rng.normal(size=40)
    assert correlate(x, y, "kendall").r == pytest.approx(sps.kendalltau(x, y).statistic, abs=TOL)
    assert correlate(x, y, "spearman").p == pytest.approx(sps.spearmanr(x, y).pvalue, abs=TOL)
    assert correlate(x, y, "pearson").r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=TOL)
    assert correlate(np.ones(5), y[:5]).r == 0.0


def test_correlate_columns_equals_corrcoef():
    rng = np.random.default_rng(2)
    x = rng.normal(size=80)
    Y = rng.normal(size=(2, 80, 7)) + x[None, :, None] * np.linspace(-1, 1, 7)
    r, p = correlate_columns(x, Y, return_p=True)
    for g in range(2):
        for j in range(7):
            ref = sps.pearsonr(x, Y[g, :, j])
            assert r[g, j] == pytest.approx(ref.statistic, abs=TOL)
            assert p[g, j] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    # Several vectors at once share one centred copy of Y: (k, n) -> (k, ..., m), row by row the same.
    X2 = np.stack([x, rng.normal(size=80), x**2])
    Y[1, :, 3] = 5.0  # a constant column correlates 0 (np.corrcoef would give NaN)
    both = correlate_columns(X2, Y)
    assert both.shape == (3, 2, 7)
    for k in range(3):
        np.testing.assert_allclose(both[k], correlate_columns(X2[k], Y), atol=1e-15)  # identical arithmetic
        assert both[k, 1, 3] == 0.0
        for j in (0, 6):
            assert both[k, 0, j] == pytest.approx(np.corrcoef(X2[k], Y[0, :, j])[0, 1], abs=TOL)


def test_partial_correlation_matches_residual_method():
    rng = np.random.default_rng(3)
    z = rng.normal(size=200)
    x = z + rng.normal(size=200)
    Y = (z[:, None] + rng.normal(size=(200, 4))) + 0.3 * x[:, None]
    got = partial_correlate_columns(x, z, Y)

    def resid(a):
        beta = np.polyfit(z, a, 1)
        return a - np.polyval(beta, z)

    for j in range(4):
        assert got[j] == pytest.approx(np.corrcoef(resid(x), resid(Y[:, j]))[0, 1], abs=1e-9)


def test_fisher_ttest_and_corrections():
    z, p = fisher_z_compare(0.5, 50, 0.1, 60)
    ref = (np.arctanh(0.5) - np.arctanh(0.1)) / np.sqrt(1 / 47 + 1 / 57)
    assert z == pytest.approx(ref, abs=TOL) and p == pytest.approx(2 * sps.norm.sf(ref), abs=TOL)
    a, b = np.random.default_rng(4).normal(size=(2, 30))
    t, tp = independent_ttest(a, b + 1)
    ref = sps.ttest_ind(a, b + 1)
    assert (t, tp) == pytest.approx((ref.statistic, ref.pvalue), abs=TOL)
    pvals = np.array([0.001, 0.01, 0.03, 0.2, 0.04])
    reject, adj = correct_pvalues(pvals, "fdr_bh")
    np.testing.assert_allclose(adj, sps.false_discovery_control(pvals), atol=TOL)
    # BH by hand: sorted p * m / rank, made monotone from the top.
    assert reject.tolist() == [True, True, True, False, True]
    _, bonf = correct_pvalues(pvals, "bonferroni")
    np.testing.assert_allclose(bonf, np.minimum(1, pvals * 5), atol=TOL)


def test_path_lengths_and_cosine():
    rng = np.random.default_rng(5)
    attn, mlp = rng.normal(size=(2, 4, 9, 16))
    hidden = np.concatenate([rng.normal(size=(1, 9, 16)), np.zeros((4, 9, 16))])
    for layer in range(4):
        hidden[layer + 1] = hidden[layer] + attn[layer] + mlp[layer]
    pl = path_lengths(hidden, attn, mlp)
    np.testing.assert_allclose(pl["hidden"], np.linalg.norm(attn + mlp, axis=-1), atol=TOL)
    np.testing.assert_allclose(pl["attn_cumulative"][-1], np.linalg.norm(attn, axis=-1).sum(0), atol=TOL)
    from scipy.spatial.distance import cosine

    cos = adjustment_cosine(attn, mlp)
    assert cos[2, 3] == pytest.approx(1 - cosine(attn[2, 3], mlp[2, 3]), abs=TOL)


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 20)) @ rng.normal(size=(20, 20)) * np.linspace(0.1, 3, 20)
    ratios = pca_spectrum(X)
    np.testing.assert_allclose(ratios, PCA().fit(X).explained_variance_ratio_, atol=1e-10)
    k = components_for_variance(ratios, 0.95)
    assert np.cumsum(ratios)[k - 1] >= 0.95 > np.cumsum(ratios)[k - 2]
    assert participation_ratio(np.ones(10)) == pytest.approx(10.0)  # isotropic: all dimensions count


def test_rsa_helpers():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(8, 30))
    np.testing.assert_allclose(rdm(X, "correlation"), 1 - np.corrcoef(X), atol=TOL)
    from scipy.spatial.distance import cdist

    np.testing.assert_allclose(rdm(X, "euclidean"), cdist(X, X), atol=1e-9)
    A = rdm(X)
    B = A + rng.normal(scale=0.1, size=A.shape)
    B = (B + B.T) / 2
    iu = np.triu_indices(8, 1)
    assert compare_rdms(A, B)[0] == pytest.approx(sps.spearmanr(A[iu], B[iu]).statistic, abs=TOL)
    # tau-a == tau-b when there are no ties.
    assert kendall_tau_a(A[iu], B[iu]) == pytest.approx(sps.kendalltau(A[iu], B[iu]).statistic, abs=TOL)
    # tau-a with ties: counted by hand on 4 values.
    assert kendall_tau_a([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx((5 - 0) / 6)
    S = np.array([[1, .9, .1, .2], [.9, 1, .2, .1], [.1, .2, 1, .8], [.2, .1, .8, 1]])
    assert category_selectivity(S, [0, 0, 1, 1]) == pytest.approx(((.9 + .8) / 2) / ((.1 + .2 + .2 + .1) / 4))


def test_label_blocks_qkv_trick():
    labels = np.array([1] * 3 + [2] * 2 + [3] * 2)  # Q=1, K=2, V=3
    S = np.arange(49, dtype=float).reshape(7, 7)
    blocks = label_blocks(S, labels, {1: "Q", 2: "K", 3: "V"})
    mask = label_product_mask(labels)
    for name, product in {"QQ": 1, "KK": 4, "VV": 9, "QK": 2, "QV": 3, "KV": 6}.items():
        np.testing.assert_array_equal(np.sort(blocks[name]), np.sort(S[mask == product]))


def test_distributions():
    x = np.r_[np.zeros(99), 100.0]
    assert zscore_outliers(x, 4).tolist() == [False] * 99 + [True]
    edges = np.linspace(-0.8, 0.8, 81)
    vals = np.random.default_rng(8).uniform(-1, 1, size=(3, 500))
    got = fixed_histogram(vals, edges)
    for g in range(3):
        np.testing.assert_array_equal(got[g], np.histogram(vals[g], edges)[0])
    rng = np.random.default_rng(9)
    assert bimodality_bic(np.r_[rng.normal(-3, 1, 500), rng.normal(3, 1, 500)])["bimodal"]
    assert not bimodality_bic(rng.normal(size=1000))["bimodal"]
    # Heavy tails alone win the BIC (a narrow and a wide component with one centre) but are not two modes.
    heavy = bimodality_bic(rng.standard_t(2, size=5000))
    assert heavy["delta_bic"] > 10 and heavy["ashman_d"] < 2 and not heavy["bimodal"]
    # Ashman's D against its definition for two well-fitted modes: D = sqrt(2) * 6 / sqrt(1 + 1) = 6 (+- fit).
    assert abs(bimodality_bic(np.r_[rng.normal(-3, 1, 5000), rng.normal(3, 1, 5000)])["ashman_d"] - 6) < 0.2


def test_partial_from_correlations_matches_residual_method():
    rng = np.random.default_rng(10)
    z = rng.normal(size=400)
    x = z + rng.normal(size=400)
    Y = 0.5 * z[:, None] + rng.normal(size=(400, 6))
    got = stats.partial_from_correlations(stats.correlate_columns(x, Y), stats.correlate_columns(z, Y),
                                          np.corrcoef(x, z)[0, 1])
    rx = x - np.polyval(np.polyfit(z, x, 1), z)
    want = [np.corrcoef(rx, Y[:, j] - np.polyval(np.polyfit(z, Y[:, j], 1), z))[0, 1] for j in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-12)  # the same quantity computed two ways: rounding only


def test_public_api_is_documented():
    for name in stats.__all__:
        obj = getattr(stats, name)
        if callable(obj):
            assert obj.__doc__, name


def test_masked_correlation_matrix_matches_pairwise_loop():
    rng = np.random.default_rng(12)
    X = rng.standard_t(3, size=(2, 9, 300)) + 40 * (rng.random((2, 9, 300)) < 0.01)  # rare huge outliers
    X[0, 4] = 1.5  # a constant row correlates 0
    keep = stats.trim_mask(X, 3.0)
    got = stats.masked_correlation_matrix(X, keep)
    for g in range(2):
        for i in range(9):
            for j in range(9):
                both = keep[g, i] & keep[g, j]
                a, b = X[g, i, both], X[g, j, both]
                want = 0.0 if np.ptp(a) == 0 or np.ptp(b) == 0 else np.corrcoef(a, b)[0, 1]
                # Sums of products vs np.corrcoef's centred products: float64 rounding on O(1) values.
                assert got[g, i, j] == pytest.approx(want, abs=1e-10)
    np.testing.assert_allclose(stats.masked_correlation_matrix(X[1], np.ones_like(X[1], bool)),
                               stats.correlation_matrix(X[1]), atol=1e-12)  # keep everything: plain corrcoef
