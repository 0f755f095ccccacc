"""token-length's figures: r histograms per layer, heatmaps at relative depth, per-layer curves with their
block-bootstrap CIs, the shuffled-length null band and the random-init copy (grey, dashed)."""

from __future__ import annotations

import numpy as np

from .base import StudyOutput

__all__ = ["draw"]


def _runs(output: StudyOutput) -> list[tuple[str, dict, dict, bool]]:
    """(label, results, arrays, is_random_init) for this model, its comparison and the random-init baseline."""
    r, a = output.results, output.arrays
    runs = [(r["model"]["name"], r, a, False)]
    if "comparison" in r:
        other = r["comparison"]
        runs.append((other["model"]["name"], other, {k[8:]: v for k, v in a.items() if k.startswith("compare_")},
                     other["model"].get("source") == "random-init"))
    if output.baseline is not None:
        base = output.baseline.results
        runs.append((base["model"]["name"], base, output.baseline.arrays, True))
    return runs


def draw(output: StudyOutput, folder, edges: np.ndarray) -> list[tuple[str, str]]:
    import matplotlib

    from ..report.figures import new_figure, save

    runs = _runs(output)
    centres = (edges[:-1] + edges[1:]) / 2
    files = []
    fig, axes = new_figure(1, len(runs), size=(6.5 * len(runs), 4))
    for ax, (name, res, arr, _) in zip(axes[0], runs):
        hist = arr["r_hist"]
        cmap = matplotlib.colormaps["viridis"]
        for layer, row in enumerate(hist):
            ax.plot(centres, row, color=cmap(layer / max(1, len(hist) - 1)), lw=0.9)
        ax.axvline(0, color="k", lw=0.5)
        ax.set(title=f"{name}: r(length, neuron), one line per layer", xlabel="r", ylabel="neurons")
    files.append((save(fig, folder, "r_lines"), "Histogram of r per layer (dark = early, yellow = late)"))

    fig, axes = new_figure(1, len(runs), size=(6.5 * len(runs), 4))
    for ax, (name, res, arr, _) in zip(axes[0], runs):
        hist = arr["r_hist"]
        im = ax.imshow(hist / hist.sum(axis=1, keepdims=True), aspect="auto", cmap="magma", origin="lower",
                       extent=(edges[0], edges[-1], 0, 1))
        ax.set(title=f"{name} ({len(hist)} layers)", xlabel="r", ylabel="relative depth")
        fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of neurons")
    files.append((save(fig, folder, "r_heatmap"), "Layer x r-bin heatmaps, side by side at relative depth"))

    fig, axes = new_figure(1, 2, size=(13, 4))
    for name, res, arr, random_init in runs:
        pl = res["per_layer"]
        depth = np.linspace(0, 1, len(pl))
        style = {"color": "grey", "ls": "--"} if random_init else {}
        for ax, key, null_key in ((axes[0, 0], "mean_r", "shuffled_mean_r"), (axes[0, 1], "std_r", "shuffled_std_r")):
            line = ax.plot(depth, [p[key] for p in pl], label=f"{name}", **style)[0]
            ci = np.array([p[f"{key}_ci"] for p in pl])
            ax.fill_between(depth, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.25)
            if not random_init:
                mean = np.array([p[null_key]["mean"] for p in pl])
                sd = np.array([p[null_key]["sd"] for p in pl])
                ax.fill_between(depth, mean - 1.96 * sd, mean + 1.96 * sd, color="k", alpha=0.12,
                                label=f"{name}: shuffled lengths (95%)")
        if not random_init:
            axes[0, 0].plot(depth, [p["mean_partial_r"] for p in pl], ls="-.", color=line.get_color(), lw=0.8,
                            label=f"{name}: partial r | log freq")
            axes[0, 0].plot(depth, [p["mean_r_log_freq"] for p in pl], ls=":", color=line.get_color(), lw=0.8,
                            label=f"{name}: r with log freq")
    axes[0, 0].axhline(0, color="k", lw=0.5)
    axes[0, 0].set(title="mean r over neurons (band: 95% block-bootstrap CI)", xlabel="relative depth")
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].set(title="spread of r over neurons (std)", xlabel="relative depth")
    axes[0, 1].legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Length and frequency correlations through depth, with "
                  "bootstrap CIs, the shuffled-length null and the random-init copy (grey dashed)"))

    fig, axes = new_figure(1, len(runs), size=(6.5 * len(runs), 4))
    for ax, (name, res, arr, _) in zip(axes[0], runs):
        mid = (arr["block_edges"][:-1] + arr["block_edges"][1:]) / 2
        median = res["length"]["median"]
        for row, label in zip(arr["block_hist"], (f"shorter than {median:g}", f"= {median:g}",
                                                  f"longer than {median:g}")):
            ax.plot(mid, row, label=label)
        ax.set(title=f"{name}: block {res['block']} activations", xlabel="activation", ylabel="density",
               yscale="log")
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "block_histograms"), "Pooled activations of short, median-length and long "
                  "tokens at the chosen block"))
    return files
