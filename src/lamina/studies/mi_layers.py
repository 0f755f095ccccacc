"""mi-layers: pairwise mutual information between token vectors through every layer, beside covariance and
correlation (the chapter's "MI vs covariance" lesson).

For every hidden state (embeddings + every block) the histogram MI between all pairs of token vectors of one
text (the vector's dimensions are the samples), and the covariance and Pearson correlation of the same pairs:
their per-layer means and distributions, and how they relate. MI is invariant to each vector's scale;
covariance is not, so it follows the growth of the residual stream's norm.

Nulls (issue 11): the histogram-MI bias of the very vectors (dimension-permuted copies of a subset of tokens,
:func:`lamina.stats.mutual_information_bias`) beside the MI of every layer and subtracted from it; a bootstrap
over tokens (pairs of two different draws) for every per-layer mean and ratio; a Mantel test (tokens relabelled,
the same relabelling at every layer) for the within-layer agreement of MI with |r|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import residual_sites, tokenize
from ..errors import LaminaError
from ..stats import (
    correlate,
    correlation_matrix,
    covariance_matrix,
    empirical_null,
    fixed_histogram,
    masked_correlation_matrix,
    mutual_information_bias,
    pairwise_mutual_information,
    trim_mask,
    upper_triangle,
)
from ._pair_resampling import bootstrap_indices, pair_means, percentile_ci
from .base import StudyOutput, register
from .claims import Claim, decide
from .kept_rows import capture_rows
from .texts import PHILOSOPHER_PARAGRAPH, default_text

N_HIST_BINS = 60

#: The bias band drawn in the figures: one independent (dimension-permuted) pair's MI lies within mean +- 2 sd
#: (~95% for a normal spread).
BAND = 2.0

#: "MI ranks pairs like |r|": a median rank correlation at least this large ("large" by Cohen's convention; for
#: Gaussian pairs MI = -log(1 - r^2) / 2 is monotone in |r|, so the ideal is 1).
STRONG_RANK_AGREEMENT = 0.5


@dataclass(frozen=True)
class MILayersConfig:
    """Settings of mi-layers.

    Attributes:
        bins, trim_z: histogram MI settings (trim |z| > trim_z within each vector; None keeps everything).
        skip_first: leave out the first token (the attention sink, whose vector is unlike all others).
        max_tokens: use at most this many tokens of the text (pairs grow with the square).
        seed: seed of the bias permutations, the bootstrap and the Mantel relabellings.
        alpha: significance level of the claims' tests.
        n_bias_vectors: tokens (evenly spaced) whose dimension-permuted copies give the MI bias baseline.
        n_bias_draws: permutations per vector for the bias baseline.
        n_bootstrap: token resamples of the bootstrap CIs.
        n_permutations: token relabellings of the Mantel test.
    """

    bins: int | str = 15
    trim_z: float | None = 5.0
    skip_first: bool = True
    max_tokens: int = 400
    seed: int = 0
    alpha: float = 0.05
    n_bias_vectors: int = 48
    n_bias_draws: int = 3
    n_bootstrap: int = 400
    n_permutations: int = 99

    def __post_init__(self):
        from . import _checks as check

        check.bins("bins", self.bins)
        check.trim_z("trim_z", self.trim_z)
        check.at_least("max_tokens", self.max_tokens, 5)
        check.seed("seed", self.seed)
        check.between("alpha", self.alpha, 0, 1)
        check.at_least("n_bias_vectors", self.n_bias_vectors, 3)
        check.at_least("n_bias_draws", self.n_bias_draws, 2)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% percentile CI needs ~100 resamples
        check.at_least("n_permutations", self.n_permutations, 20)  # p >= 1/(N+1): fewer never reach p < 0.05


def _joint_mantel(A: np.ndarray, B: np.ndarray, n_permutations: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer Spearman between the upper triangles of A and B (L, n, n), observed and under token relabellings
    of B applied to every layer at once.

    Returns:
        (observed (L,), null (n_permutations, L)).
    """
    from scipy import stats as sps

    n = A.shape[-1]
    i, j = np.triu_indices(n, 1)

    def standardised_ranks(M):
        r = sps.rankdata(upper_triangle(M), axis=-1)
        r -= r.mean(axis=-1, keepdims=True)
        return r / np.sqrt((r**2).sum(axis=-1, keepdims=True))

    za = standardised_ranks(A)  # (L, P)
    Zb = np.zeros(B.shape)
    Zb[:, i, j] = Zb[:, j, i] = standardised_ranks(B)
    observed = (za * Zb[:, i, j]).sum(axis=-1)
    flat_b = Zb.reshape(B.shape[0], n * n).astype(np.float32)  # float32 for speed: null values to ~1e-6
    za32 = za.astype(np.float32)
    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, A.shape[0]))
    for t in range(n_permutations):
        p = rng.permutation(n)
        null[t] = np.einsum("lk,lk->l", za32, np.take(flat_b, p[i] * n + p[j], axis=1))
    return observed, null


