"""qkv-similarity: similarities between query, key and value neurons, with and without their mean offsets.

Protocol (STUDIES.md section 5): ~54 short sentences that contain the target word (" her"); the target token
and the token just before it. At one layer, every Q, K and V neuron is a vector over the sentences; cosine
similarity (keeps the mean offset) and Pearson correlation (removes it) between all pairs of neurons in one big
matrix; blocks QQ, KK, VV, QK, QV, KV (widths may differ: grouped-query attention); a shuffled baseline (all
activation values permuted, ``n_shuffles`` seeded draws so it has a spread); histograms with edges
linspace(-1, 1, 101). Across layers: distribution widths, mean offsets, and the across-sentence variance of target
and non-target. Sentences are the sampled items: seeded bootstrap CIs resample them (``n_bootstrap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import select
from ..errors import LaminaError
from ..stats import column_correlation, column_cosine_similarity, fixed_histogram, label_blocks
from .base import StudyOutput, register, scaled_layer
from .kept_rows import capture_qkv_rows
from .qkv_stats import block_measures, neuron_width, noise_floor, part_variance, shuffle_values
from .resampling import boot, bootstrap_counts, layer_trend
from .texts import HER_SENTENCES

S_EDGES = np.linspace(-1, 1, 101)
KINDS = ("target", "previous")
PARTS = ("Q", "K", "V")
BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")
MEASURES = ("cosine", "correlation", "shuffled")
ALPHA = 0.05  # the conventional 5% level for every test of this study
MOST = 0.5  # "centring removes most of the excess": more than half of it, i.e. a kept share below 0.5
Z95 = 1.96  # the two-sided 95% band of a (near-normal) shuffled null: a mean over ~10^5 pairs
LAYER_SHUFFLES = 3  # shuffles per layer for the per-layer null band (the width of shuffled data barely varies)


@dataclass(frozen=True)
class QKVConfig:
    """Settings of qkv-similarity.

    Attributes:
        target: the target word; each sentence must contain it (its first occurrence is used).
        layer: the block analysed in detail (None: layer 6 of 12 scaled to the model).
        extreme: |similarity| above this counts as "near +-1" (the smile's mass); 0.7 because 0.7^2 ~ 0.5:
            the two neurons share about half their (uncentred) variance.
        n_shuffles: shuffled baselines at the detail layer (p of a shuffle test is at least 1/(n + 1): use >= 19).
        n_bootstrap: sentence resamples for the bootstrap CIs.
        seed: seed of the shuffles and the bootstrap.
    """

    target: str = "her"
    layer: int | None = None
    extreme: float = 0.7
    n_shuffles: int = 20
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        if not self.target.strip():
            raise LaminaError("target must be a word such as 'her'")
        check.layer("layer", self.layer)
        check.between("extreme", self.extreme, 0, 1)
        check.at_least("n_shuffles", self.n_shuffles, 2)
        check.at_least("n_bootstrap", self.n_bootstrap, 20)
        check.seed("seed", self.seed)

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("layer", self.layer, model.n_layers, model.name)


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
    mats = {"cosine": column_cosine_similarity(X), "correlation": column_correlation(X),
            "shuffled": column_cosine_similarity(shuffle_values(X, rng))}
    return {m: label_blocks(S, labels, names) for m, S in mats.items()}


def _summary(values: np.ndarray, extreme: float) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std()), "mean_abs": float(np.abs(values).mean()),
            "extreme_fraction": float(np.mean(np.abs(values) > extreme))}


def part_stats(parts: dict[str, np.ndarray]) -> dict:
    """Per Q/K/V: mean offsets (|mean| over sentences) and spreads (std over sentences) averaged over neurons."""
    out = {}
    for name, A in parts.items():
        mean, std = A.mean(axis=0), A.std(axis=0, ddof=1)
        out[name] = {"mean_abs_offset": float(np.abs(mean).mean()), "mean_std": float(std.mean()),
                     "mean_variance": float((std**2).mean()),
                     "offset_over_std": float(np.median(np.abs(mean) / np.where(std > 0, std, np.inf))),
                     "value_std": float(A.std())}
    return out


def _detail_statistics(X: np.ndarray, widths: dict, extreme: float, dtype=np.float64) -> dict:
    """The detail layer's claim statistics of one (n_sentences, n_q + n_k + n_v) matrix (sentences = rows)."""
    bounds = np.cumsum([0] + [widths[p] for p in PARTS])
    both = block_measures(X, bounds, PARTS, extreme, dtype)
    cos, corr = both["cos"], both["corr"]
    parts = {p: X[:, bounds[i]:bounds[i + 1]] for i, p in enumerate(PARTS)}
    return {"ext": {b: cos[b]["extreme_fraction"] for b in BLOCKS},
            "cos": {b: cos[b]["mean_abs"] for b in BLOCKS}, "corr": {b: corr[b]["mean_abs"] for b in BLOCKS},
            "offset": {p: float(np.abs(A.mean(axis=0)).mean()) for p, A in parts.items()},
            "spread": {p: float(A.std()) for p, A in parts.items()}}


def _retained(s: dict, floor: dict) -> dict:
    """Per block: the share of the cosine's excess over its shuffled floor that survives mean-centring
    ((|corr| - floor of |corr|) / (|cos| - floor of |cos|)); NaN where the cosine shows no excess.
    ``floor``: {"cos": {block: value}, "corr": {block: value}}."""
    return {b: (s["corr"][b] - floor["corr"][b]) / (s["cos"][b] - floor["cos"][b])
            if s["cos"][b] > floor["cos"][b] else np.nan for b in BLOCKS}


def _detail_quantities(s: dict, floor: dict) -> dict:
    """The numbers the claims test, from one set of detail statistics (real data or one bootstrap resample)."""
    kept = _retained(s, floor)
    return {"ext_QQ_minus_VV": s["ext"]["QQ"] - s["ext"]["VV"], "ext_KK_minus_VV": s["ext"]["KK"] - s["ext"]["VV"],
            "qk_gap": s["cos"]["QK"] - max(s["cos"]["QV"], s["cos"]["KV"]),
            **{f"retained_{b}_minus_half": kept[b] - MOST for b in BLOCKS},
            "offset_K_minus_max_QV": s["offset"]["K"] - max(s["offset"]["Q"], s["offset"]["V"]),
            "spread_min_QK_minus_V": min(s["spread"]["Q"], s["spread"]["K"]) - s["spread"]["V"]}


def _shuffled_null(X: np.ndarray, widths: dict, config: QKVConfig, rng) -> dict:
    """Block statistics of ``n_shuffles`` shuffled copies of X, for cosine and correlation:
    measure -> block -> statistic -> {"mean", "sd", "values"}."""
    bounds = np.cumsum([0] + [widths[p] for p in PARTS])
    draws = {"cos": [], "corr": []}
    for _ in range(config.n_shuffles):
        both = block_measures(shuffle_values(X, rng), bounds, PARTS, config.extreme, np.float32)
        draws["cos"].append(both["cos"])
        draws["corr"].append(both["corr"])
    return {m: {b: {key: {"mean": float(np.mean(v := [d[b][key] for d in ds])), "sd": float(np.std(v, ddof=1)),
                          "values": [float(x) for x in v]} for key in ("extreme_fraction", "mean_abs")}
                for b in BLOCKS} for m, ds in draws.items()}


@register("qkv-similarity", "Similarities between Q, K and V neurons: cosine (mean offset kept) vs correlation",
          QKVConfig)
def compute(model, config: QKVConfig, inputs) -> StudyOutput:
    sentences = _sentences(inputs)
    L = model.n_layers
    layer = config.layer if config.layer is not None else scaled_layer(6, 12, L)
    if not 0 <= layer < L:
        raise LaminaError(f"layer {layer} does not exist; {model.name} has blocks 0-{L - 1}")
    acts = capture_qkv_rows(model, sentences, target_and_previous(config.target))
    if len(acts) != 2 * len(sentences):
        raise LaminaError("expected two positions per sentence")
    n = len(sentences)
    kind_rows = {"previous": np.arange(0, len(acts), 2), "target": np.arange(1, len(acts), 2)}
    widths = {p: acts[f"blocks.0.attn.hook_{p.lower()}"].shape[1] for p in PARTS}
    labels = np.repeat([1, 2, 3], [widths["Q"], widths["K"], widths["V"]])
    rng = np.random.default_rng(config.seed)
    counts = bootstrap_counts(n, config.n_bootstrap, rng)  # the same resampled sentences for every statistic
    detail, hists, per_layer, X_detail = {}, {}, [], None
    curves = {"width_target": [], "variance_target": [], "variance_previous": []}  # (L, n_bootstrap) each
    for lay in range(L):
        row = {"layer": lay}
        for kind in KINDS:
            parts = {p: acts[f"blocks.{lay}.attn.hook_{p.lower()}"].double().numpy()[kind_rows[kind]]
                     for p in PARTS}
            X = np.concatenate(list(parts.values()), axis=1)
            stats = part_stats(parts)
            variance = part_variance(list(parts.values()), counts)
            curves[f"variance_{kind}"].append(variance)
            row[kind] = {"cosine_std": neuron_width(X), "correlation_std": neuron_width(X - X.mean(axis=0)),
                         **{f"{p}_mean_abs_offset": stats[p]["mean_abs_offset"] for p in PARTS},
                         **{f"{p}_variance": stats[p]["mean_variance"] for p in PARTS},
                         "variance": float(np.mean([stats[p]["mean_variance"] for p in PARTS])),
                         "variance_ci": np.quantile(variance, [0.025, 0.975]).tolist()}
            if kind == "target":
                width = neuron_width(X, counts)
                curves["width_target"].append(width)
                shuffled_width = [neuron_width(shuffle_values(X, rng)) for _ in range(LAYER_SHUFFLES)]
                row[kind].update({"cosine_std_ci": np.quantile(width, [0.025, 0.975]).tolist(),
                                  "shuffled_cosine_std": float(np.mean(shuffled_width)),
                                  "shuffled_cosine_std_sd": float(np.std(shuffled_width, ddof=1))})
            if lay == layer:
                X_detail = X if kind == "target" else X_detail
                blocks = similarity_blocks(X, labels, rng)
                detail[kind] = {"parts": stats,
                                "blocks": {m: {b: _summary(v, config.extreme) for b, v in blocks[m].items()}
                                           for m in MEASURES}}
                for m in MEASURES:
                    for b in BLOCKS:
                        hists[f"{kind}_{m}_{b}"] = fixed_histogram(blocks[m][b], S_EDGES)
        per_layer.append(row)
    shuffled = _shuffled_null(X_detail, widths, config, rng)
    floor = {m: {b: shuffled[m][b]["mean_abs"]["mean"] for b in BLOCKS} for m in shuffled}
    point = _detail_statistics(X_detail, widths, config.extreme)
    quantities = _detail_quantities(point, floor)
    floors = noise_floor(X_detail, counts, rng)  # each resample against its own resampled shuffled floor
    draws = [_detail_quantities(_detail_statistics(np.repeat(X_detail, c, axis=0), widths, config.extreme,
                                                   np.float32),
                                {"cos": dict.fromkeys(BLOCKS, f[0]), "corr": dict.fromkeys(BLOCKS, f[1])})
             for c, f in zip(counts, floors)]
    first = 0 if model.adapter.absolute_positions else 1  # rotary: layer 0 holds one vector per token (claims)
    curves = {k: np.array(v) for k, v in curves.items()}
    var_t = np.array([p["target"]["variance"] for p in per_layer])
    var_p = np.array([p["previous"]["variance"] for p in per_layer])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(var_p[first:] / var_t[first:]).mean()
        log_ratio_draws = np.log(curves["variance_previous"][first:] / curves["variance_target"][first:]).mean(0)
        log0 = np.log(var_t[0] / var_p[0])
        log0_draws = np.log(curves["variance_target"][0] / curves["variance_previous"][0])
    nulls = {
        "shuffled": shuffled,
        "retained": _retained(point, floor),
        "bootstrap": {k: boot(quantities[k], [d[k] for d in draws]) for k in quantities},
        "trends": {"width_target": layer_trend([p["target"]["cosine_std"] for p in per_layer],
                                               curves["width_target"], first, "less"),
                   "variance_target": layer_trend(var_t, curves["variance_target"], first, "greater")},
        "log_variance_previous_over_target": boot(log_ratio, log_ratio_draws),
        "log_layer0_variance_target_over_previous": boot(log0, log0_draws),
    }
    results = {"n_sentences": n, "layer": layer, "widths": widths, "first_trend_layer": first,
               "absolute_positions": bool(model.adapter.absolute_positions),
               "target_tokens": sorted(set(acts.rows.token[1::2])),
               "previous_tokens": sorted(set(acts.rows.token[0::2])), "detail": detail, "per_layer": per_layer,
               "detail_statistics": point, "nulls": nulls}
    return StudyOutput(results, [], arrays=hists, resolved={"layer": layer})


def claims(output: StudyOutput, config: QKVConfig, baseline: StudyOutput | None) -> list[dict]:
    """The write-up's findings at the detail layer and across layers, each against the shuffled baseline, the
    random-init model (``baseline``) or a bootstrap CI over sentences (see :mod:`.qkv_claims`)."""
    from .qkv_claims import qkv_similarity_claims

    return qkv_similarity_claims(output.results, config, None if baseline is None else baseline.results)


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline.results if output.baseline is not None else None
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
        lo, hi = np.array([p[kind]["variance_ci"] for p in pl]).T
        axes[0, 1].fill_between(layers, lo, hi, color=color, alpha=0.2, lw=0)
        for part, style in zip(PARTS, ("-", "--", ":")):
            axes[0, 2].plot(layers, [p[kind][f"{part}_mean_abs_offset"] for p in pl], color=color, ls=style,
                            label=f"{kind} {part}")
    lo, hi = np.array([p["target"]["cosine_std_ci"] for p in pl]).T
    axes[0, 0].fill_between(layers, lo, hi, color="tab:red", alpha=0.2, lw=0)
    shuf = np.array([p["target"]["shuffled_cosine_std"] for p in pl])
    sd = np.array([p["target"]["shuffled_cosine_std_sd"] for p in pl])
    axes[0, 0].fill_between(layers, shuf - 2 * sd, shuf + 2 * sd, color="k", alpha=0.25, lw=0,
                            label="shuffled (null, +-2 sd)")
    if base is not None:
        bl = base["per_layer"]
        axes[0, 0].plot(layers, [p["target"]["cosine_std"] for p in bl], color="grey", ls="--",
                        label="random-init: target cosine")
        axes[0, 1].plot(layers, [p["target"]["variance"] for p in bl], color="grey", ls="--",
                        label="random-init: target")
        axes[0, 2].plot(layers, [p["target"]["K_mean_abs_offset"] for p in bl], color="grey", ls="--",
                        label="random-init: target K")
    axes[0, 0].set(title="width (std) of the similarity distribution", xlabel="layer")
    axes[0, 1].set(title="across-sentence variance (mean over neurons; band: bootstrap 95% CI)", xlabel="layer")
    axes[0, 2].set(title="mean |offset| per Q, K, V", xlabel="layer", yscale="log")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    files.append((save(fig, folder, "per_layer", svg=True), "Across layers: widths (band: bootstrap 95% CI over "
                  "sentences; grey band: shuffled null), variances and offsets; grey dashed: random-init model"))
    return files
