"""path-length's claims: each finding of the write-up against its null.

Nulls: two random directions in d dimensions (cosines), the seeded random-init copy of the model
(``baseline``: PL_hidden = |a + m| correlates with |a| and |m| by construction), every other token's
leave-one-in effect on r (token 0), a random block order (the final step); CIs from a bootstrap over tokens.
"""

from __future__ import annotations

import numpy as np

from ..stats import empirical_null
from .base import StudyOutput
from .claims import Claim, decide

__all__ = ["claims", "pearson_rows", "final_step_ratio"]


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis of matching arrays (constant rows give 0)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def final_step_ratio(steps: np.ndarray) -> float | None:
    """Last block's mean step over the median of the other blocks' (steps: (L,) or (L, B))."""
    if steps.shape[0] < 2:
        return None
    ratio = steps[-1] / np.median(steps[:-1], axis=0)
    return float(ratio) if np.ndim(ratio) == 0 else ratio


def _middle(n: int) -> slice:
    """The layers "except at the ends": all but the first and the last block (all of them below 3 blocks)."""
    return slice(1, n - 1) if n > 2 else slice(0, n)


def claims(output: StudyOutput, config, baseline: StudyOutput | None) -> list[dict]:
    r, a = output.results, output.arrays
    pl = r["per_layer"]
    n = len(pl)
    return [_orthogonality(r, a, n), _mlp_beats_attention(a, baseline, config), _token0_collapse(r, pl, config),
            _spearman_robust(r, pl), _final_step(r, a, n, config)]


def _orthogonality(r: dict, a: dict, n: int) -> dict:
    mid = _middle(n)
    cos = a["cos"][mid, 1:]
    mean_abs = float(np.abs(cos).mean())
    ci = np.quantile(a["boot_abs_cos"][mid].mean(0), [0.025, 0.975])
    null = r["random_direction_abs_cos"]
    bound = null["q99"]  # a typical pair no more aligned than 1 pair in 100 of random directions
    verdict = decide(mean_abs <= bound, bool(ci[1] <= bound))
    return Claim("Attention and MLP adjustments are near-orthogonal (cosine ~ 0) except at the ends",
                 source="write-up", expected="cosine ~ 0",
                 criterion=f"mean |cos| over the middle blocks (1..L-2) and tokens 1.. is at most the 99th percentile "
                           f"of |cos| between two random directions in d = {r['d_model']} dimensions "
                           f"({bound:.3g}); holds when its 95% bootstrap CI (tokens) lies below, does not hold when "
                           "the estimate lies above",
                 measured={"mean_abs_cos_middle": mean_abs, "mean_signed_cos_middle": float(cos.mean()),
                           "fraction_of_middle_layers_with_negative_mean_cos": float(np.mean(cos.mean(-1) < 0))},
                 null={"what": "|cos| of two independent random directions in d dimensions (exact Beta law)",
                       "mean": null["mean"], "sd": null["sd"], "q99": bound},
                 test="bootstrap over tokens (percentile CI)", ci=ci, verdict=verdict)


def _mlp_beats_attention(a: dict, baseline: StudyOutput | None, config) -> dict:
    diff = a["boot_r_mlp"] - a["boot_r_attn"]  # (L, B): r(PL_mlp, PL_hidden) - r(PL_attn, PL_hidden)
    wins = np.quantile(diff, 0.025, axis=1) > 0  # per layer: the 95% CI of the difference lies above 0
    point = pearson_rows_diff(a)
    frac = float(wins.mean())
    measured = {"fraction_of_layers_mlp_wins": frac, "mean_r_difference": float(point.mean())}
    criterion = ("per layer d = r(PL_mlp, PL_hidden) - r(PL_attn, PL_hidden) over tokens 1..; MLP wins a layer "
                 "when the 95% bootstrap CI of d lies above 0; holds when MLP wins more than half the layers AND "
                 "the layer-mean of d exceeds the random-init copy's (paired bootstrap over the same tokens, 95% CI "
                 "of the difference above 0): PL_hidden = |a + m| correlates with both by construction")
    claim = "PL_mlp correlates with PL_hidden more strongly than PL_attn in most layers, beyond the random-init copy"
    if baseline is None:
        return Claim(claim, source="write-up", expected="MLP > attention", criterion=criterion, measured=measured,
                     null=None, null_reason="baseline run skipped", verdict="inconclusive")
    ba = baseline.arrays
    base_point = pearson_rows_diff(ba)
    gap = diff.mean(0) - (ba["boot_r_mlp"] - ba["boot_r_attn"]).mean(0)  # (B,) paired when the tokens match
    ci = np.quantile(gap, [0.025, 0.975])
    measured.update({"random_init_mean_r_difference": float(base_point.mean()),
                     "gap_to_random_init": float(point.mean() - base_point.mean())})
    more_than_half = frac > 0.5  # "most layers": a majority
    verdict = decide(more_than_half and point.mean() > base_point.mean(), bool(ci[0] > 0))
    return Claim(claim, source="write-up", expected="MLP > attention", criterion=criterion, measured=measured,
                 null={"what": "the same layer-mean difference on the seeded random-init copy",
                       "value": float(base_point.mean()),
                       "ci": np.quantile((ba["boot_r_mlp"] - ba["boot_r_attn"]).mean(0), [0.025, 0.975]).tolist()},
                 test=f"paired bootstrap over tokens ({config.n_bootstrap} resamples, seed {config.seed})",
                 ci=ci, verdict=verdict)


