"""The claims of qkv-similarity: the write-up's findings, each against the protocol's shuffled baseline, the
random-init model (Q, K and V are random linear maps of one input there) or a bootstrap CI over sentences."""

from __future__ import annotations

import numpy as np

from ..stats import empirical_null
from .claims import Claim, decide
from .qkv_similarity import ALPHA, BLOCKS, MOST, Z95
from .resampling import excess_over_baseline

__all__ = ["qkv_similarity_claims"]

BASELINE_SKIPPED = "baseline run skipped: the random-init model is this claim's null"


def _ci_low_above(b: dict, level: float = 0.0) -> bool:
    return b["ci"] is not None and b["ci"][0] > level


def _vs_baseline(b: dict, base: dict | None, alternative: str) -> dict:
    """The excess of a bootstrapped value over the same value on the random-init model (or Nones)."""
    if base is None:
        return {"difference": None, "z": None, "p": None}
    return excess_over_baseline(b["value"], b["sd"], base["value"], base["sd"], alternative)


def _baseline_null(base: dict | None, what: str) -> dict | None:
    return None if base is None else {"what": what, "value": base["value"], "sd": base["sd"], "ci": base["ci"]}


def qkv_similarity_claims(r: dict, config, base: dict | None) -> list[dict]:
    """Claims from the results of qkv-similarity (``base``: the random-init model's results, or None)."""
    st, nu = r["detail_statistics"], r["nulls"]
    bs, sh = nu["bootstrap"], nu["shuffled"]
    bb = None if base is None else base["nulls"]["bootstrap"]
    rotary = not r["absolute_positions"]
    first, layer, n_boot = r["first_trend_layer"], r["layer"], config.n_bootstrap
    boot_words = f"bootstrap over the {r['n_sentences']} sentences ({n_boot} resamples)"
    out = []

    # 1. The smile: mass near +-1 in QQ and KK beyond the shuffled baseline, more than in VV.
    ext = st["ext"]
    vs_shuffle = {b: empirical_null(ext[b], sh["cos"][b]["extreme_fraction"]["values"], alternative="greater")
                  for b in ("QQ", "KK")}
    diffs = (bs["ext_QQ_minus_VV"], bs["ext_KK_minus_VV"])
    ps = [vs_shuffle["QQ"].p, vs_shuffle["KK"].p] + [d["p_gt0"] for d in diffs]
    weaker = min(diffs, key=lambda d: d["value"])
    out.append(Claim(
        "QQ and KK cosine histograms are smile-shaped (mass near +-1); VV is flatter", source="write-up",
        expected="smile for QQ and KK, VV flatter (gpt2, layer 6)",
        criterion=f"share of |cos| > {config.extreme} in QQ and in KK above all {config.n_shuffles} shuffled "
                  f"baselines (empirical p < {ALPHA}), and QQ - VV and KK - VV shares > 0 with their {boot_words} "
                  "95% CIs above 0",
        measured={"extreme_fraction": {b: ext[b] for b in ("QQ", "KK", "VV")},
                  "QQ_minus_VV": diffs[0]["value"], "KK_minus_VV": diffs[1]["value"]},
        null={"what": f"shuffled baseline (all values permuted), share of |cos| > {config.extreme}",
              "mean": {b: sh["cos"][b]["extreme_fraction"]["mean"] for b in ("QQ", "KK", "VV")},
              "sd": {b: sh["cos"][b]["extreme_fraction"]["sd"] for b in ("QQ", "KK", "VV")},
              "n": config.n_shuffles},
        test="empirical shuffle test + sentence bootstrap", p=max(ps), ci=weaker["ci"],
        verdict=decide(all(ext[b] > sh["cos"][b]["extreme_fraction"]["mean"] for b in ("QQ", "KK"))
                       and all(d["value"] > 0 for d in diffs),
                       max(ps) < ALPHA and all(_ci_low_above(d) for d in diffs))))

    # 2. QK >> QV, KV, beyond what two random linear maps of the same input give.
    gap = bs["qk_gap"]
    excess = _vs_baseline(gap, None if bb is None else bb["qk_gap"], "greater")
    out.append(Claim(
        "Q-K similarity is much higher than Q-V and K-V", source="write-up", expected="QK >> QV, KV",
        criterion=f"gap = mean |cos| of QK - max(QV, KV) > 0 with its 95% CI ({boot_words}) above 0, and larger "
                  f"than the random-init model's gap (z test on the bootstrap SDs, one-sided p < {ALPHA})",
        measured={"mean_abs_cosine": {b: st["cos"][b] for b in ("QK", "QV", "KV")}, "gap": gap["value"],
                  "gap_minus_random_init": excess["difference"], "z": excess["z"]},
        null=_baseline_null(None if bb is None else bb["qk_gap"], "the same gap in the random-init model (Q, K and "
                            "V are random linear maps of one input there)"),
        null_reason=BASELINE_SKIPPED if bb is None else None,
        test="two-sample z test on bootstrap SDs (vs random-init)", p=excess["p"], ci=gap["ci"],
        verdict=decide(gap["value"] > 0 and (excess["difference"] is None or excess["difference"] > 0),
                       _ci_low_above(gap) and excess["p"] is not None and excess["p"] < ALPHA)))

    # 3. Literally: correlation looks like the shuffled baseline in every block.
    z = {b: (st["corr"][b] - sh["corr"][b]["mean_abs"]["mean"]) / sh["corr"][b]["mean_abs"]["sd"]
         if sh["corr"][b]["mean_abs"]["sd"] > 0 else np.inf for b in BLOCKS}
    out.append(Claim(
        "After mean-centring (correlation) every block looks like the shuffled baseline", source="write-up",
        expected="correlation histograms ~ Gaussian around 0, like the shuffled baseline",
        criterion=f"in every block, mean |correlation| within {Z95} SD of its mean over {config.n_shuffles} "
                  "shuffled baselines (the 95% band of the shuffled data's correlations)",
        measured={"mean_abs_correlation": st["corr"], "z_vs_shuffled": z},
        null={"what": "mean |correlation| of the shuffled baseline (all values permuted)",
              "mean": {b: sh["corr"][b]["mean_abs"]["mean"] for b in BLOCKS},
              "sd": {b: sh["corr"][b]["mean_abs"]["sd"] for b in BLOCKS}, "n": config.n_shuffles},
        test=f"shuffled-baseline band (|z| < {Z95})", p=None,
        verdict=decide(all(abs(v) < Z95 for v in z.values()))))

    # 4. The write-up's conclusion: the mean offset carries the cosine similarity.
    kept = {b: bs[f"retained_{b}_minus_half"] for b in BLOCKS}
    worst = max(BLOCKS, key=lambda b: -np.inf if kept[b]["value"] is None else kept[b]["value"])
    kp = [kept[b]["p_lt0"] for b in BLOCKS]
    out.append(Claim(
        "The mean offset carries the similarity: centring removes most of the cosine's excess over the shuffled "
        "baseline", source="write-up", expected="the mean offset carries information",
        criterion="in every block, kept share = (mean |corr| - its shuffled floor) / (mean |cos| - its shuffled "
                  f"floor) < {MOST} (more than half of the excess removed), the 95% CI ({boot_words}; each "
                  f"resample against a shuffled copy resampled alike) below {MOST}",
        measured={"share_of_excess_kept": nu["retained"], "largest_block": worst},
        null={"what": "an offset that carries nothing: centring keeps all the excess (share 1)", "value": 1.0},
        test="sentence bootstrap", p=None if None in kp else max(kp),
        ci=None if kept[worst]["ci"] is None else [kept[worst]["ci"][0] + MOST, kept[worst]["ci"][1] + MOST],
        verdict=decide(None if any(kept[b]["value"] is None for b in BLOCKS)
                       else all(kept[b]["value"] < 0 for b in BLOCKS),
                       all(kept[b]["ci"] is not None and kept[b]["ci"][1] < 0 for b in BLOCKS))))

    # 5. K has the largest offsets; V the tightest values.
    off, spread = bs["offset_K_minus_max_QV"], bs["spread_min_QK_minus_V"]
    out.append(Claim(
        "K has the largest mean offsets, V the tightest values", source="write-up",
        expected="K largest |mean|; V smallest spread",
        criterion=f"mean |offset| of K - max(Q, V) > 0 and min(std Q, std K) - std V > 0, both with 95% CIs "
                  f"({boot_words}) above 0",
        measured={"mean_abs_offset": st["offset"], "value_std": st["spread"], "K_offset_margin": off["value"],
                  "V_spread_margin": spread["value"]},
        null={"what": "no difference between Q, K and V (margin 0)", "value": 0.0},
        test="sentence bootstrap", p=max(off["p_gt0"] or 1, spread["p_gt0"] or 1), ci=off["ci"],
        verdict=decide(off["value"] > 0 and spread["value"] > 0, _ci_low_above(off) and _ci_low_above(spread))))

    # 6-8: across layers.
    out.append(_trend_claim(
        "Across layers the similarity distributions shrink toward 0 with depth", "width falls with depth",
        "the target's cosine-similarity width (std over all neuron pairs)", nu["trends"]["width_target"],
        None if base is None else base["nulls"]["trends"]["width_target"], "less", first, boot_words))
    var0 = r["per_layer"][0]["target"]["variance"]
    log0 = nu["log_layer0_variance_target_over_previous"]
    if rotary:
        out.append(Claim(
            "The target's across-sentence variance starts near 0", source="write-up", expected="~0 at layer 0",
            criterion="target variance at layer 0 == 0", measured={"variance_layer0": var0},
            null_reason="an exact identity on this architecture", test=None, p=None,
            verdict=decide(var0 == 0),
            by_construction="rotary model: no position embedding, so the target token's layer-0 Q, K and V are "
                            "the same vector in every sentence"))
    else:
        out.append(Claim(
            "The target's across-sentence variance starts near 0", source="write-up", expected="~0 at layer 0",
            criterion=f"log(target / non-target variance) at layer 0 < 0 with its 95% CI ({boot_words}) below 0 "
                      "(the same word varies less than different words at the same positions)",
            measured={"variance_layer0": var0, "log_ratio_to_non_target": log0["value"]},
            null={"what": "the non-target tokens' (different words) layer-0 variance: log ratio 0", "value": 0.0},
            test="sentence bootstrap", p=log0["p_lt0"], ci=log0["ci"],
            verdict=decide(None if log0["value"] is None else log0["value"] < 0,
                           log0["ci"] is not None and log0["ci"][1] < 0)))
    out.append(_trend_claim(
        "The target's across-sentence variance rises with depth", "rises roughly linearly",
        "the target's across-sentence variance", nu["trends"]["variance_target"],
        None if base is None else base["nulls"]["trends"]["variance_target"], "greater", first, boot_words))

    # 9. The non-target token varies more.
    lr = nu["log_variance_previous_over_target"]
    out.append(Claim(
        "The non-target token's variance is higher than the target's", source="write-up",
        expected="non-target > target",
        criterion=f"mean over layers {first}-{len(r['per_layer']) - 1} of log(non-target / target variance) > 0 "
                  f"with its 95% CI ({boot_words}) above 0",
        measured={"mean_log_ratio": lr["value"],
                  "fraction_of_layers": float(np.mean([p["previous"]["variance"] > p["target"]["variance"]
                                                       for p in r["per_layer"][first:]]))},
        null={"what": "equal variances (log ratio 0)", "value": 0.0}, test="sentence bootstrap",
        p=lr["p_gt0"], ci=lr["ci"],
        verdict=decide(None if lr["value"] is None else lr["value"] > 0, _ci_low_above(lr)),
        note="expected for any model: the non-target tokens are different words; compare the random-init value"))
    return out


