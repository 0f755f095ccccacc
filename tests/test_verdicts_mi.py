"""Verdicts of the MI studies (issue 11): coffee-mi, punctuation-clusters, mi-layers and mi-theory.

Each study's headline claims are decided on synthetic data with no effect (they must not hold) and, where it is
cheap, with a planted effect (they must hold); the resampling and clustering helpers they use are checked
against plain references (loops, scipy, scikit-learn).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lamina.studies import coffee_mi, mi_layers, mi_theory, punctuation_clusters
from lamina.studies._clusters_1d import best_silhouette, gaussian_reference, kmeans_1d, silhouette_1d
from lamina.studies._pair_resampling import bootstrap_indices, pair_kendall, pair_means
from lamina.studies.base import StudyOutput

#: Token positions of "coffee" in the built-in paragraph (SmolLM2's tokenizer): the pair distances of the study.
COFFEE_POSITIONS = np.array([2, 7, 38, 52, 73, 92, 111])


def _find(claims: list[dict], start: str) -> dict:
    hits = [c for c in claims if c["claim"].startswith(start)]
    assert len(hits) == 1, [c["claim"] for c in claims]
    return hits[0]


# ---------------------------------------------------------------- helpers against plain references


def test_pair_bootstrap_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    n = 7
    A = rng.random((3, n, n))
    A = A + np.swapaxes(A, -1, -2)
    D = np.abs(COFFEE_POSITIONS[:, None] - COFFEE_POSITIONS[None, :]).astype(float)
    idx = bootstrap_indices(n, 150, seed=0)
    means, taus = pair_means(A, idx), pair_kendall(A, D, idx)
    iu, ju = np.triu_indices(n, 1)
    for b, draw in enumerate(idx):
        ok = draw[iu] != draw[ju]  # pairs of two different draws
        x, y = A[:, draw[iu][ok], draw[ju][ok]], D[draw[iu][ok], draw[ju][ok]]
        np.testing.assert_allclose(means[:, b], x.mean(axis=-1), rtol=1e-12)  # same sums, other order
        for layer in range(3):
            want = sps.kendalltau(x[layer], y).statistic if ok.sum() > 1 else np.nan
            np.testing.assert_allclose(taus[layer, b], want, rtol=1e-12, equal_nan=True)
    # The identity resample is the plain upper-triangle mean.
    np.testing.assert_allclose(pair_means(A, np.arange(n)[None])[:, 0], A[:, iu, ju].mean(axis=1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "three_modes", "ties"])
def test_exact_1d_kmeans_and_silhouette_match_scikit_learn(kind):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    v = {"gaussian": rng.standard_normal(600),
         "three_modes": np.r_[rng.normal(0, 1, 250), rng.normal(6, 1, 250), rng.normal(12, 0.5, 100)],
         "ties": rng.integers(0, 6, 400).astype(float)}[kind]
    u, w = np.unique(v, return_counts=True)
    for k, (bounds, sse) in enumerate(kmeans_1d(u, w.astype(float), 4), start=1):
        labels = np.searchsorted(bounds[1:], np.searchsorted(u, v), side="right")
        assert np.bincount(labels).size == k
        inertia = KMeans(k, n_init=10, random_state=0).fit(v.reshape(-1, 1)).inertia_
        assert sse <= inertia * (1 + 1e-9)  # the exact optimum is never worse than Lloyd's local optimum
        if k > 1:  # the same labels give scikit-learn's silhouette to rounding
            assert silhouette_1d(u, w.astype(float), bounds) == pytest.approx(
                silhouette_score(v.reshape(-1, 1), labels), abs=1e-10)


def test_one_dimensional_kmeans_finds_clusters_in_any_sample():
    # Why "silhouette > 0.5" is no test: unimodal samples score above it; three real modes score far above the
    # Gaussian reference the study uses as its null.
    reference = np.array(gaussian_reference(600, 39, 0))
    assert reference.min() > 0.5
    rng = np.random.default_rng(3)
    modes = np.r_[rng.normal(0, 1, 200), rng.normal(8, 1, 200), rng.normal(16, 1, 200)]
    assert best_silhouette(modes)[0] > reference.max() + 0.1  # well clear of the reference band
    assert best_silhouette(rng.standard_normal(600))[0] < reference.max() + 0.03  # inside it (sd ~0.01)


# ---------------------------------------------------------------- coffee-mi


def _coffee(X, **settings):
    config = coffee_mi.CoffeeMIConfig(knn=False, n_bias_draws=3, n_bootstrap=200, **settings)
    results, arrays = coffee_mi.analyse(X, COFFEE_POSITIONS, 2, config)
    return StudyOutput(results, [], arrays=arrays), config


def _random_walk_occurrences(rng, n_layers=8, d=300):
    """Vectors that share the prefix of a random walk: nearby occurrences share more (a planted effect)."""
    steps = rng.standard_normal((n_layers, COFFEE_POSITIONS.max() + 1, d))
    return np.cumsum(steps, axis=1)[:, COFFEE_POSITIONS]


def test_coffee_claims_do_not_hold_without_a_distance_effect():
    rng = np.random.default_rng(5)
    X = {s: rng.standard_normal((8, 7, 300)) for s in coffee_mi.SITES}  # independent occurrences, no outliers
    output, config = _coffee(X)
    claims = coffee_mi.claims(output, config, None)
    verdicts = {c["claim"]: c["verdict"] for c in claims}
    assert _find(claims, "Kendall tau")["verdict"] != "holds"
    assert _find(claims, "tau is negative in almost every layer")["verdict"] == "does not hold"
    assert _find(claims, "Trimming")["verdict"] == "does not hold"  # no outliers: gain 1 = the null's gain
    assert _find(claims, "Attention MI is higher")["verdict"] != "holds", verdicts
    learned = _find(claims, "The distance effect is learned")
    assert learned["verdict"] == "inconclusive" and learned["null_reason"] == "baseline run skipped"
    # The bias baseline of independent vectors is the MI itself: the corrected MI is ~0.
    corrected = [p["attn"]["mean_mi_corrected"] for p in output.results["per_layer"]]
    bias = [p["attn"]["bias_mean"] for p in output.results["per_layer"]]
    assert np.max(np.abs(corrected)) < 0.1 * np.min(bias)  # 3 draws: the bias mean is known to a few percent


def test_coffee_claims_hold_with_a_planted_distance_effect():
    rng = np.random.default_rng(6)
    X = {s: _random_walk_occurrences(rng) for s in coffee_mi.SITES}
    output, config = _coffee(X)
    claims = coffee_mi.claims(output, config, None)
    assert _find(claims, "Kendall tau")["verdict"] == "holds"
    assert _find(claims, "tau is negative in almost every layer")["verdict"] == "holds"
    # The same data as its own "baseline": no difference, so the learned-effect claim cannot hold.
    base = coffee_mi.claims(output, config, output)
    assert _find(base, "The distance effect is learned")["verdict"] == "does not hold"


def test_coffee_trim_null_is_the_gain_of_permuted_copies():
    from lamina.stats import naive_mutual_information

    rng = np.random.default_rng(2)
    X = rng.standard_t(2, (5, 200))  # heavy tails: trimming removes dimensions
    gains = coffee_mi._trim_gain_null(X, 15, 4.0, 3, seed=7)
    copies = np.random.default_rng(7).permuted(np.broadcast_to(X, (3, *X.shape)), axis=-1)
    for t in range(3):
        pairs = [(a, b) for a in range(5) for b in range(a + 1, 5)]
        trimmed = np.mean([naive_mutual_information(copies[t, a], copies[t, b], trim_z=4.0) for a, b in pairs])
        raw = np.mean([naive_mutual_information(copies[t, a], copies[t, b]) for a, b in pairs])
        assert gains[t] == pytest.approx(trimmed / raw, rel=1e-10)  # compiled kernels vs histogram2d


# ---------------------------------------------------------------- punctuation-clusters


def _punctuation(hidden):
    config = punctuation_clusters.PunctuationConfig(n_per_type=hidden.shape[1] // 2, n_bias_vectors=10,
                                                    n_bias_draws=2, n_bootstrap=200, plot_points=20)
    results, arrays = punctuation_clusters.analyse(hidden, config, {"internal": 1, "terminal": 1})
    return StudyOutput(results, [], arrays=arrays), config


def test_punctuation_claims_do_not_hold_on_independent_vectors():
    hidden = np.random.default_rng(8).standard_normal((6, 60, 256))
    output, config = _punctuation(hidden)
    claims = punctuation_clusters.claims(output, config, None)
    assert _find(claims, "Within-type MI exceeds")["verdict"] != "holds"
    assert _find(claims, "Mean MI slowly declines")["verdict"] != "holds"
    assert _find(claims, "At layer 1 covariance separates")["verdict"] != "holds"
    assert _find(claims, "Mean covariance grows")["verdict"] == "does not hold"
    layer0 = _find(claims, "At layer 0")
    assert layer0["by_construction"] and not layer0["counted"]


def test_punctuation_claims_hold_with_a_planted_decline_and_growth():
    rng = np.random.default_rng(9)
    weight = np.linspace(3.0, 1.0, 6)[:, None, None]  # a shared component that fades with depth
    shared = rng.standard_normal((1, 1, 256))
    scale = (2.0 ** np.arange(6))[:, None, None]  # and a residual stream that doubles every layer
    hidden = scale * (weight * shared + rng.standard_normal((6, 60, 256)))
    output, config = _punctuation(hidden)
    claims = punctuation_clusters.claims(output, config, None)
    assert _find(claims, "Within-type MI exceeds")["verdict"] == "holds"
    assert _find(claims, "Mean MI slowly declines")["verdict"] == "holds"
    assert _find(claims, "Mean covariance grows")["verdict"] == "holds"  # (32 / 3)^2 ~ 114-fold
    assert _find(claims, "The covariance clusters blur")["verdict"] != "holds"  # no clusters to merge
    assert _find(claims, "Correlation removes")["by_construction"]  # |r| ~0.9 at layer 1 cannot grow 10-fold


# ---------------------------------------------------------------- mi-layers


def _mi_layers(hidden):
    config = mi_layers.MILayersConfig(n_bias_vectors=12, n_bias_draws=2, n_bootstrap=200, n_permutations=39)
    results, arrays = mi_layers.analyse(hidden, config)
    return StudyOutput(results, [], arrays=arrays), config


def test_mi_layers_claims_do_not_hold_on_independent_tokens():
    output, config = _mi_layers(np.random.default_rng(10).standard_normal((5, 40, 256)))
    claims = mi_layers.claims(output, config, None)
    assert _find(claims, "Token vectors share information")["verdict"] != "holds"
    assert _find(claims, "Within a layer")["verdict"] != "holds"


def test_mi_layers_claims_hold_with_a_planted_shared_factor():
    rng = np.random.default_rng(11)
    loading = rng.uniform(0.2, 2.0, (1, 40, 1))  # each token carries the layer's shared factor at its own strength
    hidden = loading * rng.standard_normal((5, 1, 256)) + rng.standard_normal((5, 40, 256))
    output, config = _mi_layers(hidden)
    claims = mi_layers.claims(output, config, None)
    assert _find(claims, "Token vectors share information")["verdict"] == "holds"
    assert _find(claims, "Within a layer")["verdict"] == "holds"


def test_mi_layers_joint_mantel_statistic_is_spearman_per_layer():
    rng = np.random.default_rng(12)
    A, B = rng.random((2, 3, 9, 9))
    A, B = A + np.swapaxes(A, -1, -2), B + np.swapaxes(B, -1, -2)
    observed, null = mi_layers._joint_mantel(A, B, 20, seed=0)
    iu = np.triu_indices(9, 1)
    for layer in range(3):
        assert observed[layer] == pytest.approx(sps.spearmanr(A[layer][iu], B[layer][iu]).statistic, abs=1e-12)
    assert null.shape == (20, 3) and np.all(np.abs(null) <= 1 + 1e-12)


# ---------------------------------------------------------------- mi-theory

SMALL_THEORY = {"n_samples": 2000, "n_pairs": 30, "pair_samples": 500, "sample_sizes": (100, 1000, 5000),
                "repeats": 8, "bin_sweep": (5, 15, 25), "n_permutations": 39, "n_bootstrap": 200}


def test_mi_theory_dependence_claims_fail_when_y_is_almost_independent():
    config = mi_theory.MITheoryConfig(noise=1000.0, **SMALL_THEORY)  # rho = 0.001: MI ~1e-6 bits, far below bias
    output = mi_theory.compute(None, config, {})
    claims = mi_theory.claims(output, config, None)
    assert _find(claims, "H(x, y) < H(x) + H(y)")["verdict"] != "holds"
    assert _find(claims, "y = x + noise has much more MI")["verdict"] != "holds"
    bias = _find(claims, "Independent data still give")
    assert bias["by_construction"] and not bias["counted"]


def test_mi_theory_claims_hold_on_the_lesson_data():
    config = mi_theory.MITheoryConfig(**SMALL_THEORY)
    claims = mi_theory.claims(mi_theory.compute(None, config, {}), config, None)
    for start in ("H(x, y) < H(x) + H(y)", "y = x + noise has much more MI", "The bias shrinks"):
        assert _find(claims, start)["verdict"] == "holds"
    first_order = mi_theory.first_order_bias(15, 10000)
    assert first_order == pytest.approx(14**2 / (2 * 10000 * np.log(2)), rel=1e-15)  # (B - 1)^2 / (2 n ln 2)