@register("mi-layers", "Pairwise MI between token vectors through every layer, beside covariance and correlation",
          MILayersConfig)
def compute(model, config: MILayersConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), PHILOSOPHER_PARAGRAPH)
    hidden = token_vectors(model, text, config)  # (L + 1, T, d)
    if hidden.shape[1] < 5:
        raise LaminaError(f"the text gives {hidden.shape[1]} tokens; mi-layers needs at least 5")
    results, arrays = analyse(hidden, config)
    return StudyOutput({**text_info, **results}, [], arrays=arrays, resolved={"bins": results["bins_resolved"]})


def token_vectors(model, text: str, config: MILayersConfig) -> np.ndarray:
    """The hidden states of the analysed tokens (after ``skip_first``, at most ``max_tokens``), float64.

    Only those rows are kept (``KeepRows``, float32 as captured), so memory grows with ``max_tokens``, not with
    the text.

    Returns:
        (L + 1, T, d) float64.
    """
    n = len(tokenize(model, [text])[0].ids)
    start = 1 if config.skip_first else 0
    keep = np.arange(start, min(n, start + config.max_tokens))
    if keep.size == 0:
        return np.zeros((model.n_layers + 1, 0, model.d_model))
    sites = residual_sites(model)
    kept = capture_rows(model, text, sites, where=keep)
    return np.stack([kept[s].numpy() for s in sites]).astype(np.float64)


def analyse(hidden: np.ndarray, config: MILayersConfig) -> tuple[dict, dict]:
    """Everything mi-layers computes from the token vectors (tests call it on synthetic data).

    Args:
        hidden: (L + 1, T, d) hidden states of T tokens (already cut by ``skip_first`` and ``max_tokens``).
        config: the study's settings.

    Returns:
        (results, arrays) of the StudyOutput (results without the text fields).
    """
    n_tokens = hidden.shape[1]
    mi, bins = pairwise_mutual_information(hidden, bins=config.bins, trim_z=config.trim_z, return_bins=True)
    cov, corr = covariance_matrix(hidden), correlation_matrix(hidden)
    keep = trim_mask(hidden, config.trim_z) if config.trim_z is not None else np.ones(hidden.shape, bool)
    trimmed = masked_correlation_matrix(hidden, keep)  # over the dimensions MI keeps
    mi_pairs, cov_pairs = upper_triangle(mi), upper_triangle(cov)  # (L + 1, n_pairs)
    corr_pairs, trimmed_pairs = upper_triangle(corr), upper_triangle(trimmed)

    subset = np.unique(np.linspace(0, n_tokens - 1, min(config.n_bias_vectors, n_tokens)).round().astype(int))
    bias = mutual_information_bias(hidden[:, subset], bins=bins, trim_z=config.trim_z, n_draws=config.n_bias_draws,
                                   seed=config.seed)
    pair_mean, pair_sd = upper_triangle(bias.mean), upper_triangle(bias.sd)  # (L + 1, subset pairs)
    bias_mean = pair_mean.mean(axis=1)
    bias_sd = np.sqrt((pair_sd**2).mean(axis=1) + pair_mean.var(axis=1))  # over draws and pairs: one pair's bias
    idx = bootstrap_indices(n_tokens, config.n_bootstrap, config.seed)
    bias_boot = pair_means(bias.mean, bootstrap_indices(subset.size, config.n_bootstrap, config.seed + 1))
    boot_mi = pair_means(mi, idx) - bias_boot  # (L + 1, B) bias-corrected; tokens and the bias subset resampled
    boot_cov = pair_means(np.abs(cov), idx)
    boot_trimmed = pair_means(np.abs(trimmed), idx)
    spearman, null = _joint_mantel(mi, np.abs(trimmed), config.n_permutations, config.seed)

    per_layer = []
    for layer in range(hidden.shape[0]):
        m, c, r, rt = mi_pairs[layer], cov_pairs[layer], corr_pairs[layer], trimmed_pairs[layer]
        per_layer.append({
            "layer": layer, "mi_mean": float(m.mean()), "mi_median": float(np.median(m)),
            "mi_p10": float(np.percentile(m, 10)), "mi_p90": float(np.percentile(m, 90)),
            "bias_mean": float(bias_mean[layer]), "bias_sd": float(bias_sd[layer]),
            "mi_mean_corrected": float(m.mean() - bias_mean[layer]),
            "mi_corrected_ci": list(percentile_ci(boot_mi[layer])),
            "cov_mean": float(c.mean()), "cov_mean_abs": float(np.abs(c).mean()), "corr_mean": float(r.mean()),
            "corr_mean_abs": float(np.abs(r).mean()), "norm_mean": float(np.linalg.norm(hidden[layer], axis=1).mean()),
            "trimmed_corr_mean": float(rt.mean()), "trimmed_corr_mean_abs": float(np.abs(rt).mean()),
            "outlier_dims_per_token": float((~keep[layer]).sum(axis=1).mean()),
            "spearman_mi_vs_abs_corr": correlate(m, np.abs(r), "spearman").r,
            "spearman_mi_vs_abs_trimmed_corr": float(spearman[layer]),
            "mantel_null_sd": float(null[:, layer].std()),
            "spearman_mi_vs_cov": correlate(m, c, "spearman").r,
        })
    edges = {"mi": np.linspace(0, max(float(mi_pairs.max()), 1e-9), N_HIST_BINS + 1),
             "corr": np.linspace(-1, 1, N_HIST_BINS + 1)}
    arrays = {"mi_hist": fixed_histogram(mi_pairs, edges["mi"]), "mi_edges": edges["mi"],
              "corr_hist": fixed_histogram(corr_pairs, edges["corr"]), "corr_edges": edges["corr"],
              "boot_mi": boot_mi, "boot_cov_abs": boot_cov, "boot_trimmed_abs": boot_trimmed,
              "mantel_null_median": np.median(null, axis=1)}
    rng = np.random.default_rng(config.seed)
    shown = rng.choice(mi_pairs.shape[1], min(2000, mi_pairs.shape[1]), replace=False)  # scatter plots only
    arrays.update({"scatter_mi": mi_pairs[:, shown], "scatter_corr": corr_pairs[:, shown],
                   "scatter_cov": cov_pairs[:, shown]})
    results = {"n_tokens": int(n_tokens), "n_pairs": int(mi_pairs.shape[1]), "bins_resolved": int(bins),
               "n_bias_vectors": int(subset.size), "n_bias_draws": config.n_bias_draws,
               "n_bootstrap": config.n_bootstrap, "n_permutations": config.n_permutations, "per_layer": per_layer}
    return results, arrays


