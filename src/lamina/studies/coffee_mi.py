"""coffee-mi: mutual information between the contexts of a repeated word vs the token distance between them.

Protocol (STUDIES.md section 1): the attention output (after the output projection) at every occurrence of a
word; histogram MI between every pair of occurrence vectors with z-score trimming (|z| > 4 dropped in either
vector); Kendall's tau between MI and token distance over the pairs (distance is ordinal). Part 2 repeats it
for every layer and for the MLP output too, with a t-test attention vs MLP per layer, a Fisher z comparison of
the two taus, FDR over layers, and scikit-learn's kNN (KSG) estimator without trimming as a second opinion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, select
from ..errors import LaminaError
from ..stats import correct_pvalues, correlate, fisher_z_compare, independent_ttest, pairwise_mutual_information
from ..stats import trim_mask
from .base import Claim, StudyOutput, register, scaled_layer
from .texts import COFFEE_PARAGRAPH, default_text


@dataclass(frozen=True)
class CoffeeMIConfig:
    """Settings of coffee-mi (defaults from the protocol).

    Attributes:
        word: the repeated target word.
        layer: block of part 1; None = layer 3 of gpt2-xl's 48 scaled to the model's depth.
        bins: histogram bins per axis (the course's MI lesson used 15) or a bin rule.
        trim_z: drop dimensions with |z| above this in either vector (None: no trimming).
        knn: also compute scikit-learn's kNN MI (no trimming) for every layer.
        n_neighbors: k of the kNN estimator.
        correction: multiple-comparison correction over layers ("fdr_bh" or "bonferroni").
        alpha: significance level after correction.
        token: which token of a word split into several ("last", "first").
        seed: seed of the kNN estimator's jitter.
    """

    word: str = "coffee"
    layer: int | None = None
    bins: int | str = 15
    trim_z: float | None = 4.0
    knn: bool = True
    n_neighbors: int = 3
    correction: str = "fdr_bh"
    alpha: float = 0.05
    token: str = "last"
    seed: int = 0

    def __post_init__(self):
        if not self.word.strip():
            raise LaminaError("word must not be empty")
        if self.trim_z is not None and self.trim_z <= 0:
            raise LaminaError(f"trim_z must be positive or none (got {self.trim_z})")
        if self.correction not in ("fdr_bh", "bonferroni"):
            raise LaminaError(f"correction must be fdr_bh or bonferroni (got {self.correction!r})")
        if self.token not in ("last", "first"):
            raise LaminaError(f"token must be last or first (got {self.token!r})")
        if self.n_neighbors < 1 or not 0 < self.alpha < 1:
            raise LaminaError("n_neighbors must be >= 1 and alpha in (0, 1)")


def _site_stats(mi: np.ndarray, distance: np.ndarray) -> list[dict]:
    iu = np.triu_indices(mi.shape[-1], 1)
    out = []
    for layer_mi in mi:
        tau = correlate(layer_mi[iu], distance[iu], "kendall")
        out.append({"mean_mi": float(layer_mi[iu].mean()), "tau": tau.r, "p": tau.p})
    return out


@register("coffee-mi", "MI between the contexts of a repeated word vs token distance (attention/MLP, all layers)",
          CoffeeMIConfig)
def compute(model, config: CoffeeMIConfig, inputs) -> StudyOutput:
    text, text_info = default_text(model, inputs.get("text"), COFFEE_PARAGRAPH)
    n_layers = model.n_layers
    layer = config.layer if config.layer is not None else scaled_layer(3, 48, n_layers)
    if not 0 <= layer < n_layers:
        raise LaminaError(f"layer {layer} is outside 0..{n_layers - 1} for {model.name}")
    selector = select.word(config.word, token=config.token)
    acts = capture(model, text, "blocks.*.hook_attn_out,blocks.*.hook_mlp_out", positions=selector, cache=True)
    n = len(acts)
    if n < 3:
        raise LaminaError(f"the word {config.word!r} occurs {n} time(s) in the text; at least 3 are needed "
                          "(choose another --set word= or --text-file)")
    positions = acts.rows.position.astype(int)
    distance = np.abs(positions[:, None] - positions[None, :]).astype(float)
    iu = np.triu_indices(n, 1)
    attn = acts.stack("hook_attn_out").double().numpy()  # (L, n, d)
    mlp = acts.stack("hook_mlp_out").double().numpy()
    mi_attn, n_bins = pairwise_mutual_information(attn, bins=config.bins, trim_z=config.trim_z, return_bins=True)
    mi_mlp = pairwise_mutual_information(mlp, bins=n_bins, trim_z=config.trim_z)
    mi_attn_raw = pairwise_mutual_information(attn, bins=n_bins)
    attn_stats, mlp_stats = _site_stats(mi_attn, distance), _site_stats(mi_mlp, distance)
    knn_attn = knn_mlp = None
    if config.knn:
        kw = {"estimator": "ksg", "n_neighbors": config.n_neighbors, "random_state": config.seed}
        knn_attn = _site_stats(pairwise_mutual_information(attn, **kw), distance)
        knn_mlp = _site_stats(pairwise_mutual_information(mlp, **kw), distance)

    n_pairs = len(iu[0])
    per_layer = []
    for l in range(n_layers):
        t, t_p = independent_ttest(mi_attn[l][iu], mi_mlp[l][iu])
        fz, fp = fisher_z_compare(attn_stats[l]["tau"], n_pairs, mlp_stats[l]["tau"], n_pairs) if n_pairs > 3 \
            else (float("nan"), float("nan"))
        row = {"layer": l, "attn": attn_stats[l], "mlp": mlp_stats[l], "t": t, "t_p": t_p, "fisher_z": fz,
               "fisher_p": fp}
        if config.knn:
            row["knn"] = {"attn": knn_attn[l], "mlp": knn_mlp[l]}
        per_layer.append(row)
    for key in ("attn", "mlp"):
        sig, adj = correct_pvalues([r[key]["p"] for r in per_layer], config.correction, config.alpha)
        for r, s, a in zip(per_layer, sig, adj):
            r[key].update({"p_adjusted": float(a), "significant": bool(s)})
    sig, adj = correct_pvalues([r["t_p"] for r in per_layer], config.correction, config.alpha)
    for r, s, a in zip(per_layer, sig, adj):
        r.update({"t_p_adjusted": float(a), "t_significant": bool(s)})

    tau = attn_stats[layer]
    trimmed_mean = float(mi_attn[layer][iu].mean())
    raw_mean = float(mi_attn_raw[layer][iu].mean())
    keep = trim_mask(attn[layer, :2], config.trim_z)
    outlier = ~(keep[0] & keep[1])
    results = {
        **text_info,
        "word": config.word,
        "n_occurrences": n,
        "positions": positions.tolist(),
        "tokens": list(acts.rows.token),
        "layer": layer,
        "bins": n_bins,
        "mi": mi_attn[layer].tolist(),
        "mi_untrimmed": mi_attn_raw[layer].tolist(),
        "distance": distance.tolist(),
        "tau": tau["tau"],
        "p": tau["p"],
        "tau_untrimmed": correlate(mi_attn_raw[layer][iu], distance[iu], "kendall").r,
        "mean_mi": trimmed_mean,
        "mean_mi_untrimmed": raw_mean,
        "trim_gain": trimmed_mean / raw_mean if raw_mean > 0 else None,
        "n_outlier_dims_pair_1_2": int(outlier.sum()),
        "knn_tau": knn_attn[layer]["tau"] if config.knn else None,
        "per_layer": per_layer,
    }
    arrays = {"scatter_x": attn[layer, 0], "scatter_y": attn[layer, 1], "scatter_outlier": outlier}
    return StudyOutput(results, _claims(results, per_layer, n_layers, layer, config),
                       resolved={"layer": layer, "bins": n_bins}, arrays=arrays)


def _claims(r: dict, per_layer: list[dict], n_layers: int, layer: int, config) -> list[dict]:
    attn_mi = np.array([p["attn"]["mean_mi"] for p in per_layer])
    mlp_mi = np.array([p["mlp"]["mean_mi"] for p in per_layer])
    taus = np.array([p["attn"]["tau"] for p in per_layer] + [p["mlp"]["tau"] for p in per_layer])
    q = max(1, n_layers // 4)
    ends = np.r_[attn_mi[:q], attn_mi[-q:]].mean()
    middle = attn_mi[q:-q].mean() if n_layers > 2 * q else float("nan")
    claims = [
        Claim(f"Kendall tau between MI and token distance is negative (layer {layer}, attention)",
              "tau ~ -0.5 on gpt2-xl layer 3", {"tau": r["tau"], "p": r["p"]}, r["tau"] < 0),
        Claim("Trimming |z| > 4 outliers raises MI", "almost two-fold in the original",
              {"trim_gain": r["trim_gain"]}, r["trim_gain"] is not None and r["trim_gain"] > 1),
        Claim("tau is negative in almost every layer (attention and MLP)", "tau < 0 in nearly all layers",
              {"fraction_negative": float((taus < 0).mean())}, (taus < 0).mean() > 0.75),
        Claim("Attention MI is higher at the first and last layers than in the middle", "U-shaped profile",
              {"ends_mean": float(ends), "middle_mean": float(middle)},
              None if np.isnan(middle) else ends > middle),
        Claim("MLP MI is high early and lower later", "high early, then drops and stays flat",
              {"first_quarter": float(mlp_mi[:q].mean()), "rest": float(mlp_mi[q:].mean())},
              mlp_mi[:q].mean() > mlp_mi[q:].mean() if n_layers > q else None),
        Claim("MLP > attention early, attention > MLP late", "crossing profiles",
              {"early_mlp_minus_attn": float((mlp_mi[:q] - attn_mi[:q]).mean()),
               "late_attn_minus_mlp": float((attn_mi[-q:] - mlp_mi[-q:]).mean())},
              (mlp_mi[:q] - attn_mi[:q]).mean() > 0 and (attn_mi[-q:] - mlp_mi[-q:]).mean() > 0),
    ]
    if config.knn:
        knn_profile = np.array([p["knn"]["attn"]["mean_mi"] for p in per_layer])
        agree = correlate(knn_profile, attn_mi, "spearman").r if n_layers >= 3 else float("nan")
        claims += [
            Claim(f"The kNN estimator (no trimming) also gives a negative tau (layer {layer})",
                  "tau ~ -0.5 again", {"tau": r["knn_tau"]}, r["knn_tau"] < 0),
            Claim("Histogram and kNN layer profiles differ only subtly", "similar profiles",
                  {"spearman_profiles": agree}, None if np.isnan(agree) else agree > 0.5),
        ]
    return claims


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    files = []
    fig, ax = new_figure()
    ax = ax[0, 0]
    out = a["scatter_outlier"].astype(bool)
    ax.scatter(a["scatter_x"][~out], a["scatter_y"][~out], s=6, alpha=0.6, label="kept")
    ax.scatter(a["scatter_x"][out], a["scatter_y"][out], s=14, color="crimson", label=f"|z| > trim ({out.sum()})")
    ax.set(xlabel="occurrence 1", ylabel="occurrence 2", title=f"attention output, layer {r['layer']}")
    ax.legend(fontsize=8)
    files.append((save(fig, folder, "scatter_occurrences"), "Occurrence 1 vs 2 (every dimension), outliers marked"))

    fig, axes = new_figure(1, 2)
    for ax, key, title in ((axes[0, 0], "mi", "MI (bits, trimmed)"), (axes[0, 1], "distance", "token distance")):
        im = ax.imshow(np.array(r[key]), cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    files.append((save(fig, folder, "matrices"), f"Pairwise MI and distance matrices, layer {r['layer']}"))

    fig, ax = new_figure()
    ax = ax[0, 0]
    iu = np.triu_indices(r["n_occurrences"], 1)
    dist = np.array(r["distance"])[iu]
    ax.scatter(dist, np.array(r["mi"])[iu], label=f"trimmed: tau={r['tau']:.2f}")
    ax.scatter(dist, np.array(r["mi_untrimmed"])[iu], marker="x", label=f"untrimmed: tau={r['tau_untrimmed']:.2f}")
    ax.set(xlabel="token distance", ylabel="MI (bits)", title=f"MI vs distance, layer {r['layer']} (p={r['p']:.3g})")
    ax.legend(fontsize=8)
    files.append((save(fig, folder, "mi_vs_distance"), "MI against token distance with Kendall's tau"))

    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    fig, axes = new_figure(1, 2, size=(11, 3.8))
    for key, color in (("attn", "tab:blue"), ("mlp", "tab:orange")):
        axes[0, 0].plot(layers, [p[key]["mean_mi"] for p in pl], color=color, label=f"{key} (histogram)")
        if "knn" in pl[0]:
            axes[0, 0].plot(layers, [p["knn"][key]["mean_mi"] for p in pl], color=color, ls="--",
                            label=f"{key} (kNN)")
        taus = [p[key]["tau"] for p in pl]
        axes[0, 1].plot(layers, taus, color=color, label=key)
        sig = [l for l, p in zip(layers, pl) if p[key]["significant"]]
        axes[0, 1].scatter(sig, [taus[l] for l in sig], color=color, marker="*", s=80)
    sig_t = [p["layer"] for p in pl if p["t_significant"]]
    axes[0, 0].scatter(sig_t, [pl[l]["attn"]["mean_mi"] for l in sig_t], marker="*", color="k", s=60,
                       label="attn vs MLP significant")
    axes[0, 0].set(xlabel="layer", ylabel="mean MI (bits)", title="mean MI per layer")
    axes[0, 1].axhline(0, color="grey", lw=0.8)
    axes[0, 1].set(xlabel="layer", ylabel="Kendall tau", title="tau(MI, distance); * significant after correction")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Part 2: mean MI and tau per layer, attention vs MLP"))
    return files
