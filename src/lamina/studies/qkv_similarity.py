"""qkv-similarity: similarities between query, key and value neurons, with and without their mean offsets.

Protocol (STUDIES.md section 5): ~54 short sentences that contain the target word (" her"); the target token
and the token just before it. At one layer, every Q, K and V neuron is a vector over the sentences; cosine
similarity (keeps the mean offset) and Pearson correlation (removes it) between all pairs of neurons in one big
matrix; blocks QQ, KK, VV, QK, QV, KV picked by a label mask (widths may differ: grouped-query attention);
a shuffled baseline (all activation values permuted); histograms with edges linspace(-1, 1, 101). Across
layers: distribution widths, mean offsets, and the across-sentence variance of target and non-target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, select
from ..errors import LaminaError
from ..stats import column_correlation, column_cosine_similarity, correlate, fixed_histogram, label_blocks
from .base import Claim, StudyOutput, register, scaled_layer
from .texts import HER_SENTENCES

S_EDGES = np.linspace(-1, 1, 101)
KINDS = ("target", "previous")
PARTS = ("Q", "K", "V")
BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")
MEASURES = ("cosine", "correlation", "shuffled")


@dataclass(frozen=True)
class QKVConfig:
    """Settings of qkv-similarity.

    Attributes:
        target: the target word; each sentence must contain it (its first occurrence is used).
        layer: the block analysed in detail (None: layer 6 of 12 scaled to the model).
        extreme: |similarity| above this counts as "near +-1" (the smile's mass).
        seed: seed of the shuffled baseline.
    """

    target: str = "her"
    layer: int | None = None
    extreme: float = 0.7
    seed: int = 0

    def __post_init__(self):
        if not self.target.strip():
            raise LaminaError("target must be a word such as 'her'")
        if not 0 < self.extreme < 1:
            raise LaminaError(f"extreme must be between 0 and 1 (got {self.extreme})")


def target_and_previous(target: str) -> select.Selector:
    """Positions [token before the target, target's last token] of the target's first occurrence in every
    text."""

    def fn(t):
        spans = select.find_word_spans(t.text, target)
        if not spans:
            raise LaminaError(f"word {target.strip()!r} not found in sentence {t.index} ({t.text[:40]!r}); "
                              "every sentence needs the target word")
        start, end = spans[0]
        toks = [i for i, (a, b) in enumerate(t.offsets) if not t.special[i] and a < end and b > start]
        if not toks or toks[0] == 0 or t.special[toks[0] - 1]:
            raise LaminaError(f"{target.strip()!r} has no token before it in sentence {t.index} "
                              f"({t.text[:40]!r}); put at least one word before the target")
        return [toks[0] - 1, toks[-1]]

    return select.where(fn, key=f"target-and-previous:{target.strip()}")


def _sentences(inputs) -> list[str]:
    text = inputs.get("text")
    if not text:
        return list(HER_SENTENCES)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 5:
        raise LaminaError(f"the text file has {len(lines)} sentences; put at least 5, one per line")
    return lines


def similarity_blocks(X: np.ndarray, labels: np.ndarray, rng) -> dict[str, dict[str, np.ndarray]]:
    """measure -> block -> upper-triangle similarity values for one token kind at one layer.

    Args:
        X: (n_sentences, n_q + n_k + n_v) activations; labels: (n_columns,) 1 = Q, 2 = K, 3 = V.
    """
    names = {1: "Q", 2: "K", 3: "V"}
    shuffled = rng.permutation(X.ravel()).reshape(X.shape)  # permute all activation values
    mats = {"cosine": column_cosine_similarity(X), "correlation": column_correlation(X),
            "shuffled": column_cosine_similarity(shuffled)}
    return {m: label_blocks(S, labels, names) for m, S in mats.items()}


def _summary(values: np.ndarray, extreme: float) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std()), "mean_abs": float(np.abs(values).mean()),
            "extreme_fraction": float(np.mean(np.abs(values) > extreme))}


def _part_stats(parts: dict[str, np.ndarray]) -> dict:
    """Per Q/K/V: mean offsets (|mean| over sentences) and spreads (std over sentences) averaged over neurons."""
    out = {}
    for name, A in parts.items():
        mean, std = A.mean(axis=0), A.std(axis=0, ddof=1)
        out[name] = {"mean_abs_offset": float(np.abs(mean).mean()), "mean_std": float(std.mean()),
                     "mean_variance": float((std**2).mean()),
                     "offset_over_std": float(np.median(np.abs(mean) / np.where(std > 0, std, np.inf))),
                     "value_std": float(A.std())}
    return out


@register("qkv-similarity", "Similarities between Q, K and V neurons: cosine (mean offset kept) vs correlation",
          QKVConfig)
def compute(model, config: QKVConfig, inputs) -> StudyOutput:
    sentences = _sentences(inputs)
    L = model.n_layers
    layer = config.layer if config.layer is not None else scaled_layer(6, 12, L)
    if not 0 <= layer < L:
        raise LaminaError(f"layer {layer} does not exist; {model.name} has blocks 0-{L - 1}")
    acts = capture(model, sentences, ["blocks.*.attn.hook_q", "blocks.*.attn.hook_k", "blocks.*.attn.hook_v"],
                   positions=target_and_previous(config.target),
                   cache=True)
    if len(acts) != 2 * len(sentences):
        raise LaminaError("expected two positions per sentence")
    kind_rows = {"previous": np.arange(0, len(acts), 2), "target": np.arange(1, len(acts), 2)}
    widths = {p: acts[f"blocks.0.attn.hook_{p.lower()}"].shape[1] for p in PARTS}
    labels = np.repeat([1, 2, 3], [widths["Q"], widths["K"], widths["V"]])
    rng = np.random.default_rng(config.seed)
    detail, hists, per_layer = {}, {}, []
    for lay in range(L):
        row = {"layer": lay}
        for kind in KINDS:
            parts = {p: acts[f"blocks.{lay}.attn.hook_{p.lower()}"].double().numpy()[kind_rows[kind]]
                     for p in PARTS}
            blocks = similarity_blocks(np.concatenate(list(parts.values()), axis=1), labels, rng)
            stats = _part_stats(parts)
            cos_all = np.concatenate(list(blocks["cosine"].values()))
            row[kind] = {"cosine_std": float(cos_all.std()), "cosine_mean_abs": float(np.abs(cos_all).mean()),
                         "correlation_std": float(np.concatenate(list(blocks["correlation"].values())).std()),
                         **{f"{p}_mean_abs_offset": stats[p]["mean_abs_offset"] for p in PARTS},
                         **{f"{p}_variance": stats[p]["mean_variance"] for p in PARTS},
                         "variance": float(np.mean([stats[p]["mean_variance"] for p in PARTS]))}
            if lay == layer:
                detail[kind] = {"parts": stats,
                                "blocks": {m: {b: _summary(v, config.extreme) for b, v in blocks[m].items()}
                                           for m in MEASURES}}
                for m in MEASURES:
                    for b in BLOCKS:
                        hists[f"{kind}_{m}_{b}"] = fixed_histogram(blocks[m][b], S_EDGES)
        per_layer.append(row)
    results = {"n_sentences": len(sentences), "layer": layer, "widths": widths,
               "target_tokens": sorted(set(acts.rows.token[1::2])),
               "previous_tokens": sorted(set(acts.rows.token[0::2])), "detail": detail, "per_layer": per_layer}
    return StudyOutput(results, _claims(results), arrays=hists, resolved={"layer": layer})


def _claims(r: dict) -> list[dict]:
    d = r["detail"]["target"]
    cos, corr, shuf = (d["blocks"][m] for m in MEASURES)
    ext = {b: cos[b]["extreme_fraction"] for b in BLOCKS}
    abs_cos = {b: cos[b]["mean_abs"] for b in BLOCKS}
    corr_gap = max(abs(corr[b]["mean_abs"] - shuf[b]["mean_abs"]) for b in BLOCKS)
    cos_gap = max(abs(cos[b]["mean_abs"] - shuf[b]["mean_abs"]) for b in BLOCKS)
    offsets = {p: d["parts"][p]["mean_abs_offset"] for p in PARTS}
    spread = {p: d["parts"][p]["value_std"] for p in PARTS}
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    width = [p["target"]["cosine_std"] for p in pl]
    var_t = np.array([p["target"]["variance"] for p in pl])
    var_p = np.array([p["previous"]["variance"] for p in pl])
    shrink = correlate(layers, width, "spearman").r if len(pl) >= 3 else None
    rise = correlate(layers, var_t, "spearman").r if len(pl) >= 3 else None
    return [
        Claim("QQ and KK cosine histograms are smile-shaped (mass near +-1); VV is flatter",
              "QQ, KK extreme mass > VV", {"fraction_abs_cos_above_threshold": ext},
              ext["QQ"] > ext["VV"] and ext["KK"] > ext["VV"]),
        Claim("Q-K similarity is much higher than Q-V and K-V", "QK >> QV, KV",
              {"mean_abs_cosine": {b: abs_cos[b] for b in ("QK", "QV", "KV")}},
              abs_cos["QK"] > abs_cos["QV"] and abs_cos["QK"] > abs_cos["KV"]),
        Claim("After mean-centring (correlation) every block looks like the shuffled baseline",
              "correlation ~ shuffled; cosine is not",
              {"max_gap_correlation_vs_shuffled": corr_gap, "max_gap_cosine_vs_shuffled": cos_gap},
              corr_gap < cos_gap / 3),
        Claim("K has the largest mean offsets, V the tightest values", "K largest |mean|; V smallest spread",
              {"mean_abs_offset": offsets, "value_std": spread},
              max(offsets, key=offsets.get) == "K" and min(spread, key=spread.get) == "V"),
        Claim("Across layers the similarity distributions shrink toward 0 with depth", "width falls with depth",
              {"spearman_layer_vs_cosine_std": shrink}, None if shrink is None else shrink < 0),
        Claim("The target's across-sentence variance starts near 0 and rises with depth",
              "~0 at layer 0, rising", {"variance_layer0_over_max": float(var_t[0] / max(var_t.max(), 1e-300)),
                                        "spearman_layer_vs_variance": rise},
              None if rise is None else var_t[0] < 0.1 * var_t.max() and rise > 0.5),
        Claim("The non-target token's variance is higher than the target's", "non-target > target",
              {"fraction_of_layers": float(np.mean(var_p > var_t))}, float(np.mean(var_p > var_t)) > 0.5),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    centres = (S_EDGES[:-1] + S_EDGES[1:]) / 2
    files = []
    for kind in KINDS:
        fig, axes = new_figure(2, 3, size=(13, 6.5))
        for i, b in enumerate(BLOCKS):
            ax = axes[i // 3, i % 3]
            for m, style in zip(MEASURES, ("-", "--", ":")):
                h = a[f"{kind}_{m}_{b}"]
                ax.plot(centres, h / max(h.sum(), 1), ls=style, label=m)
            ax.set(title=f"{b}", xlabel="similarity", ylabel="fraction of pairs")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"layer {r['layer']}, {kind} token: cosine vs correlation vs shuffled")
        files.append((save(fig, folder, f"blocks_{kind}"), f"Similarity histograms per block, {kind} token "
                      f"(layer {r['layer']})"))

    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    fig, axes = new_figure(1, 3, size=(15, 4))
    for kind, color in zip(KINDS, ("tab:red", "tab:blue")):
        axes[0, 0].plot(layers, [p[kind]["cosine_std"] for p in pl], color=color, label=f"{kind}: cosine")
        axes[0, 0].plot(layers, [p[kind]["correlation_std"] for p in pl], color=color, ls="--",
                        label=f"{kind}: correlation")
        axes[0, 1].plot(layers, [p[kind]["variance"] for p in pl], color=color, label=kind)
        for part, style in zip(PARTS, ("-", "--", ":")):
            axes[0, 2].plot(layers, [p[kind][f"{part}_mean_abs_offset"] for p in pl], color=color, ls=style,
                            label=f"{kind} {part}")
    axes[0, 0].set(title="width (std) of the similarity distribution", xlabel="layer")
    axes[0, 1].set(title="across-sentence variance (mean over neurons)", xlabel="layer", yscale="log")
    axes[0, 2].set(title="mean |offset| per Q, K, V", xlabel="layer", yscale="log")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    files.append((save(fig, folder, "per_layer", svg=True), "Across layers: widths, variances and offsets"))
    return files
