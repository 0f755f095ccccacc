"""rsa-categories: do query and key vectors group words by meaning, and do Q and K agree (RSA)?

The chapter's lesson: single-token words from 3 categories (space, furniture, fruit) in "The next word is X";
at one layer the word-by-word similarity matrices of Q and K (and V); category selectivity = mean
within-category similarity / mean across-category similarity; RSA between the Q and K matrices. Then the
laminar profile: RSA and selectivity of Q, K and V over all layers. Words that are not one token for the
model are reported and dropped. Words are the sampled items: bootstrap CIs resample them (pairs of a word
with its own copy are left out); selectivity is tested by shuffling the category labels, RSA by relabelling
one matrix's words (Mantel) and against the random-init model, whose Q and K are two random linear maps of
the same input and so agree too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import select, tokenize
from ..errors import LaminaError
from ..stats import (category_selectivity, compare_rdms, correlation_matrix, cosine_similarity_matrix,
                     label_permutation_test, mantel_test)
from ._pair_resampling import bootstrap_indices
from .base import StudyOutput, register, scaled_layer
from .kept_rows import capture_qkv_rows
from .resampling import boot, layer_trend

PARTS = ("Q", "K", "V")
PAIRS = (("Q", "K"), ("Q", "V"), ("K", "V"))

#: Three categories of common words (most are one token for GPT-2-style BPE vocabularies).
CATEGORIES = {
    "space": ("sun", "moon", "star", "planet", "comet", "galaxy", "orbit", "rocket", "sky", "earth", "mars",
              "space"),
    "furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "lamp", "stool", "couch", "cabinet",
                  "bench", "dresser"),
    "fruit": ("apple", "banana", "orange", "grape", "lemon", "cherry", "peach", "pear", "plum", "mango", "melon",
              "lime"),
}


@dataclass(frozen=True)
class RSAConfig:
    """Settings of rsa-categories.

    Attributes:
        carrier: the sentence each word is put in; ``{}`` marks the word.
        layer: the layer of the detailed matrices (None: layer 5 of 24 scaled to the model).
        similarity: ``"correlation"`` (Pearson between word vectors) or ``"cosine"``.
        rsa_method: how the Q and K matrices are compared (``"spearman"``, ``"pearson"``, ``"kendall_a"``).
        min_per_category: fewest single-token words a category may keep.
        n_permutations: label shuffles (selectivity) and relabellings (Mantel test of RSA).
        n_bootstrap: word resamples for the bootstrap CIs.
        seed: seed of the shuffles and resamples.
    """

    carrier: str = "The next word is {}"
    layer: int | None = None
    similarity: str = "correlation"
    rsa_method: str = "spearman"
    min_per_category: int = 4
    n_permutations: int = 1000
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        if self.carrier.count("{}") != 1:
            raise LaminaError("carrier must contain exactly one {} where the word goes")
        check.layer("layer", self.layer)
        check.choice("similarity", self.similarity, ("correlation", "cosine"))
        check.choice("rsa_method", self.rsa_method, ("spearman", "pearson", "kendall_a"))
        check.at_least("min_per_category", self.min_per_category, 2)
        check.at_least("n_permutations", self.n_permutations, 10)
        check.at_least("n_bootstrap", self.n_bootstrap, 20)
        check.seed("seed", self.seed)

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("layer", self.layer, model.n_layers, model.name)


def parse_categories(text: str | None) -> dict[str, tuple[str, ...]]:
    """Categories from a text file with lines ``category: word, word, ...`` (default: :data:`CATEGORIES`)."""
    if not text:
        return dict(CATEGORIES)
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, words = line.partition(":")
        if not sep:
            raise LaminaError(f"line {line.strip()[:30]!r} is not 'category: word, word, ...'")
        out[name.strip()] = tuple(w.strip() for w in words.split(",") if w.strip())
    return out


def single_token_words(model, categories: dict, carrier: str) -> tuple[list[tuple[str, str, int]], list[dict]]:
    """Words that are one token in the carrier sentence: [(category, word, position)], and the dropped ones."""
    flat = [(c, w) for c, words in categories.items() for w in words]
    texts = [carrier.format(w) for _, w in flat]
    kept, dropped = [], []
    for (cat, word), t in zip(flat, tokenize(model, texts)):
        start = carrier.index("{}")
        end = start + len(word)
        toks = [i for i, (a, b) in enumerate(t.offsets) if not t.special[i] and a < end and b > start]
        if len(toks) == 1:
            kept.append((cat, word, toks[0]))
        else:
            dropped.append({"category": cat, "word": word, "n_tokens": len(toks)})
    return kept, dropped


def _similarity(X: np.ndarray, how: str) -> np.ndarray:
    return correlation_matrix(X) if how == "correlation" else cosine_similarity_matrix(X)


def selectivity_draws(S: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Category selectivity over bootstrap resamples of the words (pairs of two different draws only).

    Args:
        S: (..., n, n) similarity matrices. labels: (n,) categories. idx: (B, n) resampled word indices.

    Returns:
        (..., B) mean within-category / mean across-category similarity; NaN where the across mean is <= 0
        (the ratio has no meaning there). With ``idx = arange(n)`` this is :func:`category_selectivity`.
    """
    n = len(labels)
    w = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)  # (B, n)
    same = labels[:, None] == labels[None, :]
    within, across = (same & ~np.eye(n, dtype=bool)).astype(float), (~same).astype(float)
    quad = lambda M: np.einsum("bi,...ij,bj->...b", w, M, w)  # noqa: E731
    num_w, num_a = quad(S * within) / quad(within), quad(S * across) / quad(across)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_a > 0, num_w / np.where(num_a > 0, num_a, 1), np.nan)


