"""punctuation-clusters' claims: each finding of the write-up against its null.

Nulls: the MI bias of dimension-permuted copies (a band around it and bias-corrected means), a bootstrap over the
marks (within each type) for every per-layer mean, trend tests over layers, the best k-means silhouette of
Gaussian samples of the same size (1-D k-means finds "clusters" in any sample), and the seeded random-init copy
of the model (``baseline``, shown beside the cluster claim).
"""

from __future__ import annotations

import numpy as np

from ..stats import empirical_null, trend_test
from ._pair_resampling import percentile_ci
from .base import StudyOutput
from .claims import Claim, decide

__all__ = ["claims", "within", "BAND", "TENS_OF_TIMES"]

#: "grows tens of times": 10x is the lower edge of "tens of times"; also the yardstick for correlation.
TENS_OF_TIMES = 10.0

#: The bias band drawn in the figures: one independent (dimension-permuted) pair's MI lies within mean +- 2 sd
#: (~95% for a normal spread).
BAND = 2.0


def within(pl: list[dict], key: str) -> np.ndarray:
    """Per-layer mean of ``key`` over the two within-type groups."""
    return np.array([(p["internal"][key] + p["terminal"][key]) / 2 for p in pl])


def _growth(curve: np.ndarray, boot: np.ndarray) -> tuple[float, tuple]:
    """max over layers >= 1 of |curve| / |curve at layer 1|, and its bootstrap CI."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.max(np.abs(curve[1:])) / abs(curve[1]))
        samples = np.abs(boot[1:]).max(axis=0) / np.abs(boot[1])
    return value, percentile_ci(samples[np.isfinite(samples)]) if np.isfinite(samples).any() else (np.nan, np.nan)


def claims(output: StudyOutput, config, baseline: StudyOutput | None) -> list[dict]:
    """The claims of one punctuation-clusters output (``config``: its PunctuationConfig; ``baseline``: the
    random-init run)."""
    r, a = output.results, output.arrays
    pl, alpha = r["per_layer"], config.alpha
    d0, tokens = pl[0]["distinct_vectors"], r["distinct_mark_tokens"]
    out = [Claim("At layer 0 all vectors of one token are identical: the scatter collapses to a few points",
                 source="write-up", expected="a few points at layer 0",
                 criterion="distinct layer-0 vectors of each type <= distinct token ids of its marks",
                 measured={"distinct_vectors": d0, "distinct_mark_tokens": tokens},
                 null_reason="an identity of the embedding layer, not a finding",
                 by_construction=f"every mark sits at index {config.before} of its window, so layer 0 (token "
                                 "embedding, plus the same position embedding where there is one) is one vector "
                                 "per mark token",
                 verdict=decide(all(d0[k] <= tokens[k] for k in d0)))]
    makers = (lambda: _cluster_claim(r, baseline, alpha), lambda: _merge_claim(r, alpha),
              lambda: _mi_decline_claim(r, a, alpha), lambda: _above_bias_claim(r), lambda: _cov_growth_claim(r, a),
              lambda: _corr_claim(r, a))
    for (claim, source, needs), make in zip(_LATER, makers):
        if len(pl) >= needs:
            out.append(make())
        else:
            reason = f"needs at least {needs} hidden-state layers (this model has {len(pl)})"
            out.append(Claim(claim, source=source, criterion=reason, measured={"n_hidden_layers": len(pl)},
                             null_reason=reason, verdict="inconclusive"))
    return out


#: The claims after layer 0: (claim, source, hidden-state layers needed: layer 1, a ratio, or a 3-point trend).
_LATER = (("At layer 1 covariance separates internal punctuation into clusters that MI hardly shows", "write-up", 2),
          ("The covariance clusters blur and merge with depth", "write-up", 4),
          ("Mean MI slowly declines with depth", "write-up", 4),
          ("Within-type MI exceeds the estimator's bias at every layer from 1 on", "lamina", 2),
          ("Mean covariance grows tens of times with depth (scale dependence)", "write-up", 3),
          ("Correlation removes the growth", "write-up", 3))


def _cluster_claim(r: dict, baseline, alpha: float) -> dict:
    l1 = r["per_layer"][1]
    test = _layer1_clusters(r)
    measured = {"cov_silhouette": l1["cov_silhouette"], "cov_k": l1["cov_k"], "mi_silhouette": l1["mi_silhouette"]}
    if baseline is not None:
        measured["random_init_cov_silhouette"] = baseline.results["per_layer"][1]["cov_silhouette"]
    return Claim(_LATER[0][0], source="write-up", expected="3 clusters in covariance at layer 1",
                 criterion="best k-means silhouette (k = 2..4, exact 1-D k-means) of the internal-internal covariances "
                           "at layer 1 above MI's, and above the same statistic on Gaussian samples of the same size "
                           f"(one-sided empirical p < {alpha}; any 1-D sample scores ~0.5-0.6, so '> 0.5' is no test)",
                 measured=measured,
                 null={"what": r["silhouette_reference"]["what"], "mean": test.null_mean, "sd": test.null_sd,
                       "n": test.n_permutations},
                 test="parametric (Gaussian) reference null", p=test.p,
                 note="skewed unimodal samples also exceed the Gaussian reference: compare the random-init column",
                 verdict=decide(l1["cov_silhouette"] > l1["mi_silhouette"], test.p < alpha))


def _merge_claim(r: dict, alpha: float) -> dict:
    sil = np.array([p["cov_silhouette"] for p in r["per_layer"]])[1:]
    test = trend_test(sil, method="spearman", alternative="less")
    clusters = _layer1_clusters(r)
    return Claim(_LATER[1][0], source="write-up", expected="merged around layers 7-9 of 24",
                 criterion=f"the covariance silhouette falls with depth from layer 1: Spearman trend < 0 with "
                           f"one-sided p < {alpha}, and there are clusters to merge (layer 1 above the Gaussian "
                           f"reference, p < {alpha})",
                 measured={"spearman_trend": test.statistic, "silhouette_layer1": float(sil[0]),
                           "silhouette_late_mean": float(sil[len(sil) // 2:].mean()), "layer1_cluster_p": clusters.p},
                 null={"what": "no trend (layers in random order)", "mean": test.null_mean, "sd": test.null_sd},
                 test=test.method, p=test.p,
                 verdict=decide(test.statistic < 0, test.p < alpha and clusters.p < alpha))


def _layer1_clusters(r: dict):
    """The layer-1 covariance silhouette against the Gaussian reference (one-sided empirical test)."""
    return empirical_null(r["per_layer"][1]["cov_silhouette"], r["silhouette_reference"]["values"],
                          alternative="greater", method="Gaussian samples of the same size (unimodal reference)")


def _mi_decline_claim(r: dict, a: dict, alpha: float) -> dict:
    from scipy import stats as sps

    corrected = within(r["per_layer"], "mean_mi_corrected")[1:]
    test = trend_test(corrected, method="spearman", alternative="less")
    boot = a["boot_mi"][1:]
    ranks = sps.rankdata(boot, axis=0)
    pos = np.arange(boot.shape[0]) - (boot.shape[0] - 1) / 2
    rc = ranks - ranks.mean(axis=0)
    rho = (rc * pos[:, None]).sum(axis=0) / np.sqrt((rc**2).sum(axis=0) * (pos**2).sum())
    ci = percentile_ci(rho)
    return Claim(_LATER[2][0], source="write-up", expected="slow decline",
                 criterion=f"Spearman trend over layers 1..L of the bias-corrected within-type mean MI < 0, with "
                           f"one-sided trend p < {alpha} and the mark-bootstrap 95% CI of the trend below 0",
                 measured={"spearman_mi_vs_layer": test.statistic,
                           "corrected_mi_layer1": float(corrected[0]), "corrected_mi_last": float(corrected[-1])},
                 null={"what": "no trend (layers in random order)", "mean": test.null_mean, "sd": test.null_sd},
                 test=test.method + " + mark bootstrap", p=test.p, ci=ci,
                 verdict=decide(test.statistic < 0, test.p < alpha and ci[1] < 0))


def _above_bias_claim(r: dict) -> dict:
    pl = r["per_layer"][1:]
    lows = np.array([p["mi_corrected_ci"][0] for p in pl])
    corrected, bias = within(pl, "mean_mi_corrected"), within(pl, "bias_mean")
    return Claim(_LATER[3][0], source="lamina", expected=None,
                 criterion="bias-corrected within-type mean MI > 0 at every layer >= 1, each 95% CI above 0 (a "
                           "bootstrap over the marks and over the marks that estimate the bias): the MI findings "
                           "are not estimator bias",
                 measured={"min_corrected_mi": float(corrected.min()), "mean_bias": float(bias.mean()),
                           "layers_with_ci_above_0": int((lows > 0).sum()), "n_layers": len(pl)},
                 null={"what": "MI of dimension-permuted copies (independent vectors), mean over layers",
                       "mean": float(bias.mean()), "sd": float(within(pl, "bias_sd").mean())},
                 test="bootstrap (marks and bias subset)",
                 verdict=decide(bool((corrected > 0).all()), bool((lows > 0).all())))


def _cov_growth_claim(r: dict, a: dict) -> dict:
    growth, ci = _growth(within(r["per_layer"], "mean_cov"), a["boot_cov"])
    return Claim(_LATER[4][0], source="write-up", expected=">= 10x",
                 criterion=f"max over layers >= 1 of the within-type mean covariance / its value at layer 1 >= "
                           f"{TENS_OF_TIMES:g} and the mark-bootstrap 95% CI above 1 (no growth)",
                 measured={"max_over_layer1": growth},
                 null={"what": "no growth", "value": 1.0}, test="mark bootstrap", ci=ci,
                 verdict=decide(growth >= TENS_OF_TIMES, ci[0] > 1))


def _corr_claim(r: dict, a: dict) -> dict:
    corr = within(r["per_layer"], "mean_corr")
    growth, ci = _growth(corr, a["boot_corr"])
    first = abs(float(corr[1]))
    bounded = first * TENS_OF_TIMES >= 1
    return Claim(_LATER[5][0], source="write-up", expected="no scale growth",
                 criterion=f"max over layers >= 1 of |mean correlation| / its value at layer 1 < {TENS_OF_TIMES:g} "
                           "(the covariance claim's yardstick), with the mark-bootstrap 95% CI below it",
                 measured={"max_over_layer1": growth, "abs_corr_layer1": first},
                 null={"what": "covariance's growth yardstick", "value": TENS_OF_TIMES}, test="mark bootstrap",
                 ci=ci, by_construction=(f"|r| <= 1 and |r| = {first:.2f} at layer 1, so it cannot grow "
                                         f"{TENS_OF_TIMES:g}-fold") if bounded else None,
                 verdict=decide(growth < TENS_OF_TIMES, ci[1] < TENS_OF_TIMES))
