"""coffee-mi's claims: each finding of the write-up against its null.

Nulls: the exact Mantel test over relabelled occurrences (tau), its joint version over every layer and site
(one relabelling for all), the MI bias of dimension-permuted copies (subtracted from every profile; the trimming
gain of those copies), an occurrence bootstrap for the layer-profile contrasts, and the seeded random-init copy
of the model (``baseline``: causal attention alone makes nearby occurrences share context).
"""

from __future__ import annotations

import numpy as np

from ..stats import correlate, empirical_null, label_permutation_test
from ._pair_resampling import percentile_ci
from .base import StudyOutput
from .claims import Claim, decide

__all__ = ["claims", "SITES", "ALMOST_EVERY", "PROFILE_AGREEMENT"]

#: The two sites of the protocol: attention output and MLP output.
SITES = ("attn", "mlp")

#: "tau is almost always negative": "almost always" read as at least three quarters of the layer-site taus.
ALMOST_EVERY = 0.75

#: Random groupings of the layers for the profile contrasts (p resolution 1e-3).
N_LAYER_PERMUTATIONS = 999

#: "layer profiles differ only subtly": a rank agreement at least this large ("large" by Cohen's convention).
PROFILE_AGREEMENT = 0.5


def _quarters(n_layers: int):
    q = max(1, n_layers // 4)
    ends = np.r_[np.arange(q), np.arange(n_layers - q, n_layers)]
    middle = np.arange(q, n_layers - q)
    return q, ends, middle


def _layer_permutation(curve: np.ndarray, hi_layers, lo_layers, seed):
    """mean(curve[hi]) - mean(curve[lo]) against random groupings of the same layers (one-sided, greater; exact
    when there are at most N_LAYER_PERMUTATIONS groupings)."""
    values = np.r_[curve[hi_layers], curve[lo_layers]]
    labels = np.r_[np.ones(len(hi_layers), int), np.zeros(len(lo_layers), int)]
    return label_permutation_test(lambda lab: values[lab == 1].mean() - values[lab == 0].mean(), labels,
                                  alternative="greater", n_permutations=N_LAYER_PERMUTATIONS, seed=seed)


def _profile_claim(claim, expected, criterion, key, boot, curve, hi, lo, config) -> dict:
    """A layer-profile contrast of bias-corrected MI: bootstrap CI over occurrences, permutation p over layers."""
    value = float(curve[hi].mean() - curve[lo].mean())
    ci = percentile_ci(boot[hi].mean(axis=0) - boot[lo].mean(axis=0))
    test = _layer_permutation(curve, hi, lo, config.seed)
    return Claim(claim, source="write-up", expected=expected, criterion=criterion,
                 measured={key: value, "note": "MI minus its bias (dimension-permuted copies), mean over pairs"},
                 null={"what": "the same contrast for random groupings of the layers", "mean": test.null_mean,
                       "sd": test.null_sd, "n": test.n_permutations},
                 test="occurrence bootstrap + layer permutation", p=test.p, ci=ci,
                 verdict=decide(value > 0, ci[0] > 0 and test.p < config.alpha))


def _crossing_claim(boot: dict, corrected: dict, early, late, config) -> dict:
    diff, diff_pt = boot["mlp"] - boot["attn"], corrected["mlp"] - corrected["attn"]  # (L, B), (L,)
    e, lt = float(diff_pt[early].mean()), float(-diff_pt[late].mean())
    e_ci, l_ci = percentile_ci(diff[early].mean(axis=0)), percentile_ci(-diff[late].mean(axis=0))
    test = _layer_permutation(diff_pt, early, late, config.seed)
    q = len(early)
    return Claim("MLP > attention early, attention > MLP late", source="write-up", expected="crossing profiles",
                 criterion=f"bias-corrected MI, first {q} layers: MLP - attention > 0, and last {q} layers: "
                           "attention - MLP > 0, both occurrence-bootstrap 95% CIs above 0, and the early-minus-late "
                           "contrast of (MLP - attention) beyond random groupings of those layers "
                           f"(p < {config.alpha})",
                 measured={"early_mlp_minus_attn": e, "late_attn_minus_mlp": lt, "early_ci": list(e_ci),
                           "late_ci": list(l_ci)},
                 null={"what": "the early-minus-late contrast for random groupings of the layers",
                       "mean": test.null_mean, "sd": test.null_sd, "n": test.n_permutations},
                 test="occurrence bootstrap + layer permutation", p=test.p,
                 verdict=decide(e > 0 and lt > 0, e_ci[0] > 0 and l_ci[0] > 0 and test.p < config.alpha))


def claims(output: StudyOutput, config, baseline: StudyOutput | None) -> list[dict]:
    """The claims of one coffee-mi output (``config``: its CoffeeMIConfig; ``baseline``: the random-init run)."""
    r, a = output.results, output.arrays
    pl, layer, alpha = r["per_layer"], r["layer"], config.alpha
    n_layers = len(pl)
    out = [_tau_claim(r, alpha), _learned_claim(r, a, baseline, alpha), _trim_claim(r, config),
           _almost_every_claim(r, alpha)]
    corrected = {s: np.array([p[s]["mean_mi_corrected"] for p in pl]) for s in SITES}
    q, ends, middle = _quarters(n_layers)
    early, rest, late = np.arange(q), np.arange(q, n_layers), np.arange(n_layers - q, n_layers)
    boot = {s: a["boot_mi"][k] for k, s in enumerate(SITES)}
    rule = (f"> 0, with its occurrence-bootstrap 95% CI above 0 and a layer-permutation p < {alpha} (the same "
            "contrast for random groupings of the layers)")
    if middle.size:
        out.append(_profile_claim("Attention MI is higher at the first and last layers than in the middle",
                                  "U-shaped profile", f"bias-corrected attention MI: mean of the first and last {q} "
                                  f"layers minus the middle layers {rule}", "ends_minus_middle",
                                  boot["attn"], corrected["attn"], ends, middle, config))
    else:
        out.append(_too_shallow("Attention MI is higher at the first and last layers than in the middle",
                                "U-shaped profile", n_layers))
    if rest.size:
        out.append(_profile_claim("MLP MI is high early and lower later", "high early, then drops and stays flat",
                                  f"bias-corrected MLP MI: mean of the first {q} layers minus the rest {rule}",
                                  "first_minus_rest", boot["mlp"], corrected["mlp"], early, rest, config))
        out.append(_crossing_claim(boot, corrected, early, late, config))
    else:
        out += [_too_shallow("MLP MI is high early and lower later", "high early", n_layers),
                _too_shallow("MLP > attention early, attention > MLP late", "crossing profiles", n_layers)]
    if config.knn:
        out += _knn_claims(r, a, corrected["attn"], alpha)
    return out


def _too_shallow(claim: str, expected: str, n_layers: int) -> dict:
    return Claim(claim, source="write-up", expected=expected, criterion="needs at least 3 layers to compare parts",
                 measured={"n_layers": n_layers}, null_reason="too few layers for a profile", verdict=decide(None))


def _tau_claim(r: dict, alpha: float) -> dict:
    null = r["mantel_null"]
    return Claim(f"Kendall tau between MI and token distance is negative (layer {r['layer']}, attention)",
                 source="write-up", expected="tau ~ -0.5 on gpt2-xl layer 3",
                 criterion=f"tau < 0 and one-sided Mantel p < {alpha} (occurrences relabelled, "
                           f"{'all ' if null['exact'] else ''}{null['n']} orderings)",
                 measured={"tau": r["tau"], "mantel_p": r["p"], "p_if_pairs_were_independent": r["p_asymptotic"]},
                 null={"what": "tau under relabelled occurrences (Mantel)", "mean": null["mean"], "sd": null["sd"],
                       "n": null["n"]},
                 test="Mantel permutation test (Kendall)", p=r["p"], verdict=decide(r["tau"] < 0, r["p"] < alpha))


def _learned_claim(r: dict, a: dict, baseline: StudyOutput | None, alpha: float) -> dict:
    claim = ("The distance effect is learned: the mean tau over all layers and both sites is more negative than on "
             "the random-init copy (causal attention alone makes nearby occurrences share context)")
    criterion = ("mean tau (trained) - mean tau (random-init) < 0 and its occurrence-bootstrap 95% CI (same "
                 "resamples for both models) below 0")
    if baseline is None:
        return Claim(claim, source="lamina", criterion=criterion, measured={"mean_tau": r["mean_tau"]},
                     null_reason="baseline run skipped", verdict="inconclusive")
    b = baseline.results
    if b["positions"] != r["positions"]:
        return Claim(claim, source="lamina", criterion=criterion, measured={"mean_tau": r["mean_tau"]},
                     null_reason="the random-init copy found the word at other positions", verdict="inconclusive")
    diff = a["boot_mean_tau"] - baseline.arrays["boot_mean_tau"]
    value = r["mean_tau"] - b["mean_tau"]
    ci = percentile_ci(diff)
    return Claim(claim, source="lamina", criterion=criterion,
                 measured={"mean_tau": r["mean_tau"], "difference": value},
                 null={"what": "mean tau of the random-init copy (same text, same occurrences)", "value": b["mean_tau"],
                       "ci": list(percentile_ci(baseline.arrays["boot_mean_tau"]))},
                 test="paired occurrence bootstrap", ci=ci, verdict=decide(value < 0, ci[1] < 0))


def _trim_claim(r: dict, config) -> dict:
    claim, expected = f"Trimming |z| > {config.trim_z} outliers raises MI", "almost two-fold in the original"
    if r["trim_gain_null"] is None or r["trim_gain"] is None:
        untrimmed = r["trim_gain_null"] is None
        return Claim(claim, source="write-up", expected=expected, criterion="needs trim_z and a nonzero MI",
                     measured={"trim_gain": r["trim_gain"]},
                     null_reason="no trimming (trim_z none)" if untrimmed else "the untrimmed MI is 0",
                     verdict=decide(None, applicable=not untrimmed))
    test = empirical_null(r["trim_gain"], r["trim_gain_null"], alternative="greater",
                          method="gain of dimension-permuted copies")
    b = np.array(r["mi_bias"])
    iu = np.triu_indices(len(b), 1)
    return Claim(claim, source="write-up", expected=expected,
                 criterion=f"trimmed / untrimmed mean MI (layer {r['layer']}, attention) above the gain trimming gives "
                           f"dimension-permuted copies of the same vectors (trimming narrows the bins and raises "
                           f"the MI of independent vectors too): gain > null mean and empirical p < {config.alpha}",
                 measured={"trim_gain": r["trim_gain"], "trimmed_mi": r["mean_mi"],
                           "untrimmed_mi": r["mean_mi_untrimmed"], "trimmed_bias": float(b[iu].mean())},
                 null={"what": "trim gain of dimension-permuted copies (independent vectors)",
                       "mean": test.null_mean, "sd": test.null_sd, "n": test.n_permutations},
                 test="empirical null", p=test.p,
                 verdict=decide(r["trim_gain"] > test.null_mean, test.p < config.alpha))


def _almost_every_claim(r: dict, alpha: float) -> dict:
    pl = r["per_layer"]
    taus = np.array([p[s]["tau"] for s in SITES for p in pl])
    frac = float((taus < 0).mean())
    t = r["mean_tau_test"]
    n_sig = sum(p[s]["significant"] for s in SITES for p in pl)
    return Claim("tau is negative in almost every layer (attention and MLP)", source="write-up",
                 expected="tau < 0 in nearly all layers",
                 criterion=f"at least {ALMOST_EVERY:.0%} of the {taus.size} taus < 0 and the joint Mantel test of the "
                           f"mean tau (one relabelling of the occurrences for all layers and sites) p < {alpha}",
                 measured={"fraction_negative": frac, "mean_tau": t["statistic"],
                           "layers_significant_after_correction": int(n_sig)},
                 null={"what": "mean tau under relabelled occurrences (Mantel)", "mean": t["null_mean"],
                       "sd": t["null_sd"], "n": t["n_permutations"]},
                 test="joint Mantel permutation test (Kendall)", p=t["p"],
                 verdict=decide(frac >= ALMOST_EVERY, t["p"] < alpha))


def _knn_claims(r: dict, a: dict, hist_profile: np.ndarray, alpha: float) -> list[dict]:
    from scipy import stats as sps

    pl = r["per_layer"]
    knn_profile = np.array([p["knn"]["attn"]["mean_mi"] for p in pl])
    tau = Claim(f"The kNN estimator (no trimming) also gives a negative tau (layer {r['layer']})", source="write-up",
                expected="tau ~ -0.5 again", criterion=f"kNN tau < 0 and one-sided Mantel p < {alpha}",
                measured={"tau": r["knn_tau"], "mantel_p": r["knn_p"]},
                null={"what": "tau under relabelled occurrences (Mantel)", **r["knn_null"]},
                test="Mantel permutation test (Kendall)", p=r["knn_p"],
                verdict=decide(r["knn_tau"] < 0, r["knn_p"] < alpha))
    claim = "Histogram and kNN layer profiles differ only subtly"
    if len(pl) < 3:
        return [tau, _too_shallow(claim, "similar profiles", len(pl))]
    rho = correlate(knn_profile, hist_profile, "spearman").r
    hb, kb = a["boot_mi"][0], a["boot_knn"]
    ok = ~(np.isnan(hb).any(axis=0) | np.isnan(kb).any(axis=0))
    rb, kr = sps.rankdata(hb[:, ok], axis=0), sps.rankdata(kb[:, ok], axis=0)
    rb, kr = rb - rb.mean(axis=0), kr - kr.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (rb * kr).sum(axis=0) / np.sqrt((rb**2).sum(axis=0) * (kr**2).sum(axis=0))
    ci = percentile_ci(boot)
    return [tau, Claim(claim, source="write-up", expected="similar profiles",
                       criterion=f"Spearman over layers between the kNN and the bias-corrected histogram attention MI "
                                 f">= {PROFILE_AGREEMENT} and its occurrence-bootstrap 95% CI above 0",
                       measured={"spearman_profiles": rho},
                       null={"what": "no agreement between profiles", "value": 0.0},
                       test="occurrence bootstrap", ci=ci, verdict=decide(rho >= PROFILE_AGREEMENT, ci[0] > 0))]