def rsa_draws(A: np.ndarray, B: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman RSA between two (n, n) matrices over bootstrap resamples of the items, without re-sorting.

    A resample keeps the cells of every pair of two different draws, so original pair {i, j} appears
    ``w_i w_j`` times (``w``: draw counts). Its ranks within the resample are weighted mid-ranks (cumulative
    weights in the order of the original values), and rho is the weighted Pearson correlation of those ranks:
    equal to ``scipy.stats.spearmanr`` of the expanded cells.

    Args:
        A, B: (n, n) symmetric matrices. idx: (n_resamples, n) resampled item indices.

    Returns:
        (n_resamples,) rho; NaN for a resample whose cells are constant.
    """
    n = A.shape[0]
    iu, ju = np.triu_indices(n, 1)
    w = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    pw = w[:, iu] * w[:, ju]  # (n_resamples, n_pairs) copies of each original cell

    def ranks(v):
        order = np.argsort(v, kind="stable")
        weights = pw[:, order]
        mid = np.cumsum(weights, axis=1) - (weights - 1) / 2  # the mean position of each cell's copies
        out = np.empty_like(mid)
        out[:, order] = mid
        return out

    total = pw.sum(axis=1, keepdims=True)
    ra, rb = ranks(A[iu, ju]), ranks(B[iu, ju])
    ra -= (pw * ra).sum(axis=1, keepdims=True) / total
    rb -= (pw * rb).sum(axis=1, keepdims=True) / total
    num = (pw * ra * rb).sum(axis=1)
    den = np.sqrt((pw * ra**2).sum(axis=1) * (pw * rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _curve_statistics(sel: dict, sel_draws: dict) -> dict:
    """Selectivity contrasts over depth (real value and bootstrap draws): V vs Q and K, V's U shape.

    Quarters: the first and last quarter of the layers are "the ends", the half between them "the middle"
    (a fixed split stated before looking: a U needs both ends above the middle)."""
    L = len(sel["V"])
    q = max(1, L // 4)
    out = {}
    if L <= 2 * q:
        return out
    for name, f in {
        "V_minus_Q": lambda s: np.nanmean(s["V"] - s["Q"], axis=0),
        "V_minus_K": lambda s: np.nanmean(s["V"] - s["K"], axis=0),
        "V_first_quarter_minus_middle": lambda s: np.nanmean(s["V"][:q], axis=0) - np.nanmean(s["V"][q:L - q], axis=0),
        "V_last_quarter_minus_middle": lambda s: np.nanmean(s["V"][L - q:], axis=0) - np.nanmean(s["V"][q:L - q],
                                                                                                 axis=0),
    }.items():
        out[name] = boot(f({p: np.asarray(v) for p, v in sel.items()}), f(sel_draws))
    return out


@register("rsa-categories", "Category selectivity of Q, K and V and RSA between Q and K, at a layer and over depth",
          RSAConfig)
def compute(model, config: RSAConfig, inputs) -> StudyOutput:
    categories = parse_categories(inputs.get("text"))
    kept, dropped = single_token_words(model, categories, config.carrier)
    counts = {c: sum(1 for k in kept if k[0] == c) for c in categories}
    short = {c: n for c, n in counts.items() if n < config.min_per_category}
    if len(categories) < 2 or short:
        raise LaminaError(f"too few single-token words for {model.name}: {counts} (need >= "
                          f"{config.min_per_category} per category, 2+ categories); pass your own words with "
                          "--text-file (lines 'category: word, word, ...') or lower min_per_category")
    L = model.n_layers
    layer = config.layer if config.layer is not None else scaled_layer(5, 24, L)
    if not 0 <= layer < L:
        raise LaminaError(f"layer {layer} does not exist; {model.name} has blocks 0-{L - 1}")
    texts = [config.carrier.format(w) for _, w, _ in kept]
    acts = capture_qkv_rows(model, texts, select.indices([[p] for _, _, p in kept]))  # one kept row per word
    labels = np.array([c for c, _, _ in kept])
    idx = bootstrap_indices(len(kept), config.n_bootstrap, config.seed)  # resampled words, shared by all layers
    sims = np.stack([[_similarity(acts[f"blocks.{lay}.attn.hook_{p.lower()}"].double().numpy(), config.similarity)
                      for p in PARTS] for lay in range(L)])  # (L, 3, n, n)
    sel_draws = dict(zip(PARTS, np.moveaxis(selectivity_draws(sims, labels, idx), 1, 0)))  # part -> (L, B)
    rsa_qk_draws = np.stack([rsa_draws(sims[lay, 0], sims[lay, 1], idx) for lay in range(L)])  # (L, B)
    per_layer = []
    for lay in range(L):
        row = {"layer": lay}
        for i, p in enumerate(PARTS):
            row[f"selectivity_{p}"] = _defined_selectivity(sims[lay, i], labels)
            row[f"selectivity_{p}_ci"] = _ci(sel_draws[p][lay])
        for a, b in PAIRS:
            row[f"rsa_{a}{b}"] = compare_rdms(sims[lay, PARTS.index(a)], sims[lay, PARTS.index(b)],
                                              config.rsa_method)[0]
        mantel = mantel_test(sims[lay, 0], sims[lay, 1], method=_MANTEL_METHOD[config.rsa_method],
                             alternative="greater", n_permutations=config.n_permutations, seed=config.seed)
        row.update({"rsa_QK_ci": _ci(rsa_qk_draws[lay]), "rsa_QK_mantel_p": mantel.p,
                    "rsa_QK_mantel_null_mean": mantel.null_mean, "rsa_QK_mantel_null_sd": mantel.null_sd})
        per_layer.append(row)
    detail = {}
    for i, p in enumerate(PARTS):
        test = label_permutation_test(lambda lab, S=sims[layer, i]: category_selectivity(S, lab), labels,
                                      alternative="greater", n_permutations=config.n_permutations, seed=config.seed)
        detail[p] = {"selectivity": test.statistic, "p_permutation": test.p, "null_mean": test.null_mean,
                     "null_sd": test.null_sd}
    for a, b in PAIRS:
        mantel = mantel_test(sims[layer, PARTS.index(a)], sims[layer, PARTS.index(b)],
                             method=_MANTEL_METHOD[config.rsa_method], alternative="greater",
                             n_permutations=config.n_permutations, seed=config.seed)
        detail[f"rsa_{a}{b}"] = {"statistic": mantel.statistic, "p": mantel.p, "null_mean": mantel.null_mean,
                                 "null_sd": mantel.null_sd, "method": mantel.method}
    sel = {p: np.array([row[f"selectivity_{p}"] if row[f"selectivity_{p}"] is not None else np.nan
                        for row in per_layer]) for p in PARTS}
    rsa_qk = np.array([row["rsa_QK"] for row in per_layer])
    nulls = {
        "rsa_QK_detail": boot(rsa_qk[layer], rsa_qk_draws[layer]),
        "rsa_QK_median": boot(np.median(rsa_qk), np.median(rsa_qk_draws, axis=0)),
        "selectivity_trend": {p: _trend(sel[p], sel_draws[p]) for p in ("Q", "K")},
        **_curve_statistics(sel, sel_draws),
    }
    results = {"layer": layer, "similarity": config.similarity, "rsa_method": config.rsa_method,
               "words": [{"category": c, "word": w} for c, w, _ in kept], "dropped": dropped,
               "counts": counts, "detail": detail, "per_layer": per_layer, "nulls": nulls}
    arrays = {f"sim_{p}": sims[layer, i] for i, p in enumerate(PARTS)}
    return StudyOutput(results, [], arrays=arrays, resolved={"layer": layer})


#: The Mantel statistic matching each RSA method (tau-a ranks like tau-b away from ties).
_MANTEL_METHOD = {"spearman": "spearman", "pearson": "pearson", "kendall_a": "kendall"}


def _defined_selectivity(S: np.ndarray, labels: np.ndarray) -> float | None:
    """Selectivity, or None where the mean across-category similarity is <= 0 (the ratio means nothing)."""
    across = S[labels[:, None] != labels[None, :]].mean()
    return category_selectivity(S, labels) if across > 0 else None


def _ci(draws: np.ndarray) -> list | None:
    d = draws[np.isfinite(draws)]
    return np.quantile(d, [0.025, 0.975]).tolist() if d.size >= 10 else None


def _trend(curve: np.ndarray, draws: np.ndarray) -> dict:
    """Falls-with-depth trend over the layers where selectivity is defined (Spearman is rank-based, so
    dropping a layer keeps the order of the rest)."""
    ok = np.isfinite(curve)
    return layer_trend(curve[ok], draws[ok], 0, "less")


def claims(output: StudyOutput, config: RSAConfig, baseline: StudyOutput | None) -> list[dict]:
    """The chapter's findings, against label shuffles, Mantel relabelling, word bootstraps and the random-init
    model (any two linear maps of the same input give similar similarity matrices)."""
    from .rsa_claims import rsa_claims

    return rsa_claims(output.results, config, None if baseline is None else baseline.results)


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    words = [w["word"] for w in r["words"]]
    files = []
    fig, axes = new_figure(1, 3, size=(17, 5.5))
    for ax, p in zip(axes[0], PARTS):
        S = a[f"sim_{p}"]
        off = S[~np.eye(len(S), dtype=bool)]
        lo, hi = np.percentile(off, [1, 99])  # the off-diagonal range: offsets make everything look alike
        im = ax.imshow(S, cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(words)), words, rotation=90, fontsize=6)
        ax.set_yticks(range(len(words)), words, fontsize=6)
        ax.set_title(f"{p} at layer {r['layer']}: selectivity {r['detail'][p]['selectivity']:.3f}")
        fig.colorbar(im, ax=ax, shrink=0.7)
    files.append((save(fig, folder, "matrices"), f"Word x word {r['similarity']} at layer {r['layer']} (colour "
                  "range: off-diagonal 1-99th percentile)"))

    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    fig, axes = new_figure(1, 2, size=(12, 4))
    for p, color in zip(PARTS, ("tab:blue", "tab:orange", "tab:green")):
        axes[0, 0].plot(layers, [np.nan if x[f"selectivity_{p}"] is None else x[f"selectivity_{p}"] for x in pl],
                        color=color, label=p)
        ci = np.array([x[f"selectivity_{p}_ci"] or [np.nan, np.nan] for x in pl], dtype=float)
        axes[0, 0].fill_between(layers, ci[:, 0], ci[:, 1], color=color, alpha=0.2, lw=0)
        if base is not None:
            axes[0, 0].plot(layers, [np.nan if x[f"selectivity_{p}"] is None else x[f"selectivity_{p}"]
                                     for x in base], color="grey", ls="--", lw=0.8,
                            label="random-init" if p == "Q" else None)
    axes[0, 0].axhline(1, color="k", lw=0.5)
    axes[0, 0].set(title="category selectivity (within / across; band: bootstrap 95% CI over words)",
                   xlabel="layer")
    axes[0, 0].legend()
    for a_, b_ in PAIRS:
        axes[0, 1].plot(layers, [x[f"rsa_{a_}{b_}"] for x in pl], label=f"RSA {a_}-{b_}")
    ci = np.array([x["rsa_QK_ci"] or [np.nan, np.nan] for x in pl], dtype=float)
    axes[0, 1].fill_between(layers, ci[:, 0], ci[:, 1], color="tab:blue", alpha=0.2, lw=0)
    null = np.array([x["rsa_QK_mantel_null_mean"] for x in pl])
    sd = np.array([x["rsa_QK_mantel_null_sd"] for x in pl])
    axes[0, 1].fill_between(layers, null - 2 * sd, null + 2 * sd, color="k", alpha=0.25, lw=0,
                            label="Mantel null (+-2 sd)")
    if base is not None:
        axes[0, 1].plot(layers, [x["rsa_QK"] for x in base], color="grey", ls="--", label="random-init RSA Q-K")
    axes[0, 1].set(title="RSA between similarity matrices", xlabel="layer")
    axes[0, 1].legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Laminar profile of selectivity and RSA; grey dashed: "
                  "the random-init model"))
    return files
