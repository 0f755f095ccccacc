"""qkv-layers: how similar the same word's Q, K and V vectors are across sentences, layer by layer.

Extends qkv-similarity (same sentences, same target and non-target tokens, same capture): at every layer the
cosine similarity (and the correlation) between the sentences' vectors of the target token, and of the token
before it, for Q, K and V. The target is one word in every sentence, so its vectors start identical and drift
apart as context flows in; the non-target tokens are different words. Sentences are the sampled items: seeded
bootstrap CIs resample them (pairs of a sentence with its own copy are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LaminaError
from ..stats import correlation_matrix, cosine_similarity_matrix, fixed_histogram, upper_triangle
from .base import StudyOutput, register
from .claims import Claim, decide
from .kept_rows import capture_qkv_rows
from .qkv_similarity import KINDS, PARTS, _sentences, target_and_previous
from ._pair_resampling import bootstrap_indices, pair_means
from .resampling import boot, layer_trend

COS_EDGES = np.linspace(-1, 1, 51)
ALPHA = 0.05  # the conventional 5% level for every test of this study
EXACT_ONE = 1e-6  # "identical vectors": cosine 1 up to float32 rounding of the captured activations


@dataclass(frozen=True)
class QKVLayersConfig:
    """Settings of qkv-layers.

    Attributes:
        target: the target word; each sentence must contain it (its first occurrence is used).
        n_bootstrap: sentence resamples for the bootstrap CIs.
        seed: seed of the bootstrap.
    """

    target: str = "her"
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        if not self.target.strip():
            raise LaminaError("target must be a word such as 'her'")
        check.at_least("n_bootstrap", self.n_bootstrap, 20)
        check.seed("seed", self.seed)


@register("qkv-layers", "Across-sentence similarity of a word's Q, K and V vectors through all layers",
          QKVLayersConfig)
def compute(model, config: QKVLayersConfig, inputs) -> StudyOutput:
    sentences = _sentences(inputs)
    acts = capture_qkv_rows(model, sentences, target_and_previous(config.target))  # qkv-similarity's stored rows
    rows = {"previous": np.arange(0, len(acts), 2), "target": np.arange(1, len(acts), 2)}
    idx = bootstrap_indices(len(sentences), config.n_bootstrap, config.seed)  # pairs of two different draws
    per_layer, cosines = [], {}
    sims = {f"{kind}_{part}": [] for kind in KINDS for part in PARTS}
    for layer in range(model.n_layers):
        row = {"layer": layer}
        for kind in KINDS:
            row[kind] = {}
            for part in PARTS:
                X = acts[f"blocks.{layer}.attn.hook_{part.lower()}"].double().numpy()[rows[kind]]
                S = cosine_similarity_matrix(X)
                cos, corr = upper_triangle(S), upper_triangle(correlation_matrix(X))
                sims[f"{kind}_{part}"].append(cos)
                cosines.setdefault((kind, part), []).append(S)
                row[kind][part] = {"cosine_mean": float(cos.mean()), "cosine_std": float(cos.std()),
                                   "correlation_mean": float(corr.mean())}
        per_layer.append(row)
    first = 0 if model.adapter.absolute_positions else 1  # rotary: layer 0 is one vector per token (claims)
    draws = {key: pair_means(np.stack(S), idx) for key, S in cosines.items()}  # (L, B) each
    curve = {key: np.array([p[key[0]][key[1]]["cosine_mean"] for p in per_layer]) for key in cosines}
    for layer, row in enumerate(per_layer):
        for kind, part in cosines:
            row[kind][part]["cosine_mean_ci"] = np.quantile(draws[kind, part][layer], [0.025, 0.975]).tolist()
    nulls = {}
    for part in PARTS:
        t, p = ("target", part), ("previous", part)
        gap, gap_draws = curve[t] - curve[p], draws[t] - draws[p]
        nulls[part] = {
            "target_trend": layer_trend(curve[t], draws[t], first, "less"),
            "gap_trend": layer_trend(gap, gap_draws, first, "less"),
            "mean_gap": boot(gap[first:].mean(), gap_draws[first:].mean(axis=0)),
            "layer0_gap": boot(gap[0], gap_draws[0]),
        }
    results = {"n_sentences": len(sentences), "target_tokens": sorted(set(acts.rows.token[1::2])),
               "absolute_positions": bool(model.adapter.absolute_positions), "first_trend_layer": first,
               "per_layer": per_layer, "nulls": nulls}
    # Histograms of the sentence-pair cosines: (n_layers, 50) per kind and part.
    arrays = {k: fixed_histogram(np.stack(v), COS_EDGES) for k, v in sims.items()}
    return StudyOutput(results, [], arrays=arrays)


def _trend_claim(claim: str, criterion_what: str, nulls: dict, key: str, first: int, boot_words: str,
                 note: str | None = None) -> dict:
    trends = {part: nulls[part][key] for part in PARTS}
    if any(t["rho"] is None for t in trends.values()):
        return Claim(claim, source="lamina", criterion=f"{criterion_what} falls with depth", measured={},
                     null_reason="fewer than 3 layers", verdict="inconclusive")
    ps = [t["p"] for t in trends.values()]
    cis = [t["bootstrap"]["ci"] for t in trends.values()]
    return Claim(
        claim, source="lamina",
        criterion=f"for Q, K and V: Spearman rho of {criterion_what} vs layer ({first} on) < 0 with trend test "
                  f"p < {ALPHA} and 95% CI ({boot_words}) below 0",
        measured={"spearman_rho": {part: t["rho"] for part, t in trends.items()},
                  "trend_p": {part: t["p"] for part, t in trends.items()}},
        null={"what": "no trend over layers (rho 0); Spearman trend test", "value": 0.0},
        test=trends["Q"]["method"], p=max(ps), ci=max(cis, key=lambda c: -np.inf if c is None else c[1]),
        verdict=decide(all(t["rho"] < 0 for t in trends.values()),
                       max(ps) < ALPHA and all(c is not None and c[1] < 0 for c in cis)), note=note)


def claims(output: StudyOutput, config: QKVLayersConfig, baseline: StudyOutput | None) -> list[dict]:
    """lamina's expectations for the across-sentence similarity of one word (the write-up states none)."""
    r = output.results
    nulls, first = r["nulls"], r["first_trend_layer"]
    boot_words = f"bootstrap over the {r['n_sentences']} sentences ({config.n_bootstrap} resamples)"
    last = len(r["per_layer"]) - 1
    out = []
    gaps = {part: nulls[part]["mean_gap"] for part in PARTS}
    out.append(Claim(
        "The same word's vectors are more similar across sentences than different words' (target > non-target)",
        source="lamina",
        criterion=f"for Q, K and V: mean over layers {first}-{last} of (target - non-target) mean pair cosine > 0 "
                  f"with its 95% CI ({boot_words}) above 0",
        measured={"mean_gap": {part: g["value"] for part, g in gaps.items()},
                  "fraction_of_layers": {part: float(np.mean([p["target"][part]["cosine_mean"] >
                                                              p["previous"][part]["cosine_mean"]
                                                              for p in r["per_layer"][first:]])) for part in PARTS}},
        null={"what": "no difference between the same word and different words (gap 0)", "value": 0.0},
        test="sentence bootstrap", p=max(g["p_gt0"] or 1.0 for g in gaps.values()),
        ci=min((g["ci"] for g in gaps.values() if g["ci"] is not None), key=lambda c: c[0], default=None),
        verdict=decide(all(g["value"] is not None and g["value"] > 0 for g in gaps.values()),
                       all(g["ci"] is not None and g["ci"][0] > 0 for g in gaps.values())),
        note="expected for any model (the same input token); compare the random-init value"))
    layer0 = {part: r["per_layer"][0]["target"][part]["cosine_mean"] for part in PARTS}
    if not r["absolute_positions"]:
        out.append(Claim(
            "The target's vectors start identical across sentences (similarity ~1 at layer 0)", source="lamina",
            criterion=f"layer-0 mean pair cosine of the target > 1 - {EXACT_ONE} for Q, K and V",
            measured={"layer0": layer0}, null_reason="an exact identity on this architecture",
            verdict=decide(all(v > 1 - EXACT_ONE for v in layer0.values())),
            by_construction="rotary model: no position embedding, so the target token's layer-0 Q, K and V are "
                            "the same vector in every sentence"))
    else:
        g0 = {part: nulls[part]["layer0_gap"] for part in PARTS}
        out.append(Claim(
            "The target's vectors start near-identical across sentences (similarity ~1 at layer 0)",
            source="lamina",
            criterion="for Q, K and V: layer-0 target - non-target mean pair cosine > 0 with its 95% CI "
                      f"({boot_words}) above 0 (only the position embeddings differ for the target)",
            measured={"layer0": layer0, "layer0_gap": {part: g["value"] for part, g in g0.items()}},
            null={"what": "different words at the same positions (gap 0)", "value": 0.0},
            test="sentence bootstrap", p=max(g["p_gt0"] or 1.0 for g in g0.values()),
            verdict=decide(all(g["value"] > 0 for g in g0.values()),
                           all(g["ci"] is not None and g["ci"][0] > 0 for g in g0.values()))))
    out.append(_trend_claim("The target's similarity falls with depth as context flows in",
                            "the target's mean pair cosine", nulls, "target_trend", first, boot_words))
    out.append(_trend_claim("The target/non-target gap narrows with depth", "the target - non-target gap",
                            nulls, "gap_trend", first, boot_words))
    return out


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    files = []
    fig, axes = new_figure(1, 3, size=(15, 4))
    for ax, part in zip(axes[0], PARTS):
        for kind, color in zip(KINDS, ("tab:red", "tab:blue")):
            m = np.array([p[kind][part]["cosine_mean"] for p in pl])
            lo, hi = np.array([p[kind][part]["cosine_mean_ci"] for p in pl]).T
            ax.plot(layers, m, color=color, label=f"{kind}: cosine")
            ax.fill_between(layers, lo, hi, color=color, alpha=0.25, lw=0)
            ax.plot(layers, [p[kind][part]["correlation_mean"] for p in pl], color=color, ls=":",
                    label=f"{kind}: correlation")
            if base is not None:
                ax.plot(layers, [p[kind][part]["cosine_mean"] for p in base], color="grey",
                        ls="--" if kind == "target" else "-.", label=f"random-init {kind}: cosine")
        ax.set(title=f"{part}: similarity between sentences", xlabel="layer", ylim=(-0.2, 1.05))
        ax.legend(fontsize=6)
    files.append((save(fig, folder, "per_layer", svg=True), "Mean similarity over sentence pairs (band: bootstrap "
                  "95% CI over sentences); grey: the random-init model"))

    fig, axes = new_figure(2, 3, size=(15, 6.5))
    for i, kind in enumerate(KINDS):
        for j, part in enumerate(PARTS):
            hist = a[f"{kind}_{part}"]
            axes[i, j].imshow(hist, aspect="auto", origin="lower", cmap="magma",
                              extent=(COS_EDGES[0], COS_EDGES[-1], -0.5, len(hist) - 0.5))
            axes[i, j].set(title=f"{kind} token, {part}", xlabel="cosine", ylabel="layer")
    files.append((save(fig, folder, "heatmaps"), "Layer x cosine histograms of sentence-pair similarities"))
    return files
