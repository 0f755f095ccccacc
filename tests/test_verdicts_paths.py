"""Verdicts of path-length, token-length and logit-lens: each headline claim fails (is not `holds`) on data with
no effect and holds where the effect is planted; the studies' own statistics against plain numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lamina.studies.base import StudyOutput

# ---------------------------------------------------------------------------------------------------- path-length


def _paths(seed, *, n_layers=24, n_tokens=120, d=64, attn_sd=0.3, mlp_sd=0.3, align=0.0, sink=False,
           last_step=1.0):
    """Synthetic residual stream of a pre-norm model: per-token adjustment norms log-normal with the given
    spreads, random directions (plus ``align`` x the attention direction in the MLP's), h[l+1] = h[l] + a + m."""
    rng = np.random.default_rng(seed)

    def directions():
        v = rng.standard_normal((n_layers, n_tokens, d))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    a_dir = directions()
    m_dir = directions() + align * a_dir
    m_dir /= np.linalg.norm(m_dir, axis=-1, keepdims=True)
    attn = a_dir * np.exp(attn_sd * rng.standard_normal((n_layers, n_tokens, 1)))
    mlp = m_dir * np.exp(mlp_sd * rng.standard_normal((n_layers, n_tokens, 1)))
    if sink:  # token 0: a huge attention write that the MLP cancels (the hidden step stays ordinary)
        attn[:, 0] = 100 * a_dir[:, 0]
        mlp[:, 0] = -100 * a_dir[:, 0] + m_dir[:, 0]
    attn[-1] *= last_step
    mlp[-1] *= last_step
    hidden = np.concatenate([rng.standard_normal((1, n_tokens, d)), attn + mlp]).cumsum(axis=0)
    return hidden, attn, mlp


def _path_output(seed, **kw):
    from lamina.studies.path_length import PathLengthConfig, measure_paths

    config = PathLengthConfig(n_bootstrap=400)
    results, arrays = measure_paths(*_paths(seed, **kw), config)
    return StudyOutput(results, [], arrays=arrays), config


def _path_claims(seed, baseline_seed=None, baseline_kw=None, **kw):
    """The five claims (orthogonal, MLP > attention, token 0, Spearman, final step) on synthetic data."""
    from lamina.studies.path_length import claims

    out, config = _path_output(seed, **kw)
    base = None if baseline_seed is None else _path_output(baseline_seed, **(baseline_kw or {}))[0]
    return claims(out, config, base)


def test_path_length_mlp_beats_attention_needs_more_than_the_random_init_shows():
    same = _path_claims(0, baseline_seed=1)  # both "models" draw the norms the same way: no effect
    assert same[1]["verdict"] != "holds"
    planted = _path_claims(0, baseline_seed=1, mlp_sd=0.8, attn_sd=0.1, baseline_kw={"mlp_sd": 0.1, "attn_sd": 0.8})
    assert planted[1]["verdict"] == "holds"
    assert planted[1]["measured"]["fraction_of_layers_mlp_wins"] > 0.5
    # Without a baseline run the claim cannot be decided (its null is the random-init copy).
    alone = _path_claims(0, mlp_sd=0.8, attn_sd=0.1)
    assert alone[1]["verdict"] == "inconclusive" and alone[1]["null_reason"] == "baseline run skipped"


def test_path_length_orthogonality_token0_and_final_step_can_fail():
    plain = _path_claims(2)
    assert plain[0]["verdict"] == "holds"  # random directions are as orthogonal as the null says
    assert plain[2]["verdict"] == "does not hold"  # token 0 is an ordinary token: nothing collapses
    assert plain[4]["verdict"] != "holds"  # every block steps alike
    planted = _path_claims(2, align=-0.8, sink=True, last_step=5.0)
    assert planted[0]["verdict"] == "does not hold"  # the MLP partly cancels attention: |cos| far above random
    assert planted[0]["measured"]["mean_signed_cos_middle"] < 0
    assert planted[2]["verdict"] == "holds" and planted[2]["p"] < 0.05
    assert planted[4]["verdict"] == "holds" and planted[4]["p"] == pytest.approx(1 / 24)
    assert planted[3]["by_construction"] and not planted[3]["counted"]


def test_leave_one_in_influence_matches_scipy():
    from lamina.studies.path_length import leave_one_in_influence

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 25))
    y = x + rng.normal(size=(2, 25))
    x[:, 0], y[:, 0] = 40.0, -2.0
    y[1, 4] = y[1, 7]  # a tie for the ranks
    for method, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        got = leave_one_in_influence(x, y, method)
        for layer in range(2):
            base = fn(x[layer, 1:], y[layer, 1:])[0]
            want = [base - fn(x[layer], y[layer])[0]]
            for j in range(1, 25):
                keep = np.r_[1:j, j + 1:25]
                want.append(fn(x[layer, keep], y[layer, keep])[0] - base)
            np.testing.assert_allclose(got[layer], want, atol=1e-12)  # float64 sums of 25 values


