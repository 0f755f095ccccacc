"""path-length: how far each block moves every token through the residual stream.

Protocol (STUDIES.md section 3): for every token and block, the attention adjustment, the MLP adjustment and
the change of the hidden state; the cosine between the two adjustments; their Euclidean lengths (path
lengths) and cumulative lengths; per layer the Pearson correlation across tokens (token 0 excluded) of
PL_attn and PL_mlp with PL_hidden, FDR over layers; again with token 0 included; and Spearman.

Nulls (issue #11): in a pre-norm block PL_hidden = |a + m|, so it correlates with |a| and |m| by construction;
the random-init copy of the model is the control for "MLP correlates more strongly than attention" (paired
bootstrap over tokens). Cosines are compared with two random directions in d dimensions (|cos| ~
sqrt(2 / (pi d))); token 0's effect on r with every other token's effect (leave-one-in); the final step with
the other blocks' steps (a block-order null).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture import residual_sites
from ..capture.reduce import KeepRows
from ..capture.reduced import capture_reduced
from ..errors import LaminaError
from ..stats import adjustment_cosine, correct_pvalues, correlate, path_lengths
from .base import StudyOutput, register
from .path_length_claims import claims, final_step_ratio, pearson_rows  # noqa: F401 - the framework reads `claims`
from .texts import PHILOSOPHER_PARAGRAPH, default_text


@dataclass(frozen=True)
class PathLengthConfig:
    """Settings of path-length.

    Attributes:
        scatter_every: draw the PL scatter plots for every n-th layer.
        correction: multiple-comparison correction over layers ("fdr_bh" or "bonferroni").
        alpha: significance level after correction (and of the claims' tests).
        n_bootstrap: bootstrap resamples of the tokens (CIs of the per-layer correlations, cosines and steps).
        seed: seed of the bootstrap (the same resamples on the random-init copy: a paired comparison).
    """

    scatter_every: int = 3
    correction: str = "fdr_bh"
    alpha: float = 0.05
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        check.at_least("scatter_every", self.scatter_every, 1)
        check.choice("correction", self.correction, ("fdr_bh", "bonferroni"))
        check.between("alpha", self.alpha, 0, 1)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% CI from fewer resamples is too coarse
        check.seed("seed", self.seed)


def random_direction_abs_cos(d: int) -> dict:
    """|cos| between two independent uniformly random directions in d dimensions.

    ``(cos + 1) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2)``, so ``E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))``
    (~ sqrt(2 / (pi d))), ``E cos^2 = 1 / d``.

    Returns:
        ``{"mean", "sd", "q99"}``: mean and sd of |cos| and its 99th percentile.
    """
    from scipy import special, stats

    a = (d - 1) / 2
    mean = float(np.exp(special.gammaln(d / 2) - special.gammaln((d + 1) / 2)) / np.sqrt(np.pi))
    q99 = float(2 * stats.beta.ppf(0.995, a, a) - 1)  # |cos| > q with probability 1%: cos beyond +-q
    return {"mean": mean, "sd": float(np.sqrt(max(0.0, 1 / d - mean**2))), "q99": q99}


def leave_one_in_influence(x: np.ndarray, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """How much adding each token to the others changes the correlation of ``x`` and ``y``.

    Args:
        x, y: (..., T) per-token values; token 0 is the candidate outlier.
        method: ``"pearson"`` or ``"spearman"``.

    Returns:
        (..., T): entry 0 is ``r(tokens 1..) - r(tokens 0..)`` (positive: including token 0 lowers r); entry
        j >= 1 is ``r(tokens 1.. without j) - r(tokens 1..)``: the same change for token j, the null that
        says how much one token moves r when it is not special.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    full = _corr(x, y, method)
    base = _corr(x[..., 1:], y[..., 1:], method)
    without = _drop_one_corr(x[..., 1:], y[..., 1:], method)
    return np.concatenate([(base - full)[..., None], without - base[..., None]], axis=-1)


def _corr(x, y, method):
    if method == "spearman":
        from scipy.stats import rankdata

        x, y = rankdata(x, axis=-1), rankdata(y, axis=-1)
    return pearson_rows(x, y)