def pearson_rows_diff(a: dict) -> np.ndarray:
    """Per layer r(PL_mlp, PL_hidden) - r(PL_attn, PL_hidden) over tokens 1.. (shape (L,))."""
    h = a["pl_hidden"][:, 1:]
    return pearson_rows(a["pl_mlp"][:, 1:], h) - pearson_rows(a["pl_attn"][:, 1:], h)


def _token0_collapse(r: dict, pl: list[dict], config) -> dict:
    without = float(np.mean([p[k]["pearson"] for p in pl for k in ("attn", "mlp")]))
    with0 = float(np.mean([p[k]["pearson_with_token0"] for p in pl for k in ("attn", "mlp")]))
    infl = np.asarray(r["token_influence"]["pearson"])
    test = empirical_null(infl[0], infl[1:], alternative="greater",
                          method=f"token 0's change of r vs each of the other {infl.size - 1} tokens' (leave-one-in)")
    collapse = abs(with0) < abs(without) / 2  # "collapse": r loses at least half its size (0.6 -> -0.2 loses all)
    return Claim("Including token 0 (the attention sink) collapses the Pearson correlations",
                 source="write-up", expected="~0.6 -> ~-0.2",
                 criterion="mean r over layers and both adjustments with token 0 is less than half (in size) the "
                           "mean r without it, AND adding token 0 lowers r more than adding another token does: "
                           f"leave-one-in p < {config.alpha}",
                 measured={"mean_r_without_token0": without, "mean_r_with_token0": with0,
                           "token0_change": float(infl[0])},
                 null={"what": "change of the mean r when one other token is added", "mean": test.null_mean,
                       "sd": test.null_sd, "max": float(infl[1:].max())},
                 test=test.method, p=test.p, verdict=decide(collapse, test.p < config.alpha))


def _spearman_robust(r: dict, pl: list[dict]) -> dict:
    sp = np.abs(np.asarray(r["token_influence"]["spearman"]))
    pe = abs(float(r["token_influence"]["pearson"][0]))
    return Claim("Spearman is robust to token 0", source="write-up", expected="rank correlation restores the result",
                 criterion="adding token 0 changes Spearman's rho less than Pearson's r (mean over layers and both "
                           "adjustments)",
                 measured={"token0_change_of_rho": float(sp[0]), "token0_change_of_r": pe},
                 null={"what": "|change of rho| when one other token is added", "mean": float(sp[1:].mean()),
                       "sd": float(sp[1:].std()), "max": float(sp[1:].max())},
                 verdict=decide(sp[0] < pe),
                 by_construction="adding one token moves a rank correlation by O(1/n) whatever its value (bounded "
                                 "influence): robustness to a single outlier is a property of Spearman's rho")


def _final_step(r: dict, a: dict, n: int, config) -> dict:
    steps = np.array([p["step_without_token0"] for p in r["per_layer"]])
    ratio = r["final_step_ratio"]
    claim = "The last blocks take a big final step"
    criterion = ("mean hidden step (tokens 1..) of the last block is the largest of all blocks; p = (number of "
                 "blocks with a step at least as large) / L under exchangeable blocks (1/L when it is the largest); "
                 f"holds when p < {config.alpha}")
    if n < 2:
        return Claim(claim, source="write-up", expected="large final step", criterion=criterion,
                     measured={"n_blocks": n}, null=None, null_reason="one block: no other step to compare",
                     verdict=decide(None))
    p = float(np.mean(steps >= steps[-1]))
    boot = final_step_ratio(a["boot_step"])
    return Claim(claim, source="write-up", expected="large final step", criterion=criterion,
                 measured={"last_over_median_step": ratio, "last_step": float(steps[-1]),
                           "largest_other_step": float(steps[:-1].max())},
                 null={"what": "rank of the last block's step among all blocks' under a random block order",
                       "value": 1 / n},
                 test="block-order permutation (exact rank)", p=p, ci=np.quantile(boot, [0.025, 0.975]),
                 verdict=decide(bool(steps[-1] > steps[:-1].max()), p < config.alpha))