def test_random_direction_null_and_bootstrap_ci_against_plain_references():
    from lamina.studies.path_length import bootstrap_indices, random_direction_abs_cos

    rng = np.random.default_rng(4)
    d, n = 48, 40000
    u, v = rng.standard_normal((2, n, d))
    cos = np.abs(np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1))
    null = random_direction_abs_cos(d)
    assert null["mean"] == pytest.approx(cos.mean(), abs=4 * cos.std() / np.sqrt(n))  # 4 standard errors
    assert null["sd"] == pytest.approx(cos.std(), rel=0.02)  # sd of a sample of 40000: ~0.4% error
    assert np.mean(cos > null["q99"]) == pytest.approx(0.01, abs=0.002)  # binomial sd 0.0005 at n = 40000
    out, config = _path_output(5, n_layers=3, n_tokens=30)
    idx = bootstrap_indices(29, config.n_bootstrap, config.seed)
    a, h = out.arrays["pl_attn"][1, 1:], out.arrays["pl_hidden"][1, 1:]
    boot = [np.corrcoef(a[i], h[i])[0, 1] for i in idx]
    np.testing.assert_allclose(out.results["per_layer"][1]["attn"]["pearson_ci"], np.quantile(boot, [0.025, 0.975]),
                               atol=1e-12)  # the same resamples, two float64 routes


# --------------------------------------------------------------------------------------------------- token-length


def _length_output(seed, slopes, *, n_tokens=1536, n_neurons=40, freq_only=False, n_bootstrap=300):
    """Synthetic activations: neuron j of layer l = slopes[l] x z(length) (or z(log frequency)) x weight_j +
    noise, with log frequency correlated -0.5 with length as in real text."""
    from lamina.studies.token_length import TokenLengthConfig, length_statistics

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, n_tokens).astype(float)
    z = (lengths - lengths.mean()) / lengths.std()
    log_freq = -0.5 * z + np.sqrt(0.75) * rng.standard_normal(n_tokens)
    drive = (log_freq - log_freq.mean()) / log_freq.std() if freq_only else z
    layers = []
    for layer, slope in enumerate(slopes):
        weights = 1 + 0.5 * rng.standard_normal(n_neurons)
        layers.append((layer, (slope * drive[:, None] * weights + rng.standard_normal((n_tokens, n_neurons)))
                       .astype(np.float32)))
    config = TokenLengthConfig(n_shuffles=20, n_bootstrap=n_bootstrap, bimodality_sample=2000, n_bimodality_null=3)
    stats_ = length_statistics(lengths, log_freq, layers, 1, config)
    arrays = stats_.pop("_arrays")
    return StudyOutput(stats_, [], arrays=arrays), config


def test_token_length_headline_claims_fail_without_an_effect_and_hold_when_planted():
    from lamina.studies.token_length import claims

    flat, config = _length_output(0, [0.0] * 6)
    verdicts = [c["verdict"] for c in claims(flat, config, None)]
    assert verdicts[0] != "holds" and verdicts[1] != "holds" and verdicts[4] != "holds"
    assert verdicts[5] == "inconclusive"  # the random-init comparison needs a baseline run
    planted, _ = _length_output(1, [0.6, -0.15, -0.15, -0.15, -0.15, 0.0])
    got = claims(planted, config, flat)
    assert got[0]["verdict"] == "holds" and got[1]["verdict"] == "holds"  # most negative; layer 0 positive
    assert got[5]["verdict"] == "holds"  # wider spread of r than the no-effect "random-init" run
    assert claims(flat, config, _length_output(2, [0.0] * 6)[0])[5]["verdict"] != "holds"