def _drop_one_corr(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """(..., n): the correlation of x and y (shape (..., n)) without item j, for every j (chunked over j)."""
    from scipy.stats import rankdata

    n = x.shape[-1]
    lead = x.shape[:-1]
    if method == "spearman":  # ranks without item j: items above it move down one (a tie half a step)
        x, y = rankdata(x, axis=-1), rankdata(y, axis=-1)
    out = np.empty((*lead, n))
    step = max(1, 2_000_000 // max(1, n * int(np.prod(lead))))  # ~16 MB per (..., chunk, n) array
    for start in range(0, n, step):
        j = np.arange(start, min(n, start + step))
        keep = np.ones((j.size, n))
        keep[np.arange(j.size), j] = 0.0
        xs = np.broadcast_to(x[..., None, :], (*lead, j.size, n))
        ys = np.broadcast_to(y[..., None, :], (*lead, j.size, n))
        if method == "spearman":
            xj, yj = x[..., j, None], y[..., j, None]
            xs = xs - (xs > xj) - 0.5 * (xs == xj) * keep
            ys = ys - (ys > yj) - 0.5 * (ys == yj) * keep
        m = keep.sum(-1)
        xc = xs - (xs * keep).sum(-1, keepdims=True) / m[:, None]
        yc = ys - (ys * keep).sum(-1, keepdims=True) / m[:, None]
        sxy, sxx, syy = ((u * v * keep).sum(-1) for u, v in ((xc, yc), (xc, xc), (yc, yc)))
        den = np.sqrt(sxx * syy)
        out[..., j] = np.where(den > 0, sxy / np.where(den > 0, den, 1.0), 0.0)
    return out


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) token indices drawn with replacement (seeded: two models get the same draws)."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def step_stats(hidden: torch.Tensor, after: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
    """Per-row lengths and dot product of one block's steps, in float64 (a ``KeepRows`` transform over the
    block's input, output, attention and MLP adjustments, each (n, d)).

    Returns:
        (n, 4): ``|attn|``, ``|mlp|``, ``|after - hidden|`` and ``attn . mlp``.
    """
    a, m = attn.to(torch.float64), mlp.to(torch.float64)
    step = after.to(torch.float64) - hidden.to(torch.float64)
    norm = torch.linalg.vector_norm
    return torch.stack([norm(a, dim=1), norm(m, dim=1), norm(step, dim=1), (a * m).sum(1)], dim=1)


def block_steps(model, text) -> tuple[dict, object]:
    """Per token and block the lengths of the attention, MLP and hidden-state steps and their cosine, from one
    reduced capture: each block's four sites (input, output, attention and MLP outputs) bound to one per-row
    reducer on the model's device, so memory grows with tokens x blocks, not with the width.

    Returns:
        (``{"attn", "mlp", "hidden", "cos"}`` each (L, T) float64, the captured rows).
    """
    hidden = residual_sites(model)
    blocks = {(hidden[i], hidden[i + 1], f"blocks.{i}.hook_attn_out", f"blocks.{i}.hook_mlp_out"):
              KeepRows(transform=step_stats) for i in range(model.n_layers)}
    red = capture_reduced(model, text, blocks, store=True)
    per = np.stack([red[key].rows().numpy() for key in blocks])  # (L, T, 4)
    attn, mlp, dot = per[..., 0], per[..., 1], per[..., 3]
    den = attn * mlp
    cos = np.where(den > 0, dot / np.where(den > 0, den, 1.0), 0.0)  # as lamina.stats.adjustment_cosine
    return {"attn": attn, "mlp": mlp, "hidden": per[..., 2], "cos": cos}, red.rows


@register("path-length", "Residual-stream path lengths of attention, MLP and hidden-state steps per token/layer",
          PathLengthConfig)
def compute(model, config: PathLengthConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), PHILOSOPHER_PARAGRAPH)
    steps, rows = block_steps(model, text)
    n_tokens = len(rows)
    if n_tokens < 5:
        raise LaminaError(f"the text has {n_tokens} tokens; path-length needs at least 5")
    results, arrays = measure_steps(steps, model.d_model, config)
    results = {**text_info, "n_tokens": n_tokens, "tokens": list(rows.token), **results}
    return StudyOutput(results, [], arrays=arrays,
                       resolved={"scatter_layers": list(range(0, model.n_layers, config.scatter_every))})


def measure_paths(hidden, attn, mlp, config: PathLengthConfig) -> tuple[dict, dict]:
    """Every number of the study from the residual stream (pure: arrays in, results and arrays out).

    Args:
        hidden: (L + 1, T, d) hidden states; attn, mlp: (L, T, d) the blocks' adjustments.
        config: the bootstrap settings, correction and alpha.

    Returns:
        (results: JSON-able, arrays: per-layer x token arrays and bootstrap replicates (L, B)).
    """
    pl = path_lengths(hidden, attn, mlp)
    steps = {"attn": pl["attn"], "mlp": pl["mlp"], "hidden": pl["hidden"], "cos": adjustment_cosine(attn, mlp)}
    return measure_steps(steps, attn.shape[-1], config)


