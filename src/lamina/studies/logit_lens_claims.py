"""logit-lens's claims: the lens identity (by construction), the emergence of the final prediction against
the seeded random-init copy (a residual stream ends at its last state, so any stack's lens rank falls toward
it), the write-up's early prediction against a uniform-rank null, and BERT's right vs wrong lens against the
vocabulary's own extreme z-scores.
"""

from __future__ import annotations

import numpy as np

from ..stats import bootstrap_ci, permutation_test, trend_test
from .base import StudyOutput
from .claims import Claim, decide

__all__ = ["claims", "settle_depth", "rank_trend", "extreme_z"]


def settle_depth(final_rank: np.ndarray) -> np.ndarray:
    """Per position the relative depth (0..1) of the first hidden state from which the final prediction stays
    top-1 (final_rank: (L + 1, T); the last state always has rank 0, so the value is at most 1)."""
    n_states = final_rank.shape[0]
    not_top = final_rank != 0
    # the last state that is not top-1, plus one; -1 + 1 = 0 when the prediction is top-1 everywhere
    last_miss = np.where(not_top.any(0), n_states - 1 - np.argmax(not_top[::-1], axis=0), -1)
    return (last_miss + 1) / max(1, n_states - 1)


def rank_trend(final_rank: np.ndarray) -> np.ndarray:
    """Per position Spearman rho between depth and the final prediction's rank (0 for a constant rank)."""
    from scipy.stats import rankdata

    ranks = rankdata(final_rank.T, axis=-1)  # (T, L + 1)
    ranks = ranks - ranks.mean(axis=-1, keepdims=True)
    depth = np.arange(final_rank.shape[0]) - (final_rank.shape[0] - 1) / 2
    den = np.sqrt((ranks**2).sum(-1) * (depth**2).sum())
    return np.where(den > 0, ranks @ depth / np.where(den > 0, den, 1.0), 0.0)


def claims(output: StudyOutput, config, baseline: StudyOutput | None) -> list[dict]:
    if output.results["kind"] == "masked":
        return _masked_claims(output.results)
    return _causal_claims(output, config, baseline)


def _identity(r: dict, what: str) -> dict:
    err = r["lens_vs_model_logits_max_abs"]
    tol = 1e-3  # same float32 modules on the same input: only batching can move the rounding (~1e-5 of logits ~10)
    return Claim(what, source="lamina", expected="identical logits", criterion=f"max |lens - model logits| < {tol:g}",
                 measured={"max_abs_difference": err}, verdict=decide(err < tol),
                 null_reason="an exact identity: no null model applies",
                 by_construction="the last hidden state through the model's own final norm and head is the model's "
                                 "forward pass: a check of the hooks, not a finding")


def _paired_sign_flip(a: np.ndarray, b: np.ndarray, seed: int, alternative: str):
    """Paired permutation test (swap within positions) of mean(a - b); None with fewer than 2 pairs."""
    if a.size < 2 or a.size != b.size:
        return None
    return permutation_test(lambda x, y, axis: np.mean(x - y, axis=axis), a, b, permutation_type="samples",
                            alternative=alternative, n_permutations=9999, seed=seed, vectorized=True)


def _causal_claims(output: StudyOutput, config, baseline: StudyOutput | None) -> list[dict]:
    r, a = output.results, output.arrays
    return [_identity(r, "The lens at the last layer is the model's own output"),
            _rank_falls(r, a, config, baseline), _settles_late(a, config, baseline), _expected_word(r, a, config)]


def _rank_falls(r: dict, a: dict, config, baseline: StudyOutput | None) -> dict:
    curve = np.array([p["final_log10_rank_mean"] for p in r["per_layer"]])
    rho = rank_trend(a["final_rank"])
    claim = "The final prediction emerges with depth: its rank falls through the layers, beyond the random-init copy"
    criterion = ("the mean log10(rank + 1) of the final prediction falls with depth (Spearman trend over hidden "
                 f"states, p < {config.alpha}) AND the per-position Spearman rho(depth, rank) is more negative than "
                 f"on the random-init copy (paired permutation over positions, p < {config.alpha}): a residual "
                 "stream ends at its last state, so any stack's rank falls toward it")
    measured = {"trend_rho": None, "median_rho_over_positions": float(np.median(rho))}
    if curve.size < 3:
        return Claim(claim, source="lamina", expected="rank falls", criterion=criterion, measured=measured,
                     null=None, null_reason="fewer than 3 hidden states", verdict=decide(None))
    trend = trend_test(curve, alternative="less")
    measured.update({"trend_rho": trend.statistic, "trend_p": trend.p})
    falls = trend.statistic < 0 and trend.p < config.alpha
    if baseline is None:
        return Claim(claim, source="lamina", expected="rank falls", criterion=criterion, measured=measured,
                     null=None, null_reason="baseline run skipped", test=trend.method, p=trend.p,
                     verdict=decide(trend.statistic < 0, False))
    base_rho = rank_trend(baseline.arrays["final_rank"])
    test = _paired_sign_flip(rho, base_rho, config.seed, "less")
    measured["random_init_median_rho"] = float(np.median(base_rho))
    return Claim(claim, source="lamina", expected="rank falls", criterion=criterion, measured=measured,
                 null={"what": "per-position rho on the seeded random-init copy", "mean": float(base_rho.mean()),
                       "sd": float(base_rho.std())},
                 test=f"{trend.method}; paired permutation vs random-init", p=None if test is None else test.p,
                 verdict=decide(trend.statistic < 0, falls and test is not None and test.p < config.alpha))