def test_token_length_frequency_confound_beats_a_random_covariate_only_when_frequency_drives():
    from lamina.studies.token_length import claims

    by_length, config = _length_output(3, [0.3] * 4)
    by_freq, _ = _length_output(3, [0.3] * 4, freq_only=True)
    assert claims(by_length, config, None)[4]["verdict"] != "holds"  # frequency shrinks r like any covariate
    confound = claims(by_freq, config, None)[4]
    assert confound["verdict"] == "holds" and confound["p"] < 0.05


def test_token_length_statistics_against_numpy():
    import torch

    from lamina.capture.reduce_runs import RunSums
    from lamina.studies.token_length import TokenLengthConfig, control_covariates, length_statistics

    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 12, 600).astype(float)
    log_freq = -0.05 * lengths + rng.standard_normal(600)
    A = (0.1 * lengths[:, None] * rng.standard_normal(40) + rng.standard_normal((600, 40))).astype(np.float32)
    config = TokenLengthConfig(n_shuffles=4, n_bootstrap=100, bimodality_sample=500, n_bimodality_null=2)
    out = length_statistics(lengths, log_freq, [(0, A), (1, -A)], 0, config)
    r = np.array([np.corrcoef(lengths, A[:, j])[0, 1] for j in range(40)])
    f = np.array([np.corrcoef(log_freq, A[:, j])[0, 1] for j in range(40)])
    layer0 = out["per_layer"][0]
    # float64 statistics of the same float32 values by two routes: agreement to float64 rounding.
    assert layer0["mean_r"] == pytest.approx(r.mean(), abs=1e-12)
    assert layer0["std_r"] == pytest.approx(r.std(), abs=1e-12)
    assert layer0["mean_r_log_freq"] == pytest.approx(f.mean(), abs=1e-12)
    assert out["per_layer"][1]["mean_r"] == pytest.approx(-r.mean(), abs=1e-12)
    assert layer0["activation_std"] == pytest.approx(A.astype(np.float64).std(), rel=1e-12)
    # Block bootstrap: one resample of the runs equals np.corrcoef on the tokens it picks.
    runs = np.arange(600) // 64
    sums = RunSums(lengths, runs)
    sums.update(torch.from_numpy(A), slice(0, 600))
    k = runs.max() + 1
    w = rng.multinomial(k, np.full(k, 1 / k), size=1).astype(float)
    rows = np.concatenate([np.arange(b * 64, min(600, b * 64 + 64)) for b in range(k) for _ in range(int(w[0, b]))])
    want = [np.corrcoef(lengths[rows], A[rows, j])[0, 1] for j in range(40)]
    # run sums kept in float32 (24-bit mantissa) against float64 np.corrcoef of the same rows: ~1e-7 in r
    np.testing.assert_allclose(sums.correlations(w).numpy()[0], want, atol=1e-6)
    rs = [np.corrcoef(lengths, c)[0, 1] for c in control_covariates(lengths, -0.5, 200, seed=0)]
    assert np.mean(rs) == pytest.approx(-0.5, abs=0.01)  # 200 draws of r at n = 600: sd of the mean ~0.002


# ----------------------------------------------------------------------------------------------------- logit-lens


def _lens_output(final_rank, *, vocab=1000, expected_ranks=(40, 30)):
    from lamina.studies.logit_lens import LogitLensConfig

    final_rank = np.asarray(final_rank, dtype=float)
    per_layer = [{"layer": layer, "final_log10_rank_mean": float(np.log10(row + 1).mean())}
                 for layer, row in enumerate(final_rank)]
    at_word = [{"top_tokens": ["x"], "expected_rank": r, "first_layer_expected_top1": None} for r in expected_ranks]
    results = {"kind": "causal", "per_layer": per_layer, "lens_vs_model_logits_max_abs": 0.0, "at_word": at_word,
               "layer": 3, "vocab_size": vocab}
    return StudyOutput(results, [], arrays={"final_rank": final_rank}), LogitLensConfig(n_bootstrap=200)


