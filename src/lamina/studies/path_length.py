"""path-length: how far each block moves every token through the residual stream.

Protocol (STUDIES.md section 3): for every token and block, the attention adjustment, the MLP adjustment and
the change of the hidden state; the cosine between the two adjustments; their Euclidean lengths (path
lengths) and cumulative lengths; per layer the Pearson correlation across tokens (token 0 excluded) of
PL_attn and PL_mlp with PL_hidden, FDR over layers; again with token 0 included; and Spearman.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, residual_sites
from ..errors import LaminaError
from ..stats import adjustment_cosine, correct_pvalues, correlate, path_lengths
from .base import Claim, StudyOutput, register
from .texts import PHILOSOPHER_PARAGRAPH, default_text


@dataclass(frozen=True)
class PathLengthConfig:
    """Settings of path-length.

    Attributes:
        scatter_every: draw the PL scatter plots for every n-th layer.
        correction: multiple-comparison correction over layers ("fdr_bh" or "bonferroni").
        alpha: significance level after correction.
    """

    scatter_every: int = 3
    correction: str = "fdr_bh"
    alpha: float = 0.05

    def __post_init__(self):
        if self.scatter_every < 1:
            raise LaminaError("scatter_every must be >= 1")
        if self.correction not in ("fdr_bh", "bonferroni"):
            raise LaminaError(f"correction must be fdr_bh or bonferroni (got {self.correction!r})")


@register("path-length", "Residual-stream path lengths of attention, MLP and hidden-state steps per token/layer",
          PathLengthConfig)
def compute(model, config: PathLengthConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), PHILOSOPHER_PARAGRAPH)
    sites = residual_sites(model) + ["blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"]
    acts = capture(model, text, sites, cache=True)
    n_tokens = len(acts)
    if n_tokens < 5:
        raise LaminaError(f"the text has {n_tokens} tokens; path-length needs at least 5")
    hidden = acts.residual_stream().double().numpy()
    attn = acts.stack("hook_attn_out").double().numpy()
    mlp = acts.stack("hook_mlp_out").double().numpy()
    pl = path_lengths(hidden, attn, mlp)
    cos = adjustment_cosine(attn, mlp)  # (L, T)
    per_layer = []
    for layer in range(attn.shape[0]):
        row = {"layer": layer, "cos_mean": float(cos[layer].mean()), "cos_std": float(cos[layer].std()),
               "pl_attn": float(pl["attn"][layer].mean()), "pl_mlp": float(pl["mlp"][layer].mean()),
               "pl_hidden": float(pl["hidden"][layer].mean())}
        for key in ("attn", "mlp"):
            x, y = pl[key][layer], pl["hidden"][layer]
            row[key] = {"pearson": correlate(x[1:], y[1:]).r, "p": correlate(x[1:], y[1:]).p,
                        "pearson_with_token0": correlate(x, y).r, "spearman": correlate(x[1:], y[1:], "spearman").r,
                        "spearman_with_token0": correlate(x, y, "spearman").r}
        per_layer.append(row)
    for key in ("attn", "mlp"):
        sig, adj = correct_pvalues([r[key]["p"] for r in per_layer], config.correction, config.alpha)
        for r, s, a in zip(per_layer, sig, adj):
            r[key].update({"p_adjusted": float(a), "significant": bool(s)})
    results = {**text_info, "n_tokens": n_tokens, "tokens": list(acts.rows.token), "per_layer": per_layer,
               "final_step_ratio": float(pl["hidden"][-1].mean() / np.median(pl["hidden"][:-1].mean(axis=1)))
               if attn.shape[0] > 1 else None,
               "token0_hidden_pl_ratio": float(pl["hidden"][:, 0].mean() / pl["hidden"][:, 1:].mean())}
    arrays = {"pl_attn": pl["attn"], "pl_mlp": pl["mlp"], "pl_hidden": pl["hidden"], "cos": cos,
              "cum_attn": pl["attn_cumulative"], "cum_mlp": pl["mlp_cumulative"], "cum_hidden": pl["hidden_cumulative"]}
    return StudyOutput(results, _claims(results, per_layer), arrays=arrays,
                       resolved={"scatter_layers": list(range(0, attn.shape[0], config.scatter_every))})


def _claims(r: dict, pl: list[dict]) -> list[dict]:
    n = len(pl)
    mid = pl[1:-1] if n > 2 else pl
    mean_abs_cos = float(np.mean([abs(p["cos_mean"]) for p in mid]))
    mlp_wins = float(np.mean([p["mlp"]["pearson"] > p["attn"]["pearson"] for p in pl]))
    without = np.mean([p[k]["pearson"] for p in pl for k in ("attn", "mlp")])
    with0 = np.mean([p[k]["pearson_with_token0"] for p in pl for k in ("attn", "mlp")])
    sp_without = np.mean([p[k]["spearman"] for p in pl for k in ("attn", "mlp")])
    sp_with0 = np.mean([p[k]["spearman_with_token0"] for p in pl for k in ("attn", "mlp")])
    return [
        Claim("Attention and MLP adjustments are near-orthogonal (cosine ~ 0) except at the ends",
              "cosine ~ 0", {"mean_abs_cos_middle_layers": mean_abs_cos}, mean_abs_cos < 0.2),
        Claim("PL_mlp correlates with PL_hidden more strongly than PL_attn in most layers", "MLP > attention",
              {"fraction_of_layers": mlp_wins}, mlp_wins > 0.5),
        Claim("Including token 0 (the attention sink) collapses the Pearson correlations", "~0.6 -> ~-0.2",
              {"mean_r_without_token0": float(without), "mean_r_with_token0": float(with0)}, with0 < without - 0.2),
        Claim("Spearman is robust to token 0", "rank correlation restores the result",
              {"mean_rho_without_token0": float(sp_without), "mean_rho_with_token0": float(sp_with0)},
              abs(sp_with0 - sp_without) < abs(with0 - without)),
        Claim("The last blocks take a big final step", "large final step",
              {"last_over_median_step": r["final_step_ratio"]},
              None if r["final_step_ratio"] is None else r["final_step_ratio"] > 2),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    files = []
    fig, axes = new_figure(1, 3, size=(15, 3.8))
    for ax, key, title in zip(axes[0], ("pl_attn", "pl_mlp", "pl_hidden"), ("attention", "MLP", "hidden change")):
        im = ax.imshow(np.log10(a[key] + 1e-12), aspect="auto", cmap="magma")
        ax.set(title=f"log10 path length: {title}", xlabel="token", ylabel="layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    files.append((save(fig, folder, "heatmaps"), "Path lengths per layer and token (log scale)"))

    fig, axes = new_figure(1, 3, size=(15, 3.8))
    for key, color in (("attn", "tab:blue"), ("mlp", "tab:orange")):
        axes[0, 0].plot(layers, [p[key]["pearson"] for p in pl], color=color, label=f"{key} (token 0 excluded)")
        axes[0, 0].plot(layers, [p[key]["pearson_with_token0"] for p in pl], color=color, ls=":",
                        label=f"{key} (token 0 included)")
        axes[0, 0].plot(layers, [p[key]["spearman_with_token0"] for p in pl], color=color, ls="--",
                        label=f"{key} Spearman (token 0 included)")
        sig = [p["layer"] for p in pl if p[key]["significant"]]
        axes[0, 0].scatter(sig, [pl[s][key]["pearson"] for s in sig], color=color, marker="*", s=50)
    axes[0, 0].set(title="r(PL_x, PL_hidden) per layer; * FDR-significant", xlabel="layer")
    axes[0, 0].legend(fontsize=6)
    m = np.array([p["cos_mean"] for p in pl])
    s = np.array([p["cos_std"] for p in pl])
    axes[0, 1].plot(layers, m)
    axes[0, 1].fill_between(layers, m - s, m + s, alpha=0.3)
    axes[0, 1].set(title="cos(attention adj., MLP adj.): mean +- std", xlabel="layer")
    axes[0, 2].hist(a["cos"].ravel(), bins=np.linspace(-1, 1, 101))
    axes[0, 2].set(title="all cosines", xlabel="cosine")
    files.append((save(fig, folder, "correlations", svg=True), "Correlations per layer and adjustment cosines"))

    fig, axes = new_figure(1, 3, size=(15, 3.8))
    for ax, key in zip(axes[0], ("cum_attn", "cum_mlp", "cum_hidden")):
        ax.plot(a[key], color="grey", alpha=0.3, lw=0.6)
        ax.plot(a[key][:, 0], color="crimson", lw=1.5, label="token 0")
        ax.set(title=f"cumulative {key[4:]} path length", xlabel="layer")
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "cumulative"), "Cumulative path lengths along depth (one line per token)"))

    shown = output.resolved["scatter_layers"][:12]
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = new_figure(rows, cols, size=(3.4 * cols, 3 * rows))
    for i, layer in enumerate(shown):
        ax = axes[i // cols, i % cols]
        ax.scatter(a["pl_hidden"][layer, 1:], a["pl_attn"][layer, 1:], s=4, label="attention")
        ax.scatter(a["pl_hidden"][layer, 1:], a["pl_mlp"][layer, 1:], s=4, label="MLP")
        ax.set_title(f"layer {layer}", fontsize=8)
    for j in range(len(shown), rows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.supxlabel("PL hidden")
    fig.supylabel("PL adjustment")
    files.append((save(fig, folder, "scatter"), "PL_attn and PL_mlp vs PL_hidden, token 0 excluded"))
    return files
