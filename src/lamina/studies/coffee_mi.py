"""coffee-mi: mutual information between the contexts of a repeated word vs the token distance between them.

Protocol (STUDIES.md section 1): the attention output (after the output projection) at every occurrence of a
word; histogram MI between every pair of occurrence vectors with z-score trimming (|z| > 4 dropped in either
vector); Kendall's tau between MI and token distance over the pairs (distance is ordinal). Part 2 repeats it
for every layer and for the MLP output too, with a t-test attention vs MLP per layer, a Fisher z comparison of
the two taus, FDR over layers, and scikit-learn's kNN (KSG) estimator without trimming as a second opinion.

Nulls (issue 11):

- the histogram-MI bias: the MI of the very vectors after permuting each one's dimensions independently
  (:func:`lamina.stats.mutual_information_bias`), reported beside every MI and subtracted from it;
- tau's p-value: an exact Mantel test over the n! relabellings of the occurrences (the 21 pairs share
  occurrences, so scipy's p, which assumes independent pairs, is kept only for reference);
- layer profiles: a bootstrap over occurrences (pairs of two different draws) with one set of resamples for
  every layer, both sites and the random-init model, so their contrasts are paired;
- the trimming gain: the same gain on the dimension-permuted copies (trimming narrows the bins, which raises
  the MI of independent vectors too);
- the protocol's Fisher z comparison of two taus uses Kendall's variance 0.437 / (n - 4) (Fieller et al. 1957);
  it still treats the pairs as independent, so the occurrence-bootstrap CI of the difference sits beside it;
  the protocol's t-test over the 21 dependent pairs is kept as a number, the per-layer marks use the bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, select
from ..errors import LaminaError
from ..stats import (correct_pvalues, correlate, empirical_null, fisher_z_compare, independent_ttest, mantel_test,
                     mutual_information_bias, pairwise_mutual_information, trim_mask)
from ._pair_resampling import bootstrap_indices, pair_kendall, pair_means, percentile_ci
from .base import StudyOutput, register, scaled_layer
from .coffee_mi_claims import SITES, claims  # noqa: F401 - the framework reads `claims`
from .texts import COFFEE_PARAGRAPH, default_text

SITES = ("attn", "mlp")

#: Random relabellings of the occurrences when n! is too many to enumerate (n > 8; 7 occurrences are exact):
#: p >= 1/2000, below the 0.05/30 that FDR over 30 layers can ask of the smallest p.
MANTEL_ORDERINGS = 1999


@dataclass(frozen=True)
class CoffeeMIConfig:
    """Settings of coffee-mi (defaults from the protocol).

    Attributes:
        word: the repeated target word.
        layer: block of part 1; None = layer 3 of gpt2-xl's 48 scaled to the model's depth.
        bins: histogram bins per axis (the course's MI lesson used 15) or a bin rule.
        trim_z: drop dimensions with |z| above this in either vector (None: no trimming).
        knn: also compute scikit-learn's kNN MI (no trimming) for every layer.
        n_neighbors: k of the kNN estimator.
        correction: multiple-comparison correction over layers ("fdr_bh" or "bonferroni").
        alpha: significance level of every test (after correction for the per-layer marks).
        token: which token of a word split into several ("last", "first").
        seed: seed of the kNN jitter, the bias permutations, the Mantel orderings (when not exact) and the
            bootstrap.
        n_bias_draws: dimension permutations of every vector for the MI bias baseline.
        n_bootstrap: occurrence resamples of the bootstrap CIs.
    """

    word: str = "coffee"
    layer: int | None = None
    bins: int | str = 15
    trim_z: float | None = 4.0
    knn: bool = True
    n_neighbors: int = 3
    correction: str = "fdr_bh"
    alpha: float = 0.05
    token: str = "last"
    seed: int = 0
    n_bias_draws: int = 8
    n_bootstrap: int = 1000

    def __post_init__(self):
        from . import _checks as check

        if not self.word.strip():
            raise LaminaError("word must not be empty")
        check.layer("layer", self.layer)
        check.bins("bins", self.bins)
        check.trim_z("trim_z", self.trim_z)
        check.at_least("n_neighbors", self.n_neighbors, 1)
        check.choice("correction", self.correction, ("fdr_bh", "bonferroni"))
        check.between("alpha", self.alpha, 0, 1)
        check.choice("token", self.token, ("last", "first"))
        check.seed("seed", self.seed)
        check.at_least("n_bias_draws", self.n_bias_draws, 2)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% percentile CI needs ~100 resamples

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("layer", self.layer, model.n_layers, model.name)


def _trim_gain_null(X: np.ndarray, n_bins: int, trim_z: float, n_draws: int, seed) -> np.ndarray:
    """Trimmed / untrimmed mean pairwise MI of dimension-permuted copies of ``X`` (n, d): shape (n_draws,)."""
    rng = np.random.default_rng(seed)
    copies = rng.permuted(np.broadcast_to(X, (n_draws, *X.shape)), axis=-1)  # each vector's dims shuffled
    iu = np.triu_indices(X.shape[0], 1)
    trimmed = pairwise_mutual_information(copies, bins=n_bins, trim_z=trim_z)[:, iu[0], iu[1]].mean(axis=1)
    raw = pairwise_mutual_information(copies, bins=n_bins)[:, iu[0], iu[1]].mean(axis=1)
    return trimmed / raw


def _site(mi, bias, boot, tests) -> list[dict]:
    """Per-layer summary of one site: MI, its bias, the bias-corrected mean with its CI, tau and Mantel p."""
    iu = np.triu_indices(mi.shape[-1], 1)
    rows = []
    for m, b_mean, b_sd, b, test in zip(mi, bias.mean, bias.sd, boot, tests):
        raw, b_pairs = float(m[iu].mean()), float(b_mean[iu].mean())
        spread = np.sqrt(np.mean(b_sd[iu] ** 2) + np.var(b_mean[iu]))  # over draws and pairs: one pair's bias
        rows.append({"mean_mi": raw, "bias_mean": b_pairs, "bias_sd": float(spread),
                     "mean_mi_corrected": raw - b_pairs, "corrected_ci": list(percentile_ci(b)),
                     "tau": test.statistic, "p": test.p, "null_mean": test.null_mean, "null_sd": test.null_sd})
    return rows


@register("coffee-mi", "MI between the contexts of a repeated word vs token distance (attention/MLP, all layers)",
          CoffeeMIConfig)
def compute(model, config: CoffeeMIConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), COFFEE_PARAGRAPH)
    n_layers = model.n_layers
    layer = config.layer if config.layer is not None else scaled_layer(3, 48, n_layers)
    if not 0 <= layer < n_layers:
        raise LaminaError(f"layer {layer} is outside 0..{n_layers - 1} for {model.name}")
    acts = capture(model, text, "blocks.*.hook_attn_out,blocks.*.hook_mlp_out",
                   positions=select.word(config.word, token=config.token), cache=True)
    n = len(acts)
    if n < 3:
        raise LaminaError(f"the word {config.word!r} occurs {n} time(s) in the text; at least 3 are needed "
                          "(choose another --set word= or --text-file)")
    X = {"attn": acts.stack("hook_attn_out").double().numpy(), "mlp": acts.stack("hook_mlp_out").double().numpy()}
    results, arrays = analyse(X, acts.rows.position.astype(int), layer, config)
    results = {**text_info, "word": config.word, "tokens": list(acts.rows.token), **results}
    return StudyOutput(results, [], resolved={"layer": layer, "bins": results["bins"]}, arrays=arrays)


def analyse(X: dict[str, np.ndarray], positions: np.ndarray, layer: int, config: CoffeeMIConfig) -> tuple[dict, dict]:
    """Everything coffee-mi computes from the occurrence vectors (no model: tests call it on synthetic data).

    Args:
        X: ``{"attn": (L, n, d), "mlp": (L, n, d)}`` vectors of the n occurrences at every layer.
        positions: (n,) token positions of the occurrences.
        layer: the layer of part 1.
        config: the study's settings.

    Returns:
        (results, arrays) of the StudyOutput (results without the text fields).
    """
    positions = np.asarray(positions, dtype=int)
    n, n_layers = positions.size, X["attn"].shape[0]
    distance = np.abs(positions[:, None] - positions[None, :]).astype(float)
    iu = np.triu_indices(n, 1)
    mi_attn, n_bins = pairwise_mutual_information(X["attn"], bins=config.bins, trim_z=config.trim_z,
                                                  return_bins=True)
    mi = {"attn": mi_attn, "mlp": pairwise_mutual_information(X["mlp"], bins=n_bins, trim_z=config.trim_z)}
    bias = {s: mutual_information_bias(X[s], bins=n_bins, trim_z=config.trim_z, n_draws=config.n_bias_draws,
                                       seed=config.seed) for s in SITES}
    mi_attn_raw = pairwise_mutual_information(X["attn"][layer], bins=n_bins)
    tests = {s: [mantel_test(m, distance, method="kendall", alternative="less", seed=config.seed,
                             n_permutations=MANTEL_ORDERINGS)
                 for m in mi[s]] for s in SITES}

    idx = bootstrap_indices(n, config.n_bootstrap, config.seed)  # one set of resamples for everything
    corrected = np.stack([mi[s] - bias[s].mean for s in SITES])  # (2, L, n, n)
    boot = pair_means(corrected, idx)  # (2, L, B) bias-corrected mean MI
    tau_boot = pair_kendall(np.stack([mi[s] for s in SITES]), distance, idx)  # (2, L, B)
    sites = {s: _site(mi[s], bias[s], boot[k], tests[s]) for k, s in enumerate(SITES)}

    knn = None
    if config.knn:
        kw = {"estimator": "ksg", "n_neighbors": config.n_neighbors, "random_state": config.seed}
        knn = {s: np.nan_to_num(pairwise_mutual_information(X[s], **kw), nan=0.0) for s in SITES}  # diagonal 0
        knn_boot = pair_means(knn["attn"], idx)  # (L, B)

    n_pairs = len(iu[0])
    per_layer = []
    for l in range(n_layers):
        t, t_p = independent_ttest(mi["attn"][l][iu], mi["mlp"][l][iu])
        fz, fp = fisher_z_compare(sites["attn"][l]["tau"], n_pairs, sites["mlp"][l]["tau"], n_pairs,
                                  method="kendall") if n_pairs > 4 else (float("nan"), float("nan"))
        diff_ci = percentile_ci(boot[0, l] - boot[1, l])
        row = {"layer": l, "attn": sites["attn"][l], "mlp": sites["mlp"][l], "t": t, "t_p": t_p,
               "attn_minus_mlp_ci": list(diff_ci), "attn_vs_mlp_significant": bool(diff_ci[0] > 0 or diff_ci[1] < 0),
               "fisher_z": fz, "fisher_p": fp, "tau_diff_ci": list(percentile_ci(tau_boot[0, l] - tau_boot[1, l]))}
        if knn is not None:
            row["knn"] = {s: {"mean_mi": float(knn[s][l][iu].mean()),
                              "tau": correlate(knn[s][l][iu], distance[iu], "kendall").r} for s in SITES}
        per_layer.append(row)
    for s in SITES:
        sig, adj = correct_pvalues([r[s]["p"] for r in per_layer], config.correction, config.alpha)
        for r, si, a in zip(per_layer, sig, adj):
            r[s].update({"p_adjusted": float(a), "significant": bool(si)})

    mean_tau = np.mean([[r[s]["tau"] for r in per_layer] for s in SITES])
    joint = np.mean([t.null[1:] if t.exact else t.null for s in SITES for t in tests[s]], axis=0)
    joint_test = empirical_null(mean_tau, joint, alternative="less",
                                method="Mantel (Kendall), one relabelling of the occurrences for every layer and "
                                       "site; statistic: mean tau")
    trimmed_mean = float(mi["attn"][layer][iu].mean())
    raw_mean = float(mi_attn_raw[iu].mean())
    results = {
        "n_occurrences": n, "positions": positions.tolist(), "layer": layer, "bins": n_bins,
        "mi": mi["attn"][layer].tolist(), "mi_untrimmed": mi_attn_raw.tolist(),
        "mi_bias": bias["attn"].mean[layer].tolist(), "distance": distance.tolist(),
        "tau": sites["attn"][layer]["tau"], "p": sites["attn"][layer]["p"],
        "p_asymptotic": correlate(mi["attn"][layer][iu], distance[iu], "kendall").p,
        "mantel_null": {"mean": sites["attn"][layer]["null_mean"], "sd": sites["attn"][layer]["null_sd"],
                        "n": tests["attn"][layer].n_permutations, "exact": tests["attn"][layer].exact},
        "tau_untrimmed": correlate(mi_attn_raw[iu], distance[iu], "kendall").r,
        "mean_mi": trimmed_mean, "mean_mi_untrimmed": raw_mean,
        "trim_gain": trimmed_mean / raw_mean if raw_mean > 0 else None,
        "trim_gain_null": (_trim_gain_null(X["attn"][layer], n_bins, config.trim_z, config.n_bias_draws,
                                           config.seed).tolist() if config.trim_z is not None else None),
        "mean_tau": float(mean_tau), "mean_tau_test": joint_test.as_dict(),
        "n_bias_draws": config.n_bias_draws, "n_bootstrap": config.n_bootstrap,
        "per_layer": per_layer,
    }
    if knn is not None:
        kt = mantel_test(knn["attn"][layer], distance, method="kendall", alternative="less", seed=config.seed,
                         n_permutations=MANTEL_ORDERINGS)
        results["knn_tau"], results["knn_p"] = kt.statistic, kt.p
        results["knn_null"] = {"mean": kt.null_mean, "sd": kt.null_sd}
    keep = trim_mask(X["attn"][layer, :2], config.trim_z)
    outlier = ~(keep[0] & keep[1])
    results["n_outlier_dims_pair_1_2"] = int(outlier.sum())
    with np.errstate(invalid="ignore"):  # a resample of one distinct occurrence has no pair: NaN, skipped later
        mean_tau_boot = tau_boot.mean(axis=(0, 1))
    arrays = {"scatter_x": X["attn"][layer, 0], "scatter_y": X["attn"][layer, 1], "scatter_outlier": outlier,
              "boot_mi": boot, "boot_mean_tau": mean_tau_boot}
    if knn is not None:
        arrays["boot_knn"] = knn_boot
    return results, arrays


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    files = []
    fig, ax = new_figure()
    ax = ax[0, 0]
    out = a["scatter_outlier"].astype(bool)
    ax.scatter(a["scatter_x"][~out], a["scatter_y"][~out], s=6, alpha=0.6, label="kept")
    ax.scatter(a["scatter_x"][out], a["scatter_y"][out], s=14, color="crimson", label=f"|z| > trim ({out.sum()})")
    ax.set(xlabel="occurrence 1", ylabel="occurrence 2", title=f"attention output, layer {r['layer']}")
    ax.legend(fontsize=8)
    files.append((save(fig, folder, "scatter_occurrences"), "Occurrence 1 vs 2 (every dimension), outliers marked"))

    fig, axes = new_figure(1, 3, size=(15, 4))
    panels = (("mi", "MI (bits, trimmed)"), ("mi_bias", "bias: MI of permuted copies"), ("distance", "token distance"))
    for ax, (key, title) in zip(axes[0], panels):
        im = ax.imshow(np.array(r[key]), cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    files.append((save(fig, folder, "matrices"), f"Pairwise MI, its bias baseline and distance, layer {r['layer']}"))

    fig, ax = new_figure()
    ax = ax[0, 0]
    iu = np.triu_indices(r["n_occurrences"], 1)
    dist = np.array(r["distance"])[iu]
    ax.scatter(dist, np.array(r["mi"])[iu], label=f"trimmed: tau={r['tau']:.2f}")
    ax.scatter(dist, np.array(r["mi_untrimmed"])[iu], marker="x", label=f"untrimmed: tau={r['tau_untrimmed']:.2f}")
    ax.scatter(dist, np.array(r["mi_bias"])[iu], marker=".", color="grey", label="bias (permuted copies)")
    ax.set(xlabel="token distance", ylabel="MI (bits)",
           title=f"MI vs distance, layer {r['layer']} (Mantel p={r['p']:.3g})")
    ax.legend(fontsize=8)
    files.append((save(fig, folder, "mi_vs_distance"), "MI against token distance with Kendall's tau and the "
                  "exact Mantel p"))
    files.append(_per_layer_figure(output, folder, new_figure, save))
    return files


def _per_layer_figure(output, folder, new_figure, save):
    r = output.results
    pl = r["per_layer"]
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    layers = np.array([p["layer"] for p in pl])
    fig, axes = new_figure(1, 2, size=(12, 4))
    for key, color in (("attn", "tab:blue"), ("mlp", "tab:orange")):
        mi = np.array([p[key]["mean_mi"] for p in pl])
        bias = np.array([p[key]["bias_mean"] for p in pl])
        sd = np.array([p[key]["bias_sd"] for p in pl])
        axes[0, 0].plot(layers, mi, color=color, label=f"{key} (histogram)")
        axes[0, 0].fill_between(layers, bias - 2 * sd, bias + 2 * sd, color=color, alpha=0.2,
                                label=f"{key} bias: permuted copies, mean ± 2 sd")
        if "knn" in pl[0]:
            axes[0, 0].plot(layers, [p["knn"][key]["mean_mi"] for p in pl], color=color, ls=":",
                            label=f"{key} (kNN)")
        taus = np.array([p[key]["tau"] for p in pl])
        lo = np.array([p[key]["null_mean"] - 1.96 * p[key]["null_sd"] for p in pl])
        hi = np.array([p[key]["null_mean"] + 1.96 * p[key]["null_sd"] for p in pl])
        axes[0, 1].plot(layers, taus, color=color, label=key)
        axes[0, 1].fill_between(layers, lo, hi, color=color, alpha=0.15, label=f"{key} Mantel null ± 1.96 sd")
        sig = [i for i, p in enumerate(pl) if p[key]["significant"]]
        axes[0, 1].scatter(layers[sig], taus[sig], color=color, marker="*", s=80)
        if base is not None:
            axes[0, 0].plot(layers, [p[key]["mean_mi"] for p in base], color="grey", ls="--", lw=1,
                            label="random-init (both sites)" if key == "attn" else None)
            axes[0, 1].plot(layers, [p[key]["tau"] for p in base], color="grey", ls="--", lw=1,
                            label="random-init" if key == "attn" else None)
    sig_t = [i for i, p in enumerate(pl) if p["attn_vs_mlp_significant"]]
    axes[0, 0].scatter(layers[sig_t], [pl[i]["attn"]["mean_mi"] for i in sig_t], marker="*", color="k", s=60,
                       label="attn vs MLP: bootstrap CI excludes 0")
    axes[0, 0].set(xlabel="layer", ylabel="mean MI (bits)", title="mean MI per layer and the estimator's bias")
    axes[0, 1].axhline(0, color="grey", lw=0.8)
    axes[0, 1].set(xlabel="layer", ylabel="Kendall tau",
                   title="tau(MI, distance); * Mantel significant after correction")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    return (save(fig, folder, "per_layer", svg=True), "Part 2: mean MI per layer with the bias band (MI of "
            "dimension-permuted copies) and tau with the Mantel null band; grey dashed: the random-init copy")