def _trend_claim(claim, expected, what, trend, base_trend, alternative, first, boot_words) -> dict:
    """A per-layer trend claim: Spearman trend test, its bootstrap CI, and a steeper trend than the random-init
    model's (whose own depth trend is the architecture's null)."""
    b = trend["bootstrap"]
    word = "falls" if alternative == "less" else "rises"
    if trend["rho"] is None:
        return Claim(claim, source="write-up", expected=expected, criterion=f"{what} {word} with depth",
                     measured={"rho": None}, null_reason="fewer than 3 layers", verdict="inconclusive")
    excess = _vs_baseline(b, None if base_trend is None else base_trend["bootstrap"], alternative)
    sign = (lambda v: v < 0) if alternative == "less" else (lambda v: v > 0)
    ci_ok = b["ci"] is not None and (b["ci"][1] < 0 if alternative == "less" else b["ci"][0] > 0)
    p = None if excess["p"] is None else max(trend["p"], excess["p"])
    return Claim(
        claim, source="write-up", expected=expected,
        criterion=f"Spearman rho of {what} vs layer ({first} on) {'< 0' if alternative == 'less' else '> 0'}: "
                  f"trend test p < {ALPHA}, 95% CI ({boot_words}) excluding 0, and "
                  f"{'below' if alternative == 'less' else 'above'} the random-init model's rho (z test on the "
                  f"bootstrap SDs, one-sided p < {ALPHA})",
        measured={"rho": trend["rho"], "trend_p": trend["p"], "rho_minus_random_init": excess["difference"],
                  "z": excess["z"]},
        null=_baseline_null(None if base_trend is None else base_trend["bootstrap"],
                            "rho of the same curve in the random-init model (the architecture's own depth trend)"),
        null_reason=BASELINE_SKIPPED if base_trend is None else None,
        test=f"{trend['method']}; z test vs random-init", p=p, ci=b["ci"],
        verdict=decide(sign(trend["rho"]) and (excess["difference"] is None or sign(excess["difference"])),
                       trend["p"] < ALPHA and ci_ok and p is not None and p < ALPHA))
