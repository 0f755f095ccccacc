"""punctuation-clusters: internal vs terminal punctuation through the layers, MI vs covariance.

Protocol (STUDIES.md section 2): windows of 20 tokens + a mark + 10 tokens from a prose corpus (comma =
internal, period not next to a digit = terminal), the hidden state of the mark at every layer (embeddings +
every block), all pairwise MI (trim |z| > 5) and covariances (ddof=1), plus correlation; how they relate
layer by layer, and whether covariance shows clusters that MI does not.

Nulls (issue 11): the histogram-MI bias of the very vectors (dimension-permuted copies of a seeded subset,
:func:`lamina.stats.mutual_information_bias`) beside every MI and subtracted from it; a bootstrap over the marks
(within each type, pairs of two different draws) for every per-layer mean; trend tests for "declines" and
"merge"; and for "clusters", the best k-means silhouette of a Gaussian sample of the same size (1-D k-means
finds "clusters" in any sample: see :mod:`lamina.studies._clusters_1d`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, residual_sites, select
from ..errors import LaminaError
from ..stats import (correlate, correlation_matrix, covariance_matrix, mutual_information_bias,
                     pairwise_mutual_information)
from ._clusters_1d import best_silhouette, gaussian_reference
from ._pair_resampling import bootstrap_indices, pair_means, percentile_ci
from .base import StudyOutput, register, scaled_layer
from .punctuation_claims import BAND, claims, within  # noqa: F401 - the framework reads `claims`
from .texts import corpus_text

GROUPS = ("internal", "terminal", "mixed")

#: Gaussian reference samples for the silhouette null (39 draws: the smallest p is 1/40 < 0.05).
N_REFERENCE = 39


@dataclass(frozen=True)
class PunctuationConfig:
    """Settings of punctuation-clusters.

    Attributes:
        n_per_type: windows per punctuation type (seeded sample when more are found).
        before, after: context tokens before and after the mark (the mark sits at index ``before``).
        skip_tokens: corpus tokens skipped at the start (front matter).
        terminal_rule: ``"not-digit"`` (the original: any period not next to a digit) or ``"sentence"``
            (also followed by white space: excludes code such as ``os.path`` in technical prose).
        bins, trim_z: MI settings (trim |z| > 5 in this protocol).
        deep_layer: the deep layer drawn beside layer 1 (None: layer 16 of 24 scaled to the model).
        plot_points: pairs per group and layer kept for the scatter plots (plotting only).
        seed: sampling seed (windows, bias subset and permutations, bootstrap, silhouette subsamples).
        alpha: significance level of the claims' tests.
        n_bias_vectors: marks per type whose dimension-permuted copies give the MI bias baseline.
        n_bias_draws: permutations per vector for the bias baseline.
        n_bootstrap: resamples of the marks for the bootstrap CIs.
    """

    n_per_type: int = 250
    before: int = 20
    after: int = 10
    skip_tokens: int = 400
    terminal_rule: str = "sentence"
    bins: int | str = 15
    trim_z: float | None = 5.0
    deep_layer: int | None = None
    plot_points: int = 400
    seed: int = 0
    alpha: float = 0.05
    n_bias_vectors: int = 24
    n_bias_draws: int = 3
    n_bootstrap: int = 400

    def __post_init__(self):
        from . import _checks as check

        check.at_least("n_per_type", self.n_per_type, 3)
        check.at_least("before", self.before, 1)
        check.at_least("after", self.after, 0)
        check.at_least("skip_tokens", self.skip_tokens, 0)
        check.choice("terminal_rule", self.terminal_rule, ("not-digit", "sentence"))
        check.bins("bins", self.bins)
        check.trim_z("trim_z", self.trim_z)
        check.layer("deep_layer", self.deep_layer)
        check.at_least("plot_points", self.plot_points, 1)
        check.seed("seed", self.seed)
        check.between("alpha", self.alpha, 0, 1)
        check.at_least("n_bias_vectors", self.n_bias_vectors, 3)
        check.at_least("n_bias_draws", self.n_bias_draws, 2)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% percentile CI needs ~100 resamples

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("deep_layer", self.deep_layer, model.n_layers + 1, model.name, "hidden states")


def find_windows(model, text: str, config: PunctuationConfig) -> dict[str, list[list[int]]]:
    """Token windows around commas and periods; the mark at index ``before`` of each window."""
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = enc["input_ids"]
    offsets = enc["offset_mapping"]
    strings = {i: model.tokenizer.decode([i]).strip() for i in set(ids)}
    found: dict[str, list[int]] = {"internal": [], "terminal": []}
    lo, hi = max(config.skip_tokens, config.before), len(ids) - config.after
    for k in range(lo, hi):
        s = strings[ids[k]]
        if s == ",":
            found["internal"].append(k)
        elif s == ".":
            start, end = offsets[k]
            prev_c = text[start - 1] if start > 0 else " "
            next_c = text[end] if end < len(text) else " "
            if prev_c.isdigit() or next_c.isdigit():
                continue
            if config.terminal_rule == "sentence" and not next_c.isspace():
                continue
            found["terminal"].append(k)
    rng = np.random.default_rng(config.seed)
    windows = {}
    for kind, where in found.items():
        if len(where) < config.n_per_type:
            raise LaminaError(f"found only {len(where)} {kind} marks with full windows in the corpus; ask for "
                              f"fewer (--set n_per_type={len(where)}) or pass a larger --corpus")
        chosen = np.sort(rng.choice(len(where), config.n_per_type, replace=False))
        windows[kind] = [ids[where[c] - config.before: where[c] + config.after + 1] for c in chosen]
    return windows


def _bias_by_group(hidden, config, n_bins, rng) -> dict:
    """Per-layer MI bias of dimension-permuted copies of a seeded subset of marks: mean and pair sd per group,
    and a bootstrap of the within-type mean over the subset (``"within_boot"``, shape (L + 1, B))."""
    n = hidden.shape[1] // 2
    m = min(config.n_bias_vectors, n)
    subset = np.r_[np.sort(rng.choice(n, m, replace=False)), n + np.sort(rng.choice(n, m, replace=False))]
    bias = mutual_information_bias(hidden[:, subset], bins=n_bins, trim_z=config.trim_z,
                                   n_draws=config.n_bias_draws, seed=config.seed)
    lab = np.r_[np.zeros(m, int), np.ones(m, int)]
    iu = np.triu_indices(2 * m, 1)
    li, lj = lab[iu[0]], lab[iu[1]]
    masks = {"internal": (li == 0) & (lj == 0), "terminal": (li == 1) & (lj == 1), "mixed": li != lj}
    mean, sd = bias.mean[:, iu[0], iu[1]], bias.sd[:, iu[0], iu[1]]
    out = {g: {"mean": mean[:, k].mean(axis=1),  # sd over draws and pairs: the spread of one pair's bias
               "sd": np.sqrt((sd[:, k] ** 2).mean(axis=1) + mean[:, k].var(axis=1))} for g, k in masks.items()}
    # The within-type bias mean over resampled subset marks: how well the subset pins down the bias.
    idx = bootstrap_indices(m, config.n_bootstrap, config.seed + 1)  # independent of the marks' resamples
    out["within_boot"] = np.mean([pair_means(bias.mean[:, s, s], idx) for s in (slice(0, m), slice(m, 2 * m))],
                                 axis=0)  # (L + 1, B)
    return out


@register("punctuation-clusters", "Commas vs periods through every layer: MI vs covariance vs correlation",
          PunctuationConfig)
def compute(model, config: PunctuationConfig, inputs) -> StudyOutput:
    text, source = corpus_text(inputs.get("corpus"))
    windows = find_windows(model, text, config)
    texts = windows["internal"] + windows["terminal"]
    acts = capture(model, texts, residual_sites(model), positions=select.index(config.before), cache=True)
    hidden = acts.residual_stream().double().numpy()  # (L+1, 2n, d)
    mark_tokens = {k: len({w[config.before] for w in windows[k]}) for k in windows}
    results, arrays = analyse(hidden, config, mark_tokens)
    return StudyOutput({"corpus": source, **results}, [], resolved={"bins": results["bins"],
                                                                    "deep_layer": results["deep_layer"]},
                       arrays=arrays)


def analyse(hidden: np.ndarray, config: PunctuationConfig, mark_tokens: dict[str, int]) -> tuple[dict, dict]:
    """Everything punctuation-clusters computes from the marks' hidden states (tests call it on synthetic data).

    Args:
        hidden: (L + 1, 2n, d) hidden states: n internal marks, then n terminal marks.
        config: the study's settings (``n_per_type`` is taken from ``hidden``).
        mark_tokens: distinct token ids among the marks of each type (``{"internal": k, "terminal": k}``).

    Returns:
        (results, arrays) of the StudyOutput (results without the corpus field).
    """
    n = hidden.shape[1] // 2
    labels = np.r_[np.zeros(n, int), np.ones(n, int)]
    mi, n_bins = pairwise_mutual_information(hidden, bins=config.bins, trim_z=config.trim_z, return_bins=True)
    cov = covariance_matrix(hidden)
    corr = correlation_matrix(hidden)
    iu = np.triu_indices(2 * n, 1)
    li, lj = labels[iu[0]], labels[iu[1]]
    group_of = {"internal": (li == 0) & (lj == 0), "terminal": (li == 1) & (lj == 1), "mixed": li != lj}
    n_layers = hidden.shape[0]
    deep = config.deep_layer if config.deep_layer is not None else scaled_layer(16, 24, n_layers - 1)
    if not 0 <= deep < n_layers:
        raise LaminaError(f"deep_layer must be in 0..{n_layers - 1}")
    rng = np.random.default_rng(config.seed)
    bias = _bias_by_group(hidden, config, n_bins, rng)
    idx = bootstrap_indices(n, config.n_bootstrap, config.seed)  # the same resamples within each type
    within = (slice(0, n), slice(n, 2 * n))
    boot = {name: np.mean([pair_means(M[:, s, s], idx) for s in within], axis=0)  # (L+1, B): mean of both types
            for name, M in (("mi", mi), ("cov", cov), ("corr", corr))}
    boot["mi"] = boot["mi"] - bias["within_boot"]  # bias-corrected; both the marks and the bias subset resampled
    per_layer = []
    plot_cov = np.zeros((n_layers, 3, config.plot_points))
    plot_mi = np.zeros_like(plot_cov)
    picks = {g: rng.choice(np.flatnonzero(m), min(config.plot_points, int(m.sum())), replace=False)
             for g, m in group_of.items()}
    for layer in range(n_layers):
        m_vals, c_vals, r_vals = mi[layer][iu], cov[layer][iu], corr[layer][iu]
        row = {"layer": layer}
        for g_i, (g, mask) in enumerate(group_of.items()):
            row[g] = {"mean_mi": float(m_vals[mask].mean()), "mean_cov": float(c_vals[mask].mean()),
                      "mean_corr": float(r_vals[mask].mean()), "bias_mean": float(bias[g]["mean"][layer]),
                      "bias_sd": float(bias[g]["sd"][layer])}
            row[g]["mean_mi_corrected"] = row[g]["mean_mi"] - row[g]["bias_mean"]
            k = len(picks[g])
            plot_cov[layer, g_i, :k] = c_vals[picks[g]]
            plot_mi[layer, g_i, :k] = m_vals[picks[g]]
        row["mi_corrected_ci"] = list(percentile_ci(boot["mi"][layer]))
        row["r_mi_cov"] = correlate(m_vals, c_vals).r
        internal = group_of["internal"]
        row["cov_silhouette"], row["cov_k"] = best_silhouette(c_vals[internal], rng)
        row["mi_silhouette"], row["mi_k"] = best_silhouette(m_vals[internal], rng)
        row["distinct_vectors"] = {kind: int(len(np.unique(np.round(hidden[layer][labels == t], 6), axis=0)))
                                   for t, kind in enumerate(("internal", "terminal"))}
        per_layer.append(row)
    reference = gaussian_reference(int(internal.sum()), N_REFERENCE, config.seed)
    results = {"n_internal": n, "n_terminal": n, "bins": n_bins, "deep_layer": deep,
               "n_hidden_layers": n_layers, "per_layer": per_layer,
               "distinct_mark_tokens": dict(mark_tokens),
               "silhouette_reference": {"what": "best k-means silhouette of Gaussian samples of the same size",
                                        "values": list(reference)},
               "n_bias_vectors_per_type": min(config.n_bias_vectors, n), "n_bias_draws": config.n_bias_draws,
               "n_bootstrap": config.n_bootstrap}
    arrays = {"plot_cov": plot_cov, "plot_mi": plot_mi, "plot_counts": np.array([len(picks[g]) for g in GROUPS]),
              "boot_mi": boot["mi"], "boot_cov": boot["cov"], "boot_corr": boot["corr"]}
    for name, layer in (("layer1", min(1, n_layers - 1)), ("deep", deep)):
        arrays[f"mi_{name}"] = mi[layer].astype(np.float32)
        arrays[f"cov_{name}"] = cov[layer].astype(np.float32)
    return results, arrays


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    n_layers = len(pl)
    cols = int(np.ceil(np.sqrt(n_layers)))
    rows = int(np.ceil(n_layers / cols))
    fig, axes = new_figure(rows, cols, size=(2.6 * cols, 2.3 * rows))
    colors = {"internal": "tab:blue", "terminal": "tab:red", "mixed": "tab:gray"}
    counts = a["plot_counts"]
    for layer in range(rows * cols):
        ax = axes[layer // cols, layer % cols]
        if layer >= n_layers:
            ax.axis("off")
            continue
        for g_i, g in enumerate(GROUPS):
            k = counts[g_i]
            ax.scatter(a["plot_cov"][layer, g_i, :k], a["plot_mi"][layer, g_i, :k], s=2, alpha=0.4,
                       color=colors[g], label=g)
        ax.set_title(f"layer {layer}: r={pl[layer]['r_mi_cov']:.2f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6, markerscale=4)
    fig.supxlabel("covariance")
    fig.supylabel("MI (bits)")
    files = [(save(fig, folder, "scatter_grid"), "Covariance (x) vs MI (y) for every hidden-state layer; "
              "blue internal-internal, red terminal-terminal, grey mixed pairs (subsampled for plotting)")]

    fig, axes = new_figure(2, 4, size=(15, 7))
    for row, (name, layer) in enumerate((("layer1", min(1, n_layers - 1)), ("deep", r["deep_layer"]))):
        for col, (kind, label) in enumerate((("mi", "MI"), ("cov", "covariance"))):
            m = a[f"{kind}_{name}"]
            im = axes[row, 2 * col].imshow(m, cmap="viridis")
            axes[row, 2 * col].set_title(f"{label}, layer {layer}", fontsize=9)
            fig.colorbar(im, ax=axes[row, 2 * col], shrink=0.7)
            axes[row, 2 * col + 1].hist(m[np.triu_indices(len(m), 1)], bins=80, color="tab:purple")
            axes[row, 2 * col + 1].set_title(f"{label} histogram, layer {layer}", fontsize=9)
    files.append((save(fig, folder, "matrices"), "MI and covariance matrices (internal first, then terminal) "
                  "with their histograms at layer 1 and a deep layer"))

    files.append(_per_layer_figure(output, folder, new_figure, save, colors))
    return files


def _per_layer_figure(output, folder, new_figure, save, colors):
    r = output.results
    pl = r["per_layer"]
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    layers = np.array([p["layer"] for p in pl])
    fig, axes = new_figure(1, 4, size=(18, 3.8))
    for g in GROUPS:
        for ax, key in zip(axes[0], ("mean_mi", "mean_cov", "mean_corr")):
            ax.plot(layers, [p[g][key] for p in pl], color=colors[g], label=g)
    bias, sd = within(pl, "bias_mean"), within(pl, "bias_sd")
    axes[0, 0].fill_between(layers, bias - BAND * sd, bias + BAND * sd, color="k", alpha=0.15,
                            label=f"bias: permuted copies, mean ± {BAND:g} sd")
    sil_ref = np.array(r["silhouette_reference"]["values"])
    axes[0, 3].plot(layers, [p["cov_silhouette"] for p in pl], label="covariance")
    axes[0, 3].plot(layers, [p["mi_silhouette"] for p in pl], label="MI")
    axes[0, 3].axhspan(*np.quantile(sil_ref, [0.025, 0.975]), color="k", alpha=0.15,
                       label="Gaussian reference 95%")
    if base is not None:
        for ax, key in zip(axes[0], ("mean_mi", "mean_cov", "mean_corr")):
            ax.plot(layers, within(base, key), color="grey", ls="--", lw=1, label="random-init (within-type)")
        axes[0, 3].plot(layers, [p["cov_silhouette"] for p in base], color="grey", ls="--", lw=1,
                        label="random-init (covariance)")
    axes[0, 1].set_yscale("symlog")
    for ax, title in zip(axes[0], ("mean MI (bits) and its bias", "mean covariance (symlog)", "mean correlation",
                                   "clusterability (best k-means silhouette)")):
        ax.set(title=title, xlabel="layer")
        ax.legend(fontsize=6)
    return (save(fig, folder, "per_layer", svg=True), "Per-layer means of MI (with the estimator's bias band), "
            "covariance and correlation, and how clustered the internal-internal values are (band: the silhouette "
            "of Gaussian samples of the same size); grey dashed: the random-init copy")