def claims(output: StudyOutput, config: MILayersConfig, baseline: StudyOutput | None) -> list[dict]:
    pl, a, alpha = output.results["per_layer"], output.arrays, config.alpha
    out = [_scale_claim(pl, a, alpha), _rank_claim(pl, a, alpha), _across_claim(pl, a, alpha),
           _above_bias_claim(pl)]
    return out


def _scale_claim(pl: list[dict], a: dict, alpha: float) -> dict:
    claim = "Covariance follows the growth of the residual stream's scale; MI does not"
    first = 1 if len(pl) > 2 else 0  # the first block's output: the embeddings have a different scale
    cov_ratio = pl[-1]["cov_mean_abs"] / max(pl[first]["cov_mean_abs"], 1e-300)
    mi_first, mi_last = pl[first]["mi_mean_corrected"], pl[-1]["mi_mean_corrected"]
    measured = {"cov_abs_last_over_first_block": cov_ratio,
                "norm_squared_last_over_first_block": (pl[-1]["norm_mean"] / pl[first]["norm_mean"]) ** 2,
                "mi_corrected_last_over_first_block": mi_last / mi_first if mi_first > 0 else None}
    criterion = ("|covariance| ratio (last / first block) > bias-corrected MI ratio, with the token-bootstrap 95% CI "
                 "of log(|cov| ratio / MI ratio) above 0")
    null = {"what": "both grow alike (log ratio of the two ratios 0)", "value": 0.0}
    if mi_first <= 0 or mi_last <= 0:
        return Claim(claim, source="lamina", expected="|cov| grows much more than MI", criterion=criterion,
                     measured=measured, null=null, note="the bias-corrected MI is not positive: no ratio",
                     verdict=decide(None))
    with np.errstate(invalid="ignore", divide="ignore"):
        log_boot = (np.log(a["boot_cov_abs"][-1] / a["boot_cov_abs"][first])
                    - np.log(a["boot_mi"][-1] / a["boot_mi"][first]))
    ci = percentile_ci(log_boot[np.isfinite(log_boot)])
    value = float(np.log(cov_ratio) - np.log(mi_last / mi_first))
    measured["log_ratio_of_ratios"] = value
    return Claim(claim, source="lamina", expected="|cov| grows much more than MI", criterion=criterion,
                 measured=measured, null=null, test="token bootstrap", ci=ci,
                 note="MI of a pair is unchanged when either vector is rescaled, so a pure scale change moves only "
                      "covariance",
                 verdict=decide(value > 0, ci[0] > 0))


