"""mi-layers: pairwise mutual information between token vectors through every layer, beside covariance and
correlation (the chapter's "MI vs covariance" lesson).

For every hidden state (embeddings + every block) the histogram MI between all pairs of token vectors of one
text (the vector's dimensions are the samples), and the covariance and Pearson correlation of the same pairs:
their per-layer means and distributions, and how they relate. MI is invariant to each vector's scale;
covariance is not, so it follows the growth of the residual stream's norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, residual_sites
from ..errors import LaminaError
from ..stats import (
    correlate,
    correlation_matrix,
    covariance_matrix,
    fixed_histogram,
    masked_correlation_matrix,
    pairwise_mutual_information,
    trim_mask,
    upper_triangle,
)
from .base import Claim, StudyOutput, register
from .texts import PHILOSOPHER_PARAGRAPH, default_text

N_HIST_BINS = 60


@dataclass(frozen=True)
class MILayersConfig:
    """Settings of mi-layers.

    Attributes:
        bins, trim_z: histogram MI settings (trim |z| > trim_z within each vector; None keeps everything).
        skip_first: leave out the first token (the attention sink, whose vector is unlike all others).
        max_tokens: use at most this many tokens of the text (pairs grow with the square).
    """

    bins: int | str = 15
    trim_z: float | None = 5.0
    skip_first: bool = True
    max_tokens: int = 400

    def __post_init__(self):
        if self.max_tokens < 5:
            raise LaminaError("max_tokens must be >= 5")


@register("mi-layers", "Pairwise MI between token vectors through every layer, beside covariance and correlation",
          MILayersConfig)
def compute(model, config: MILayersConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), PHILOSOPHER_PARAGRAPH)
    acts = capture(model, text, residual_sites(model), cache=True)
    hidden = acts.residual_stream().double().numpy()  # (L + 1, T, d)
    start = 1 if config.skip_first else 0
    hidden = hidden[:, start:start + config.max_tokens]
    if hidden.shape[1] < 5:
        raise LaminaError(f"the text gives {hidden.shape[1]} tokens; mi-layers needs at least 5")
    mi, bins = pairwise_mutual_information(hidden, bins=config.bins, trim_z=config.trim_z, return_bins=True)
    mi_pairs = upper_triangle(mi)  # (L + 1, n_pairs)
    cov_pairs = upper_triangle(covariance_matrix(hidden))
    corr_pairs = upper_triangle(correlation_matrix(hidden))
    keep = trim_mask(hidden, config.trim_z) if config.trim_z is not None else np.ones(hidden.shape, bool)
    trimmed_pairs = upper_triangle(masked_correlation_matrix(hidden, keep))  # the dimensions MI keeps
    per_layer = []
    for layer in range(hidden.shape[0]):
        m, c, r, rt = mi_pairs[layer], cov_pairs[layer], corr_pairs[layer], trimmed_pairs[layer]
        per_layer.append({
            "layer": layer, "mi_mean": float(m.mean()), "mi_median": float(np.median(m)),
            "mi_p10": float(np.percentile(m, 10)), "mi_p90": float(np.percentile(m, 90)),
            "cov_mean": float(c.mean()), "cov_mean_abs": float(np.abs(c).mean()), "corr_mean": float(r.mean()),
            "corr_mean_abs": float(np.abs(r).mean()), "norm_mean": float(np.linalg.norm(hidden[layer], axis=1).mean()),
            "trimmed_corr_mean": float(rt.mean()), "trimmed_corr_mean_abs": float(np.abs(rt).mean()),
            "outlier_dims_per_token": float((~keep[layer]).sum(axis=1).mean()),
            "spearman_mi_vs_abs_corr": correlate(m, np.abs(r), "spearman").r,
            "spearman_mi_vs_abs_trimmed_corr": correlate(m, np.abs(rt), "spearman").r,
            "spearman_mi_vs_cov": correlate(m, c, "spearman").r,
        })
    edges = {"mi": np.linspace(0, max(float(mi_pairs.max()), 1e-9), N_HIST_BINS + 1),
             "corr": np.linspace(-1, 1, N_HIST_BINS + 1)}
    arrays = {"mi_hist": fixed_histogram(mi_pairs, edges["mi"]), "mi_edges": edges["mi"],
              "corr_hist": fixed_histogram(corr_pairs, edges["corr"]), "corr_edges": edges["corr"]}
    rng = np.random.default_rng(0)
    keep = rng.choice(mi_pairs.shape[1], min(2000, mi_pairs.shape[1]), replace=False)  # scatter plots only
    arrays.update({"scatter_mi": mi_pairs[:, keep], "scatter_corr": corr_pairs[:, keep],
                   "scatter_cov": cov_pairs[:, keep]})
    results = {**text_info, "n_tokens": int(hidden.shape[1]), "n_pairs": int(mi_pairs.shape[1]),
               "bins_resolved": int(bins),
               "per_layer": per_layer}
    return StudyOutput(results, _claims(per_layer), arrays=arrays, resolved={"bins": int(bins)})


def _claims(pl: list[dict]) -> list[dict]:
    first = pl[1] if len(pl) > 2 else pl[0]  # the first block's output: the embeddings have a different scale
    last = pl[-1]
    cov_ratio = last["cov_mean_abs"] / max(first["cov_mean_abs"], 1e-300)
    mi_ratio = last["mi_mean"] / max(first["mi_mean"], 1e-300)
    raw = float(np.median([p["spearman_mi_vs_abs_corr"] for p in pl]))
    trimmed = float(np.median([p["spearman_mi_vs_abs_trimmed_corr"] for p in pl]))
    across = correlate([p["mi_mean"] for p in pl], [p["trimmed_corr_mean_abs"] for p in pl], "spearman").r \
        if len(pl) >= 3 else None
    return [
        Claim("Covariance follows the growth of the residual stream's scale; MI does not",
              "|cov| grows much more than MI", {"cov_abs_last_over_first_block": cov_ratio,
                                                "mi_last_over_first_block": mi_ratio},
              cov_ratio > 2 * mi_ratio, source="lamina"),
        Claim("Within a layer, MI ranks token pairs like the strength of their correlation (over the dimensions "
              "MI keeps)", "Spearman(MI, |r|) high",
              {"median_over_layers_trimmed_r": trimmed, "median_over_layers_raw_r": raw}, trimmed > 0.5,
              source="lamina"),
        Claim("Across layers, mean MI and mean |correlation| rise and fall together",
              "positive Spearman over layers", {"spearman_over_layers_trimmed_r": across},
              None if across is None else across > 0, source="lamina"),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    import matplotlib

    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    files = []
    fig, axes = new_figure(1, 3, size=(15, 4))
    axes[0, 0].plot(layers, [p["mi_mean"] for p in pl], label="mean")
    axes[0, 0].fill_between(layers, [p["mi_p10"] for p in pl], [p["mi_p90"] for p in pl], alpha=0.3,
                            label="10-90%")
    axes[0, 0].set(title="pairwise MI between token vectors", xlabel="layer", ylabel="bits")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].plot(layers, [p["cov_mean_abs"] for p in pl], label="mean |covariance|")
    axes[0, 1].plot(layers, [p["norm_mean"] for p in pl], label="mean vector norm")
    axes[0, 1].set(title="covariance follows the scale", xlabel="layer", yscale="log")
    axes[0, 1].legend(fontsize=7)
    axes[0, 2].plot(layers, [p["corr_mean"] for p in pl], label="mean r")
    axes[0, 2].plot(layers, [p["corr_mean_abs"] for p in pl], label="mean |r|")
    axes[0, 2].plot(layers, [p["trimmed_corr_mean"] for p in pl], label="mean r, outlier dims trimmed")
    axes[0, 2].plot(layers, [p["spearman_mi_vs_abs_corr"] for p in pl], ls=":", label="Spearman(MI, |r|)")
    axes[0, 2].plot(layers, [p["spearman_mi_vs_abs_trimmed_corr"] for p in pl], ls="--",
                    label="Spearman(MI, |r trimmed|)")
    axes[0, 2].set(title="correlation", xlabel="layer")
    axes[0, 2].legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Per-layer MI, covariance and correlation"))

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
