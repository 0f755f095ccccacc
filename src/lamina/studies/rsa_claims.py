"""The claims of rsa-categories: the chapter's findings on category selectivity and Q-K RSA, each against
its null (label shuffles, Mantel relabelling, word bootstraps, the random-init model)."""

from __future__ import annotations

import numpy as np

from ..stats import correct_pvalues
from .claims import Claim, decide
from .resampling import excess_over_baseline

__all__ = ["rsa_claims"]

ALPHA = 0.05  # the conventional 5% level for every test of this study
BASELINE_SKIPPED = "baseline run skipped: the random-init model is this claim's null"


def _ok_above(b: dict | None) -> bool:
    return b is not None and b.get("ci") is not None and b["ci"][0] > 0


def _vs_random_init(claim: str, expected: str, what: str, value: dict, base: dict | None, extra: dict,
                    p_other: float, other_ok: bool, other_words: str, words: str) -> dict:
    """A claim that needs the random-init model as its null: ``value`` (a bootstrap summary) must exceed the
    random-init model's, and the other test (``p_other``, ``other_ok``) must pass."""
    excess = excess_over_baseline(value["value"], value["sd"], base["value"], base["sd"]) if base else None
    measured = {what: value["value"], **extra}
    if excess is not None:
        measured.update({"minus_random_init": excess["difference"], "z": excess["z"]})
    p = None if excess is None else max(p_other, excess["p"])
    return Claim(
        claim, source="write-up", expected=expected,
        criterion=f"{other_words}, and {what} above the random-init model's at the same layers (z test on both "
                  f"runs' bootstrap SDs, {words}; one-sided p < {ALPHA})",
        measured=measured,
        null=None if base is None else {"what": f"{what} of the random-init model (Q and K are two random linear "
                                                "maps of the same input there)", "value": base["value"],
                                        "sd": base["sd"], "ci": base["ci"]},
        null_reason=BASELINE_SKIPPED if base is None else None,
        test="Mantel permutation test; z test vs random-init", p=p, ci=value["ci"],
        verdict=decide(value["value"] is not None and (excess is None or excess["difference"] > 0),
                       other_ok and p is not None and p < ALPHA))