def _rank_claim(pl: list[dict], a: dict, alpha: float) -> dict:
    spearman = np.array([p["spearman_mi_vs_abs_trimmed_corr"] for p in pl])
    median = float(np.median(spearman))
    test = empirical_null(median, a["mantel_null_median"], alternative="greater",
                          method="Mantel: tokens relabelled, the same relabelling at every layer")
    return Claim("Within a layer, MI ranks token pairs like the strength of their correlation (over the dimensions "
                 "MI keeps)", source="lamina", expected="Spearman(MI, |r|) high",
                 criterion=f"median over layers of Spearman(MI, |r trimmed|) over token pairs >= "
                           f"{STRONG_RANK_AGREEMENT} and its joint Mantel p < {alpha}",
                 measured={"median_over_layers_trimmed_r": median,
                           "median_over_layers_raw_r": float(np.median([p["spearman_mi_vs_abs_corr"] for p in pl]))},
                 null={"what": "median Spearman under relabelled tokens (Mantel)", "mean": test.null_mean,
                       "sd": test.null_sd, "n": test.n_permutations},
                 test="joint Mantel permutation test (Spearman)", p=test.p,
                 verdict=decide(median >= STRONG_RANK_AGREEMENT, test.p < alpha))


def _across_claim(pl: list[dict], a: dict, alpha: float) -> dict:
    from scipy import stats as sps

    claim = "Across layers, mean MI and mean |correlation| rise and fall together"
    criterion = (f"Spearman over layers between the bias-corrected mean MI and mean |r trimmed| > 0, with p < {alpha} "
                 "(layers as independent: optimistic, neighbouring layers are alike) and the token-bootstrap 95% CI "
                 "above 0")
    if len(pl) < 3:
        return Claim(claim, source="lamina", criterion=criterion, measured={"n_layers": len(pl)},
                     null_reason="fewer than 3 layers", verdict=decide(None))
    res = correlate([p["mi_mean_corrected"] for p in pl], [p["trimmed_corr_mean_abs"] for p in pl], "spearman")
    rm, rt = sps.rankdata(a["boot_mi"], axis=0), sps.rankdata(a["boot_trimmed_abs"], axis=0)
    rm, rt = rm - rm.mean(axis=0), rt - rt.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (rm * rt).sum(axis=0) / np.sqrt((rm**2).sum(axis=0) * (rt**2).sum(axis=0))
    ci = percentile_ci(boot)
    return Claim(claim, source="lamina", expected="positive Spearman over layers", criterion=criterion,
                 measured={"spearman_over_layers_trimmed_r": res.r},
                 null={"what": "no association over layers", "mean": 0.0, "sd": 1 / np.sqrt(len(pl) - 1)},
                 test="Spearman over layers + token bootstrap", p=res.p, ci=ci,
                 verdict=decide(res.r > 0, res.p < alpha and ci[0] > 0))