def _settles_late(a: dict, config, baseline: StudyOutput | None) -> dict:
    depth = settle_depth(a["final_rank"])
    late = 0.5  # "the later layers": the second half of the stack
    ci = bootstrap_ci(depth, n_resamples=config.n_bootstrap, seed=config.seed) if depth.size >= 2 else None
    claim = "The final prediction settles only in the later layers, yet before the end (unlike the random-init copy)"
    criterion = ("mean relative depth from which the final prediction stays top-1 (0 = embeddings, 1 = last state) "
                 f"has its 95% bootstrap CI over positions above {late} AND is below the random-init copy's (paired "
                 f"permutation over positions, one-sided p < {config.alpha}): a stack whose intermediate states carry "
                 "no prediction fixes its argmax only at the last state, so 'late' alone is expected by construction")
    measured = {"mean_settle_depth": float(depth.mean())}
    if baseline is None:
        return Claim(claim, source="lamina", expected="top-1 from late layers on", criterion=criterion,
                     measured=measured, null=None, null_reason="baseline run skipped", ci=ci,
                     verdict=decide(depth.mean() > late, False))
    base = settle_depth(baseline.arrays["final_rank"])
    test = _paired_sign_flip(depth, base, config.seed, "less")
    measured["random_init_mean_settle_depth"] = float(base.mean())
    significant = ci is not None and ci[0] > late and test is not None and test.p < config.alpha
    return Claim(claim, source="lamina", expected="top-1 from late layers on", criterion=criterion, measured=measured,
                 null={"what": "settle depth on the seeded random-init copy (chance: 1, the last state only)",
                       "mean": float(base.mean()), "sd": float(base.std())},
                 test="bootstrap over positions; paired permutation vs random-init", p=None if test is None else test.p,
                 ci=ci, verdict=decide(depth.mean() > late, significant))


def _expected_word(r: dict, a: dict, config) -> dict:
    want = config.expected.strip()
    ranks = [w["expected_rank"] for w in r["at_word"] if w["expected_rank"] is not None]
    claim = f"At layer {r['layer']} the prediction after {config.word!r} is {want!r}"
    criterion = (f"{want!r} is the lens's top-1 token after {config.word!r} at hidden state {r['layer']} (at any "
                 f"occurrence); p = P(best rank over k occurrences <= observed) when ranks are uniform over the "
                 f"vocabulary of {r['vocab_size']}")
    measured = {"top_token_after_word": [w["top_tokens"][0] for w in r["at_word"]], "expected_rank": ranks,
                "first_layer_expected_top1": [w["first_layer_expected_top1"] for w in r["at_word"]]}
    if not ranks:
        why = f"{config.word!r} not in the text" if not r["at_word"] else f"{want!r} is not one token here"
        return Claim(claim, source="write-up", expected=f"{want!r} (GPT-2, layer 3 of 12)", criterion=criterion,
                     measured=measured, null=None, null_reason=why, verdict=decide(None))
    best, k, vocab = min(ranks), len(ranks), r["vocab_size"]
    p = float(1 - (1 - (best + 1) / vocab) ** k)
    return Claim(claim, source="write-up", expected=f"{want!r} (GPT-2, layer 3 of 12)", criterion=criterion,
                 measured=measured, null={"what": "rank of a token under an uninformative lens (uniform)",
                                          "mean": (vocab - 1) / 2, "sd": vocab / np.sqrt(12)},
                 test="rank under a uniform null", p=p, verdict=decide(best == 0, p < config.alpha))


def extreme_z(vocab: int) -> float:
    """sqrt(2 ln V): about the largest of V independent standard-normal z-scores. A token whose z beats it
    stands out of the whole vocabulary; below it, it is lost among the vocabulary's own extremes."""
    return float(np.sqrt(2 * np.log(vocab)))


def _masked_claims(r: dict) -> list[dict]:
    pl = r["per_layer"]
    third = pl[-3] if len(pl) >= 3 else pl[0]
    vocab = r["vocab_size"]
    bound = extreme_z(vocab)
    right, wrong = third["right"], third["wrong"]
    p = (right["target_rank"] + 1) / vocab
    return [
        _identity(r, "The whole MLM head on the last hidden state is the model's own output"),
        Claim("At the third-to-last hidden state the right lens (whole MLM head) finds the masked word; the wrong "
              "lens (decoder weights only) does not", source="write-up", expected="right z ~ 30, wrong z < 3",
              criterion=f"right-lens z of the masked word > sqrt(2 ln V) = {bound:.3g} (the largest z expected among "
                        f"V = {vocab} unrelated tokens) with rank p = (rank + 1) / V < 0.05, AND wrong-lens z below "
                        "that bound",
              measured={"layer": third["layer"], "right_z": right["target_z"], "wrong_z": wrong["target_z"],
                        "right_rank": right["target_rank"], "wrong_rank": wrong["target_rank"],
                        "right_top": right["top_token"], "wrong_top": wrong["top_token"]},
              null={"what": "z-scores of the vocabulary's tokens (standardised logits): mean 0, sd 1; their "
                            "expected maximum", "mean": 0.0, "sd": 1.0, "value": bound},
              test="rank among the vocabulary (uniform null)", p=p,
              verdict=decide(right["target_z"] > bound and wrong["target_z"] < bound, p < 0.05)),
    ]