def rsa_claims(r: dict, config, base: dict | None) -> list[dict]:
    """Claims from the results of rsa-categories (``base``: the random-init model's results, or None)."""
    d, pl, nu = r["detail"], r["per_layer"], r["nulls"]
    bn = None if base is None else base["nulls"]
    layer = r["layer"]
    words = f"word bootstrap ({config.n_bootstrap} resamples of the {len(r['words'])} words)"
    out = []

    # 1. Category grouping in Q and K at the detail layer: label-permutation test.
    ps = [d[p]["p_permutation"] for p in ("Q", "K")]
    out.append(Claim(
        f"Q and K group words by category at layer {layer} (selectivity > 1)", source="write-up",
        expected="selectivity > 1 (gpt2-medium, layer 5)",
        criterion=f"for Q and K: selectivity above its label-shuffled mean, label-permutation p < {ALPHA} "
                  f"({config.n_permutations} shuffles, one-sided)",
        measured={p: {"selectivity": d[p]["selectivity"], "p": d[p]["p_permutation"]} for p in ("Q", "K", "V")},
        null={"what": "selectivity with the category labels shuffled",
              "mean": {p: d[p]["null_mean"] for p in ("Q", "K")}, "sd": {p: d[p]["null_sd"] for p in ("Q", "K")}},
        test="label permutation test", p=max(ps),
        verdict=decide(all(d[p]["selectivity"] > d[p]["null_mean"] for p in ("Q", "K")), max(ps) < ALPHA)))

    # 2. RSA(Q, K) at the detail layer: Mantel, and beyond the random-init model.
    m = d["rsa_QK"]
    out.append(_vs_random_init(
        f"RSA between the Q and K similarity matrices is strong at layer {layer}", "really strong",
        "RSA(Q, K)", nu["rsa_QK_detail"], None if bn is None else bn["rsa_QK_detail"],
        {"mantel_p": m["p"], "mantel_null_mean": m["null_mean"]}, m["p"], m["p"] < ALPHA,
        f"Mantel test (relabelling one matrix's words, {config.n_permutations} orderings) p < {ALPHA}", words))

    # 3. RSA(Q, K) over all layers.
    rsa = np.array([x["rsa_QK"] for x in pl])
    mantel_p = np.array([x["rsa_QK_mantel_p"] for x in pl])
    reject = correct_pvalues(mantel_p, "fdr_bh", ALPHA)[0]
    med = nu["rsa_QK_median"]
    out.append(_vs_random_init(
        "RSA(Q, K) stays high over all layers", "~0.84-0.96 over the layers of gpt2-large", "median RSA(Q, K)",
        med, None if bn is None else bn["rsa_QK_median"],
        {"min": float(rsa.min()), "max": float(rsa.max()), "layers_significant": int(reject.sum()),
         "n_layers": len(pl)}, float(mantel_p.max()), bool(reject.all()),
        f"Mantel p < {ALPHA} at every layer (Benjamini-Hochberg over layers)", words))

    # 4. Selectivity falls with depth (Q and K).
    tr = nu["selectivity_trend"]
    defined = all(tr[p]["rho"] is not None for p in ("Q", "K"))
    tps = [tr[p]["p"] for p in ("Q", "K")] if defined else []
    cis = [tr[p]["bootstrap"]["ci"] for p in ("Q", "K")] if defined else []
    out.append(Claim(
        "Category selectivity falls with depth", source="write-up", expected="falls (gpt2-large)",
        criterion=f"for Q and K: Spearman rho of selectivity vs layer < 0, trend test p < {ALPHA} (one-sided) and "
                  f"95% CI ({words}) below 0",
        measured={"spearman_rho": {p: tr[p]["rho"] for p in ("Q", "K")},
                  "trend_p": {p: tr[p]["p"] for p in ("Q", "K")}},
        null={"what": "no trend over layers (rho 0)", "value": 0.0}, test="Spearman trend test; word bootstrap",
        p=max(tps) if tps else None, ci=max(cis, key=lambda c: c[1]) if cis and None not in cis else None,
        verdict=decide(all(tr[p]["rho"] < 0 for p in ("Q", "K")) if defined else None,
                       bool(tps) and max(tps) < ALPHA and all(c is not None and c[1] < 0 for c in cis))))

    # 5. V is more selective than Q and K.
    vq, vk = nu.get("V_minus_Q"), nu.get("V_minus_K")
    mean_sel = {p: float(np.nanmean([np.nan if x[f"selectivity_{p}"] is None else x[f"selectivity_{p}"]
                                     for x in pl])) for p in ("Q", "K", "V")}
    out.append(Claim(
        "V is more selective than Q and K", source="write-up", expected="V higher (gpt2-large, all layers)",
        criterion=f"mean over layers of V - Q and of V - K selectivity > 0, both 95% CIs ({words}) above 0",
        measured={"mean_over_layers": mean_sel, "V_minus_Q": None if vq is None else vq["value"],
                  "V_minus_K": None if vk is None else vk["value"]},
        null={"what": "equal selectivity of V and Q/K (difference 0)", "value": 0.0}, test="word bootstrap",
        p=None if vq is None else max(vq["p_gt0"] or 1.0, vk["p_gt0"] or 1.0),
        ci=None if vq is None else min((vq["ci"], vk["ci"]), key=lambda c: np.inf if c is None else c[0]),
        verdict=decide(None if vq is None or vq["value"] is None else vq["value"] > 0 and vk["value"] > 0,
                       _ok_above(vq) and _ok_above(vk))))

    # 6. V is U-shaped over depth.
    first, last = nu.get("V_first_quarter_minus_middle"), nu.get("V_last_quarter_minus_middle")
    out.append(Claim(
        "V's selectivity is U-shaped over depth", source="write-up", expected="high at both ends (gpt2-large)",
        criterion="mean V selectivity of the first quarter of the layers minus the middle half > 0 and of the last "
                  f"quarter minus the middle half > 0, both 95% CIs ({words}) above 0 (a U needs both arms)",
        measured={"first_quarter_minus_middle": None if first is None else first["value"],
                  "last_quarter_minus_middle": None if last is None else last["value"]},
        null={"what": "a flat profile (differences 0)", "value": 0.0}, test="word bootstrap",
        p=None if first is None else max(first["p_gt0"] or 1.0, last["p_gt0"] or 1.0),
        ci=None if first is None else min((first["ci"], last["ci"]), key=lambda c: np.inf if c is None else c[0]),
        verdict=decide(None if first is None or first["value"] is None or last["value"] is None
                       else first["value"] > 0 and last["value"] > 0, _ok_above(first) and _ok_above(last))))
    return out