def measure_steps(steps: dict, d_model: int, config: PathLengthConfig) -> tuple[dict, dict]:
    """Every number of the study from the per-token step lengths and cosines (pure).

    Args:
        steps: ``{"attn", "mlp", "hidden", "cos"}`` of shape (L, T): the lengths of the attention, MLP and
            hidden-state steps of every block and token, and the cosine between the two adjustments.
        d_model: the residual width (the random-direction null of the cosines).
        config: the bootstrap settings, correction and alpha.

    Returns:
        (results: JSON-able, arrays: per-layer x token arrays and bootstrap replicates (L, B)).
    """
    pl = {k: np.asarray(steps[k], dtype=np.float64) for k in ("attn", "mlp", "hidden")}
    for key in ("attn", "mlp", "hidden"):
        pl[f"{key}_cumulative"] = np.cumsum(pl[key], axis=0)
    cos = np.asarray(steps["cos"], dtype=np.float64)  # (L, T)
    n_tokens = cos.shape[1]
    n_layers = cos.shape[0]
    idx = bootstrap_indices(n_tokens - 1, config.n_bootstrap, config.seed)  # over tokens 1.. (token 0 excluded)
    rest = {k: pl[k][:, 1:] for k in ("attn", "mlp", "hidden")}
    abs_cos = np.abs(cos[:, 1:])
    # Bootstrap replicates (L, B), one layer at a time: a (B, T) resample per layer keeps memory small.
    boot = {k: np.stack([pearson_rows(rest[k][layer, idx], rest["hidden"][layer, idx]) for layer in range(n_layers)])
            for k in ("attn", "mlp")}
    boot_abs_cos = np.stack([abs_cos[layer, idx].mean(-1) for layer in range(n_layers)])
    boot_step = np.stack([rest["hidden"][layer, idx].mean(-1) for layer in range(n_layers)])
    influence = {(k, m): leave_one_in_influence(pl[k], pl["hidden"], m) for k in ("attn", "mlp")
                 for m in ("pearson", "spearman")}  # each (L, T)
    per_layer = []
    for layer in range(n_layers):
        row = {"layer": layer, "cos_mean": float(cos[layer].mean()), "cos_std": float(cos[layer].std()),
               "mean_abs_cos": float(abs_cos[layer].mean()),
               "mean_abs_cos_ci": np.quantile(boot_abs_cos[layer], [0.025, 0.975]).tolist(),
               "pl_attn": float(pl["attn"][layer].mean()), "pl_mlp": float(pl["mlp"][layer].mean()),
               "pl_hidden": float(pl["hidden"][layer].mean()),
               "step_without_token0": float(rest["hidden"][layer].mean()),
               "step_without_token0_ci": np.quantile(boot_step[layer], [0.025, 0.975]).tolist()}
        for key in ("attn", "mlp"):
            x, y = pl[key][layer], pl["hidden"][layer]
            res = correlate(x[1:], y[1:])
            row[key] = {"pearson": res.r, "p": res.p,
                        "pearson_ci": np.quantile(boot[key][layer], [0.025, 0.975]).tolist(),
                        "pearson_with_token0": correlate(x, y).r, "spearman": correlate(x[1:], y[1:], "spearman").r,
                        "spearman_with_token0": correlate(x, y, "spearman").r}
        per_layer.append(row)
    for key in ("attn", "mlp"):
        sig, adj = correct_pvalues([r[key]["p"] for r in per_layer], config.correction, config.alpha)
        for r, s, a in zip(per_layer, sig, adj):
            r[key].update({"p_adjusted": float(a), "significant": bool(s)})
    token_influence = {m: np.mean([influence[(k, m)] for k in ("attn", "mlp")], axis=(0, 1)).tolist()
                       for m in ("pearson", "spearman")}  # (T,) mean over layers and both adjustments
    results = {"per_layer": per_layer, "d_model": int(d_model),
               "random_direction_abs_cos": random_direction_abs_cos(int(d_model)),
               "final_step_ratio": final_step_ratio(rest["hidden"].mean(-1)),
               "token0_hidden_pl_ratio": float(pl["hidden"][:, 0].mean() / pl["hidden"][:, 1:].mean()),
               "token_influence": token_influence}
    arrays = {"pl_attn": pl["attn"], "pl_mlp": pl["mlp"], "pl_hidden": pl["hidden"], "cos": cos,
              "cum_attn": pl["attn_cumulative"], "cum_mlp": pl["mlp_cumulative"], "cum_hidden": pl["hidden_cumulative"],
              "boot_r_attn": boot["attn"], "boot_r_mlp": boot["mlp"], "boot_abs_cos": boot_abs_cos,
              "boot_step": boot_step}
    return results, arrays


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from matplotlib.collections import LineCollection

    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline
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
    ax = axes[0, 0]
    for key, color in (("attn", "tab:blue"), ("mlp", "tab:orange")):
        ci = np.array([p[key]["pearson_ci"] for p in pl])
        ax.plot(layers, [p[key]["pearson"] for p in pl], color=color, label=f"{key} (token 0 excluded)")
        ax.fill_between(layers, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
        ax.plot(layers, [p[key]["pearson_with_token0"] for p in pl], color=color, ls=":",
                label=f"{key} (token 0 included)")
        ax.plot(layers, [p[key]["spearman_with_token0"] for p in pl], color=color, ls="-.", lw=0.8,
                label=f"{key} Spearman (token 0 included)")
        sig = [p["layer"] for p in pl if p[key]["significant"]]
        ax.scatter(sig, [pl[s][key]["pearson"] for s in sig], color=color, marker="*", s=50)
        if base is not None:
            ax.plot(layers, [p[key]["pearson"] for p in base.results["per_layer"]], color="grey", ls="--",
                    marker="o" if key == "mlp" else "x", ms=3, label=f"{key}: random-init")
    ax.set(title="r(PL_x, PL_hidden); band: 95% bootstrap CI; * FDR-significant", xlabel="layer")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    null = r["random_direction_abs_cos"]
    ci = np.array([p["mean_abs_cos_ci"] for p in pl])
    ax.plot(layers, [p["mean_abs_cos"] for p in pl], label="mean |cos| (tokens 1..)")
    ax.fill_between(layers, ci[:, 0], ci[:, 1], alpha=0.3)
    ax.plot(layers, [p["cos_mean"] for p in pl], color="tab:green", lw=0.8, label="mean signed cos (all tokens)")
    ax.axhspan(null["mean"] - 2 * null["sd"], null["mean"] + 2 * null["sd"], color="k", alpha=0.1,
               label="random directions: one pair's |cos|, mean +- 2 sd")
    ax.axhline(null["q99"], color="k", ls=":", lw=0.8, label="random directions: 99th pct")
    if base is not None:
        ax.plot(layers, [p["mean_abs_cos"] for p in base.results["per_layer"]], color="grey", ls="--",
                label="random-init")
    ax.axhline(0, color="k", lw=0.4)
    ax.set(title="cos(attention adj., MLP adj.)", xlabel="layer")
    ax.legend(fontsize=6)
    ax = axes[0, 2]
    ci = np.array([p["step_without_token0_ci"] for p in pl])
    ax.plot(layers, [p["step_without_token0"] for p in pl], label="mean hidden step (tokens 1..)")
    ax.fill_between(layers, ci[:, 0], ci[:, 1], alpha=0.3)
    if base is not None:
        ax.plot(layers, [p["step_without_token0"] for p in base.results["per_layer"]], color="grey", ls="--",
                label="random-init")
    ax.set(title="hidden step per block; band: 95% bootstrap CI", xlabel="layer", yscale="log")
    ax.legend(fontsize=6)
    files.append((save(fig, folder, "correlations", svg=True), "Correlations, adjustment cosines and step sizes per "
                  "layer, with bootstrap CIs, the random-direction null and the random-init copy (grey dashed)"))

    fig, axes = new_figure(1, 3, size=(15, 3.8))
    for ax, key in zip(axes[0], ("cum_attn", "cum_mlp", "cum_hidden")):
        depth = np.arange(a[key].shape[0])
        lines = LineCollection([np.column_stack([depth, col]) for col in a[key].T], colors="grey", alpha=0.3,
                               linewidths=0.6)  # one artist for all tokens: hundreds of Line2D are slow to draw
        ax.add_collection(lines)
        ax.plot(depth, a[key][:, 0], color="crimson", lw=1.5, label="token 0")
        ax.autoscale_view()
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
