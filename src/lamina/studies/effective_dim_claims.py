"""The claims of effective-dim: lamina's checks of the chapter's lesson (text vs token-shuffled text), each
against the spread of the seeded shuffled copies."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..stats import correct_pvalues
from .claims import Claim, decide

__all__ = ["effective_dim_claims", "prediction_test"]

ALPHA = 0.05  # the conventional 5% level for every test of this study
SAME_SPECTRUM = 1e-9  # the same rows in another order: equal spectra up to float64 summation order
N_FLAT_DRAWS = 10_000  # draws of the flat-profile null (p resolution 1e-4)
MAJORITY = 0.5  # "differ in the middle layers": in more than half of them


def prediction_test(x: float, values, resolution: float) -> dict:
    """Is ``x`` a draw from the distribution the (normal) ``values`` come from? A t prediction interval.

    ``t = (x - mean) / (sd * sqrt(1 + 1/k))`` with k - 1 degrees of freedom (k = len(values)); ``sd`` is at least
    ``resolution / sqrt(12)``: the measure moves in steps of ``resolution`` (one PCA component), so identical
    values still carry a rounding error of that size.

    Returns:
        ``{"t", "p" (two-sided), "mean", "sd"}``.
    """
    v = np.asarray(values, dtype=np.float64)
    k = v.size
    sd = max(float(v.std(ddof=1)), resolution / math.sqrt(12))
    t = (x - float(v.mean())) / (sd * math.sqrt(1 + 1 / k))
    return {"t": float(t), "p": float(2 * sps.t.sf(abs(t), k - 1)), "mean": float(v.mean()), "sd": sd}


def effective_dim_claims(r: dict, config) -> list[dict]:
    """Claims from the results of effective-dim."""
    pl = r["per_layer"]
    step = 100 / r["max_dimensions"]  # one component, in % of the maximum
    k = r["n_shuffles"]
    text = np.array([p["text"]["pct95"] for p in pl])
    shuf = np.array([p["shuffles"]["pct95"]["mean"] for p in pl])
    out = []

    # 1. The embeddings: the same tokens, so the same spectrum unless positions are added.
    if not r["absolute_positions"]:
        diff = r["layer0_max_spectrum_difference"]
        out.append(Claim(
            "At the embeddings the shuffled copies have exactly the spectrum of the text (same tokens)",
            source="lamina",
            criterion=f"largest |explained-variance ratio difference| at layer 0, text vs every shuffled copy, "
                      f"< {SAME_SPECTRUM}",
            measured={"max_spectrum_difference": diff, "pct95_text": float(text[0])},
            null_reason="an exact identity on this architecture", verdict=decide(diff < SAME_SPECTRUM),
            by_construction="rotary model: no position embedding, so every copy holds the same layer-0 vectors "
                            "(the same token multiset) in another order"))
    else:
        t0 = prediction_test(text[0], pl[0]["shuffles"]["pct95"]["values"], step)
        out.append(Claim(
            "At the embeddings the shuffled copies have the text's dimensionality (same tokens)", source="lamina",
            criterion=f"layer-0 pct95 of the text inside the shuffled copies' 95% prediction interval (t test, "
                      f"{k - 1} df, p >= {ALPHA}); position embeddings are the only difference",
            measured={"pct95_text": float(text[0]), "t": t0["t"]},
            null={"what": f"pct95 of {k} seeded shuffled copies at layer 0", "mean": t0["mean"], "sd": t0["sd"],
                  "n": k},
            test="t prediction interval", p=t0["p"], verdict=decide(t0["p"] >= ALPHA)))

    # 2. A laminar profile: the range over depth beyond what measurement noise gives a flat profile.
    sds = np.array([max(p["shuffles"]["pct95"]["sd"], step / math.sqrt(12)) for p in pl])
    sigma = float(np.sqrt(np.mean(sds**2)))
    rng = np.random.default_rng(config.seed)
    null = np.ptp(rng.normal(0, sigma, (N_FLAT_DRAWS, len(pl))), axis=1)
    observed = float(np.ptp(text))
    p_flat = float((1 + np.count_nonzero(null >= observed)) / (1 + N_FLAT_DRAWS))
    out.append(Claim(
        "Dimensionality changes through the layers (a laminar profile, not flat)", source="lamina",
        criterion=f"range (max - min over layers) of the text's pct95 above a flat profile's range under the "
                  f"measurement noise (per-layer sd over the {k} shuffled copies, RMS {sigma:.3g} points): "
                  f"{N_FLAT_DRAWS} seeded draws, p < {ALPHA}",
        measured={"pct95_min": float(text.min()), "pct95_max": float(text.max()), "range": observed},
        null={"what": "range of a flat profile plus the shuffles' per-layer noise",
              "mean": float(null.mean()), "sd": float(null.std()), "n": N_FLAT_DRAWS},
        test="parametric null (simulated flat profile)", p=p_flat,
        verdict=decide(observed > float(null.mean()), p_flat < ALPHA),
        note="change with depth alone does not show learning: compare the random-init model's range"))

    # 3. Context changes the dimensionality in the middle layers.
    n = len(pl)
    q = max(1, n // 4)
    middle = list(range(q, n - q)) if n > 2 * q else list(range(n))  # the central half of the depth
    tests = [prediction_test(text[i], pl[i]["shuffles"]["pct95"]["values"], step) for i in middle]
    reject, adjusted = correct_pvalues(np.array([t["p"] for t in tests]), "fdr_bh", ALPHA)
    share = float(np.mean(reject))
    out.append(Claim(
        "Context changes the dimensionality: text and shuffled text differ in the middle layers", source="lamina",
        criterion=f"in more than half of the middle layers ({middle[0]}-{middle[-1]}, the central half of the "
                  f"depth) the text's pct95 lies outside the shuffled copies' prediction interval (t test, {k - 1} "
                  f"df, Benjamini-Hochberg q < {ALPHA}); equivalently the median q < {ALPHA}",
        measured={"share_of_middle_layers_differing": share, "layers_differing": int(reject.sum()),
                  "n_middle_layers": len(middle),
                  "mean_abs_pct95_difference": float(np.mean(np.abs(text[middle] - shuf[middle]))),
                  "layers_text_above_shuffled": int(np.sum(text > shuf)),
                  "layers_shuffled_above_text": int(np.sum(shuf > text))},
        null={"what": f"pct95 of {k} seeded shuffled copies (the same tokens, context destroyed)",
              "mean": float(shuf[middle].mean()), "sd": float(np.sqrt(np.mean(sds[middle] ** 2))), "n": k},
        test="t prediction interval per layer, Benjamini-Hochberg", p=float(np.median(adjusted)),
        verdict=decide(share > MAJORITY)))
    return out