def _above_bias_claim(pl: list[dict]) -> dict:
    blocks = pl[1:] if len(pl) > 1 else pl
    corrected = np.array([p["mi_mean_corrected"] for p in blocks])
    lows = np.array([p["mi_corrected_ci"][0] for p in blocks])
    bias = np.array([p["bias_mean"] for p in blocks])
    return Claim("Token vectors share information beyond the estimator's bias at every layer after the embeddings",
                 source="lamina",
                 criterion="bias-corrected mean MI > 0 at every block output, each 95% CI above 0 (a bootstrap over "
                           "the tokens and over the tokens that estimate the bias); the embeddings are left out: a "
                           "repeated token is one vector there in rotary models, and its pairs carry its full entropy",
                 measured={"min_corrected_mi": float(corrected.min()),
                           "mean_mi": float(np.mean([p["mi_mean"] for p in blocks])), "mean_bias": float(bias.mean()),
                           "layers_with_ci_above_0": int((lows > 0).sum()), "n_layers": len(blocks)},
                 null={"what": "MI of dimension-permuted copies (independent vectors), mean over layers",
                       "mean": float(bias.mean()), "sd": float(np.mean([p["bias_sd"] for p in blocks]))},
                 test="bootstrap (tokens and bias subset)",
                 verdict=decide(bool((corrected > 0).all()), bool((lows > 0).all())))


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    import matplotlib

    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    layers = np.array([p["layer"] for p in pl])
    files = []
    fig, axes = new_figure(1, 3, size=(15, 4))
    axes[0, 0].plot(layers, [p["mi_mean"] for p in pl], label="mean")
    axes[0, 0].fill_between(layers, [p["mi_p10"] for p in pl], [p["mi_p90"] for p in pl], alpha=0.3,
                            label="10-90% of pairs")
    bias, sd = np.array([p["bias_mean"] for p in pl]), np.array([p["bias_sd"] for p in pl])
    axes[0, 0].fill_between(layers, bias - BAND * sd, bias + BAND * sd, color="k", alpha=0.2,
                            label=f"bias: permuted copies, mean ± {BAND:g} sd")
    axes[0, 0].set(title="pairwise MI between token vectors", xlabel="layer", ylabel="bits")
    axes[0, 1].plot(layers, [p["cov_mean_abs"] for p in pl], label="mean |covariance|")
    axes[0, 1].plot(layers, [p["norm_mean"] for p in pl], label="mean vector norm")
    axes[0, 1].set(title="covariance follows the scale", xlabel="layer", yscale="log")
    axes[0, 2].plot(layers, [p["corr_mean"] for p in pl], label="mean r")
    axes[0, 2].plot(layers, [p["corr_mean_abs"] for p in pl], label="mean |r|")
    axes[0, 2].plot(layers, [p["trimmed_corr_mean"] for p in pl], label="mean r, outlier dims trimmed")
    axes[0, 2].plot(layers, [p["spearman_mi_vs_abs_corr"] for p in pl], ls=":", label="Spearman(MI, |r|)")
    sp = np.array([p["spearman_mi_vs_abs_trimmed_corr"] for p in pl])
    band = 1.96 * np.array([p["mantel_null_sd"] for p in pl])
    axes[0, 2].plot(layers, sp, ls="--", label="Spearman(MI, |r trimmed|)")
    axes[0, 2].fill_between(layers, -band, band, color="tab:purple", alpha=0.15, label="Mantel null ± 1.96 sd")
    axes[0, 2].set(title="correlation", xlabel="layer")
    if base is not None:
        axes[0, 0].plot(layers, [p["mi_mean"] for p in base], color="grey", ls="--", lw=1, label="random-init")
        axes[0, 1].plot(layers, [p["cov_mean_abs"] for p in base], color="grey", ls="--", lw=1,
                        label="random-init |covariance|")
        axes[0, 2].plot(layers, [p["trimmed_corr_mean"] for p in base], color="grey", ls="--", lw=1,
                        label="random-init r trimmed")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    files.append((save(fig, folder, "per_layer", svg=True), "Per-layer MI (with the estimator's bias band), "
                  "covariance and correlation; grey dashed: the random-init copy"))

    fig, axes = new_figure(1, 2, size=(12, 4))
    cmap = matplotlib.colormaps["viridis"]
    for key, ax, label in (("mi", axes[0, 0], "MI (bits)"), ("corr", axes[0, 1], "Pearson r")):
        edges = a[f"{key}_edges"]
        mid = (edges[:-1] + edges[1:]) / 2
        for layer, row in enumerate(a[f"{key}_hist"]):
            ax.plot(mid, row / max(row.sum(), 1), color=cmap(layer / max(1, len(pl) - 1)), lw=0.8)
        ax.set(title=f"{label} over token pairs, one line per layer", xlabel=label, ylabel="fraction of pairs")
    files.append((save(fig, folder, "distributions"), "Distributions per layer (dark = early, yellow = late)"))

    shown = sorted(set(np.linspace(1 if len(pl) > 2 else 0, len(pl) - 1, 4).astype(int)))
    fig, axes = new_figure(2, len(shown), size=(3.6 * len(shown), 6.5))
    for i, layer in enumerate(shown):
        axes[0, i].scatter(a["scatter_corr"][layer], a["scatter_mi"][layer], s=3, alpha=0.5)
        axes[0, i].set(title=f"layer {layer}", xlabel="r", ylabel="MI")
        axes[1, i].scatter(a["scatter_cov"][layer], a["scatter_mi"][layer], s=3, alpha=0.5, color="tab:orange")
        axes[1, i].set(xlabel="covariance", ylabel="MI")
    files.append((save(fig, folder, "scatter"), "MI vs correlation and vs covariance for 2000 sampled pairs"))
    return files
