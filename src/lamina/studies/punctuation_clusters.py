"""punctuation-clusters: internal vs terminal punctuation through the layers, MI vs covariance.

Protocol (STUDIES.md section 2): windows of 20 tokens + a mark + 10 tokens from a prose corpus (comma =
internal, period not next to a digit = terminal), the hidden state of the mark at every layer (embeddings +
every block), all pairwise MI (trim |z| > 5) and covariances (ddof=1), plus correlation; how they relate
layer by layer, and whether covariance shows clusters that MI does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, residual_sites, select
from ..errors import LaminaError
from ..stats import correlate, correlation_matrix, covariance_matrix, pairwise_mutual_information
from .base import Claim, StudyOutput, register, scaled_layer
from .texts import corpus_text

GROUPS = ("internal", "terminal", "mixed")


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
        seed: sampling seed.
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

    def __post_init__(self):
        if self.n_per_type < 3 or self.before < 1 or self.after < 0 or self.skip_tokens < 0:
            raise LaminaError("n_per_type must be >= 3, before >= 1, after >= 0 and skip_tokens >= 0")
        if self.terminal_rule not in ("not-digit", "sentence"):
            raise LaminaError(f"terminal_rule must be not-digit or sentence (got {self.terminal_rule!r})")


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


def _silhouette(values: np.ndarray, rng) -> tuple[float, int]:
    """Best silhouette of k-means with k = 2..4 on standardised 1-D values (subsampled to 1500)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    v = values if values.size <= 1500 else rng.choice(values, 1500, replace=False)
    if np.ptp(v) == 0:
        return 0.0, 1
    z = ((v - v.mean()) / v.std()).reshape(-1, 1)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    best = (-1.0, 1)
    for k in (2, 3, 4):
        with warnings.catch_warnings():  # fewer distinct values than k (e.g. layer 0) is expected here
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(k, n_init=4, random_state=0).fit_predict(z)
        if len(set(labels)) > 1:
            best = max(best, (float(silhouette_score(z, labels)), k))
    return best


@register("punctuation-clusters", "Commas vs periods through every layer: MI vs covariance vs correlation",
          PunctuationConfig)
def compute(model, config: PunctuationConfig, inputs) -> StudyOutput:
    text, source = corpus_text(inputs.get("corpus"))
    windows = find_windows(model, text, config)
    texts = windows["internal"] + windows["terminal"]
    acts = capture(model, texts, residual_sites(model), positions=select.index(config.before), cache=True)
    hidden = acts.residual_stream().double().numpy()  # (L+1, 2n, d)
    n = config.n_per_type
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
                      "mean_corr": float(r_vals[mask].mean())}
            k = len(picks[g])
            plot_cov[layer, g_i, :k] = c_vals[picks[g]]
            plot_mi[layer, g_i, :k] = m_vals[picks[g]]
        row["r_mi_cov"] = correlate(m_vals, c_vals).r
        internal = group_of["internal"]
        row["cov_silhouette"], row["cov_k"] = _silhouette(c_vals[internal], rng)
        row["mi_silhouette"], row["mi_k"] = _silhouette(m_vals[internal], rng)
        row["distinct_vectors"] = {kind: int(len(np.unique(np.round(hidden[layer][labels == t], 6), axis=0)))
                                   for t, kind in enumerate(("internal", "terminal"))}
        per_layer.append(row)
    results = {"corpus": source, "n_internal": n, "n_terminal": n, "bins": n_bins, "deep_layer": deep,
               "n_hidden_layers": n_layers, "per_layer": per_layer}
    arrays = {"plot_cov": plot_cov, "plot_mi": plot_mi, "plot_counts": np.array([len(picks[g]) for g in GROUPS])}
    for name, layer in (("layer1", min(1, n_layers - 1)), ("deep", deep)):
        arrays[f"mi_{name}"] = mi[layer].astype(np.float32)
        arrays[f"cov_{name}"] = cov[layer].astype(np.float32)
    return StudyOutput(results, _claims(per_layer), resolved={"bins": n_bins, "deep_layer": deep}, arrays=arrays)


def _claims(pl: list[dict]) -> list[dict]:
    last = len(pl) - 1
    mean = lambda key, g="internal": np.array([p[g][key] for p in pl])  # noqa: E731
    mi_all = (mean("mean_mi") + mean("mean_mi", "terminal")) / 2
    cov_all = (mean("mean_cov") + mean("mean_cov", "terminal")) / 2
    corr_all = (mean("mean_corr") + mean("mean_corr", "terminal")) / 2
    cov_growth = float(np.max(cov_all[1:]) / cov_all[1]) if len(pl) > 1 and cov_all[1] > 0 else float("nan")
    corr_growth = float(np.max(np.abs(corr_all[1:])) / abs(corr_all[1])) if len(pl) > 1 and corr_all[1] \
        else float("nan")
    mi_trend = correlate(np.arange(1, len(pl)), mi_all[1:], "spearman").r if len(pl) > 3 else float("nan")
    sil = np.array([p["cov_silhouette"] for p in pl])
    l1 = pl[min(1, last)]
    late = sil[len(pl) // 2:].mean()
    d0 = pl[0]["distinct_vectors"]
    return [
        Claim("At layer 0 all vectors of one token are identical: the scatter collapses to a few points",
              "a few points at layer 0", d0, max(d0.values()) <= 3),
        Claim("At layer 1 covariance separates internal punctuation into clusters that MI hardly shows",
              "3 clusters in covariance at layer 1",
              {"cov_silhouette": l1["cov_silhouette"], "cov_k": l1["cov_k"], "mi_silhouette": l1["mi_silhouette"]},
              l1["cov_silhouette"] > 0.5 and l1["cov_silhouette"] > l1["mi_silhouette"]),
        Claim("The covariance clusters blur and merge with depth", "merged around layers 7-9 of 24",
              {"silhouette_layer1": l1["cov_silhouette"], "silhouette_late_mean": float(late)},
              l1["cov_silhouette"] > late),
        Claim("Mean MI slowly declines with depth", "slow decline", {"spearman_mi_vs_layer": mi_trend},
              None if np.isnan(mi_trend) else mi_trend < 0),
        Claim("Mean covariance grows tens of times with depth (scale dependence)", ">= 10x",
              {"max_over_layer1": cov_growth}, None if np.isnan(cov_growth) else cov_growth >= 10),
        Claim("Correlation removes the growth", "no scale growth", {"max_over_layer1": corr_growth},
              None if np.isnan(corr_growth + cov_growth) else corr_growth < cov_growth / 5),
    ]


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

    fig, axes = new_figure(1, 4, size=(17, 3.6))
    layers = [p["layer"] for p in pl]
    for g in GROUPS:
        for ax, key in zip(axes[0], ("mean_mi", "mean_cov", "mean_corr")):
            ax.plot(layers, [p[g][key] for p in pl], color=colors[g], label=g)
    axes[0, 1].set_yscale("symlog")
    for ax, title in zip(axes[0], ("mean MI (bits)", "mean covariance (symlog)", "mean correlation")):
        ax.set(title=title, xlabel="layer")
    axes[0, 0].legend(fontsize=7)
    axes[0, 3].plot(layers, [p["cov_silhouette"] for p in pl], label="covariance")
    axes[0, 3].plot(layers, [p["mi_silhouette"] for p in pl], label="MI")
    axes[0, 3].set(title="clusterability (best k-means silhouette)", xlabel="layer")
    axes[0, 3].legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Per-layer means of MI, covariance and correlation, "
                  "and how clustered the internal-internal values are"))
    return files
