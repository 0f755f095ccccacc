"""qkv-layers: how similar the same word's Q, K and V vectors are across sentences, layer by layer.

Extends qkv-similarity (same sentences, same target and non-target tokens, same capture): at every layer the
cosine similarity (and the correlation) between the sentences' vectors of the target token, and of the token
before it, for Q, K and V. The target is one word in every sentence, so its vectors start identical and drift
apart as context flows in; the non-target tokens are different words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture
from ..errors import LaminaError
from ..stats import correlate, fixed_histogram, correlation_matrix, cosine_similarity_matrix, upper_triangle
from .base import Claim, StudyOutput, register
from .qkv_similarity import KINDS, PARTS, _sentences, target_and_previous

COS_EDGES = np.linspace(-1, 1, 51)


@dataclass(frozen=True)
class QKVLayersConfig:
    """Settings of qkv-layers.

    Attributes:
        target: the target word; each sentence must contain it (its first occurrence is used).
    """

    target: str = "her"

    def __post_init__(self):
        if not self.target.strip():
            raise LaminaError("target must be a word such as 'her'")


@register("qkv-layers", "Across-sentence similarity of a word's Q, K and V vectors through all layers",
          QKVLayersConfig)
def compute(model, config: QKVLayersConfig, inputs) -> StudyOutput:
    sentences = _sentences(inputs)
    acts = capture(model, sentences, ["blocks.*.attn.hook_q", "blocks.*.attn.hook_k", "blocks.*.attn.hook_v"],
                   positions=target_and_previous(config.target), cache=True)
    rows = {"previous": np.arange(0, len(acts), 2), "target": np.arange(1, len(acts), 2)}
    per_layer = []
    sims = {f"{kind}_{part}": [] for kind in KINDS for part in PARTS}
    for layer in range(model.n_layers):
        row = {"layer": layer}
        for kind in KINDS:
            row[kind] = {}
            for part in PARTS:
                X = acts[f"blocks.{layer}.attn.hook_{part.lower()}"].double().numpy()[rows[kind]]
                cos = upper_triangle(cosine_similarity_matrix(X))
                corr = upper_triangle(correlation_matrix(X))
                sims[f"{kind}_{part}"].append(cos)
                row[kind][part] = {"cosine_mean": float(cos.mean()), "cosine_std": float(cos.std()),
                                   "correlation_mean": float(corr.mean())}
        per_layer.append(row)
    results = {"n_sentences": len(sentences), "target_tokens": sorted(set(acts.rows.token[1::2])),
               "per_layer": per_layer}
    # Histograms of the sentence-pair cosines: (n_layers, 50) per kind and part.
    arrays = {k: fixed_histogram(np.stack(v), COS_EDGES) for k, v in sims.items()}
    return StudyOutput(results, _claims(per_layer), arrays=arrays)


def _claims(pl: list[dict]) -> list[dict]:
    layers = [p["layer"] for p in pl]
    target = {part: np.array([p["target"][part]["cosine_mean"] for p in pl]) for part in PARTS}
    other = {part: np.array([p["previous"][part]["cosine_mean"] for p in pl]) for part in PARTS}
    above = {part: float(np.mean(target[part] > other[part])) for part in PARTS}
    enough = len(pl) >= 3
    falls = {part: correlate(layers, target[part], "spearman").r for part in PARTS} if enough else None
    gap = {part: correlate(layers, target[part] - other[part], "spearman").r for part in PARTS} if enough else None
    return [
        Claim("The same word's vectors are more similar across sentences than different words' (target > "
              "non-target)", "target > non-target in most layers", {"fraction_of_layers": above},
              all(v > 0.5 for v in above.values()), source="lamina"),
        Claim("The target's similarity starts near 1 and falls with depth as context flows in",
              "~1 at layer 0, falling", {"layer0": {p: float(target[p][0]) for p in PARTS},
                                          "spearman_layer_vs_similarity": falls},
              None if falls is None else all(target[p][0] > 0.9 and falls[p] < 0 for p in PARTS), source="lamina"),
        Claim("The target/non-target gap narrows with depth", "gap falls with depth",
              {"spearman_layer_vs_gap": gap}, None if gap is None else all(g < 0 for g in gap.values()),
              source="lamina"),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    files = []
    fig, axes = new_figure(1, 3, size=(15, 4))
    for ax, part in zip(axes[0], PARTS):
        for kind, color in zip(KINDS, ("tab:red", "tab:blue")):
            m = np.array([p[kind][part]["cosine_mean"] for p in pl])
            s = np.array([p[kind][part]["cosine_std"] for p in pl])
            ax.plot(layers, m, color=color, label=f"{kind}: cosine")
            ax.fill_between(layers, m - s, m + s, color=color, alpha=0.2)
            ax.plot(layers, [p[kind][part]["correlation_mean"] for p in pl], color=color, ls="--",
                    label=f"{kind}: correlation")
        ax.set(title=f"{part}: similarity between sentences", xlabel="layer", ylim=(-0.2, 1.05))
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Mean (+- std) similarity over sentence pairs"))

    fig, axes = new_figure(2, 3, size=(15, 6.5))
    for i, kind in enumerate(KINDS):
        for j, part in enumerate(PARTS):
            hist = a[f"{kind}_{part}"]
            axes[i, j].imshow(hist, aspect="auto", origin="lower", cmap="magma",
                              extent=(COS_EDGES[0], COS_EDGES[-1], -0.5, len(hist) - 0.5))
            axes[i, j].set(title=f"{kind} token, {part}", xlabel="cosine", ylabel="layer")
    files.append((save(fig, folder, "heatmaps"), "Layer x cosine histograms of sentence-pair similarities"))
    return files