def _ranks(seed, *, n_states=13, n_positions=12, clean=False):
    """Lens ranks of the final prediction: falling steadily with depth (clean) or a noisy fall to 0 at the
    end, as a random stack gives."""
    rng = np.random.default_rng(seed)
    depth = np.arange(n_states)[:, None]
    if clean:
        ranks = np.maximum(0, (n_states - 1 - depth) * 40 + rng.integers(0, 5, (n_states, n_positions)))
        ranks[n_states // 2:] = np.minimum(ranks[n_states // 2:], 0)  # settled from mid-depth on
    else:
        ranks = rng.integers(0, 1000, (n_states, n_positions)) * (depth < n_states - 2)
    ranks[-1] = 0
    return ranks


def test_logit_lens_emergence_claims_need_more_than_the_random_init_shows():
    from lamina.studies.logit_lens import claims

    noisy, config = _lens_output(_ranks(0))
    same = claims(noisy, config, _lens_output(_ranks(1))[0])
    assert same[0]["by_construction"] and not same[0]["counted"]
    assert same[1]["verdict"] != "holds" and same[2]["verdict"] != "holds"
    clean, _ = _lens_output(_ranks(2, clean=True))
    planted = claims(clean, config, noisy)
    assert planted[1]["verdict"] == "holds" and planted[1]["p"] < 0.05
    assert planted[2]["measured"]["mean_settle_depth"] == pytest.approx(0.5)
    assert planted[2]["verdict"] != "holds"  # settles at mid-depth: not "only in the later layers"
    alone = claims(clean, config, None)
    assert alone[1]["verdict"] == "inconclusive" and alone[1]["null_reason"] == "baseline run skipped"


def test_logit_lens_expected_word_against_a_uniform_rank():
    from lamina.studies.logit_lens import claims

    out, config = _lens_output(_ranks(0), expected_ranks=(40, 30))
    missed = claims(out, config, None)[3]
    assert missed["verdict"] == "does not hold"
    assert missed["p"] == pytest.approx(1 - (1 - 31 / 1000) ** 2)  # best of two uniform ranks <= 30
    out, _ = _lens_output(_ranks(0), expected_ranks=(0, 500))
    assert claims(out, config, None)[3]["verdict"] == "holds"


def test_settle_depth_and_rank_trend_against_loops():
    from lamina.studies.logit_lens_claims import rank_trend, settle_depth

    ranks = _ranks(5)
    ranks[:, 0] = 0  # top-1 everywhere: settles at depth 0
    want = []
    for t in range(ranks.shape[1]):
        zero = ranks[:, t] == 0
        first = next(i for i in range(len(zero)) if zero[i:].all())
        want.append(first / (len(zero) - 1))
    np.testing.assert_allclose(settle_depth(ranks), want)
    rho = [stats.spearmanr(np.arange(ranks.shape[0]), ranks[:, t])[0] if np.ptp(ranks[:, t]) else 0.0
           for t in range(ranks.shape[1])]
    np.testing.assert_allclose(rank_trend(ranks), rho, atol=1e-12)  # Pearson of ranks, two float64 routes


@pytest.mark.slow  # ~20 s: two token-length runs; the baseline path itself runs in the default suite
def test_token_length_compare_random_stands_in_for_a_skipped_baseline(tiny_models, tmp_path, cache_dir):
    import json

    from lamina.studies import run_study

    settings = {"n_tokens": 300, "seq_len": 100, "compare": "random", "n_bootstrap": 100}
    folder = run_study("token-length", model=tiny_models["llama"], out=tmp_path / "t", overrides=settings,
                       reports_root=tmp_path, baseline="none")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["results"]["comparison"]["model"]["source"] == "random-init" and "results" not in doc["baseline"]
    learned = doc["claims"][5]
    assert learned["null"]["value"] == pytest.approx(
        np.mean([p["std_r"] for p in doc["results"]["comparison"]["per_layer"]]), abs=1e-12)
