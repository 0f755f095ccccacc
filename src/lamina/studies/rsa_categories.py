"""rsa-categories: do query and key vectors group words by meaning, and do Q and K agree (RSA)?

The chapter's lesson: single-token words from 3 categories (space, furniture, fruit) in "The next word is X";
at one layer the word-by-word similarity matrices of Q and K (and V); category selectivity = mean
within-category similarity / mean across-category similarity; RSA between the Q and K matrices. Then the
laminar profile: RSA and selectivity of Q, K and V over all layers. Words that are not one token for the
model are reported and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, select, tokenize
from ..errors import LaminaError
from ..stats import category_selectivity, compare_rdms, correlate, correlation_matrix, cosine_similarity_matrix
from .base import Claim, StudyOutput, register, scaled_layer

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
        n_permutations, seed: the label-permutation test of selectivity.
    """

    carrier: str = "The next word is {}"
    layer: int | None = None
    similarity: str = "correlation"
    rsa_method: str = "spearman"
    min_per_category: int = 4
    n_permutations: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.carrier.count("{}") != 1:
            raise LaminaError("carrier must contain exactly one {} where the word goes")
        if self.similarity not in ("correlation", "cosine"):
            raise LaminaError(f"similarity must be correlation or cosine (got {self.similarity!r})")
        if self.rsa_method not in ("spearman", "pearson", "kendall_a"):
            raise LaminaError(f"rsa_method must be spearman, pearson or kendall_a (got {self.rsa_method!r})")
        if self.min_per_category < 2 or self.n_permutations < 10:
            raise LaminaError("min_per_category must be >= 2 and n_permutations >= 10")


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


def selectivity_test(S: np.ndarray, labels: np.ndarray, n_permutations: int, rng) -> tuple[float, float]:
    """Selectivity and its label-permutation p-value (share of shuffles at least as selective)."""
    observed = category_selectivity(S, labels)
    null = np.array([category_selectivity(S, rng.permutation(labels)) for _ in range(n_permutations)])
    return observed, float((1 + np.sum(null >= observed)) / (1 + n_permutations))


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
    acts = capture(model, texts, ["blocks.*.attn.hook_q", "blocks.*.attn.hook_k", "blocks.*.attn.hook_v"],
                   positions=select.indices([[p] for _, _, p in kept]), cache=True)
    labels = np.array([c for c, _, _ in kept])
    rng = np.random.default_rng(config.seed)
    per_layer, matrices = [], {}
    for lay in range(L):
        sims = {p: _similarity(acts[f"blocks.{lay}.attn.hook_{p.lower()}"].double().numpy(), config.similarity)
                for p in PARTS}
        row = {"layer": lay}
        for p in PARTS:
            row[f"selectivity_{p}"] = category_selectivity(sims[p], labels)
        for a, b in PAIRS:
            row[f"rsa_{a}{b}"] = compare_rdms(sims[a], sims[b], config.rsa_method)[0]
        per_layer.append(row)
        if lay == layer:
            matrices = sims
    detail = {}
    for p in PARTS:
        sel, pval = selectivity_test(matrices[p], labels, config.n_permutations, rng)
        detail[p] = {"selectivity": sel, "p_permutation": pval}
    for a, b in PAIRS:
        stat, pval = compare_rdms(matrices[a], matrices[b], config.rsa_method)
        detail[f"rsa_{a}{b}"] = {"statistic": stat, "p": pval}
    results = {"layer": layer, "similarity": config.similarity,
               "words": [{"category": c, "word": w} for c, w, _ in kept], "dropped": dropped,
               "counts": counts, "detail": detail, "per_layer": per_layer}
    arrays = {f"sim_{p}": matrices[p] for p in PARTS}
    return StudyOutput(results, _claims(results), arrays=arrays, resolved={"layer": layer})


def _claims(r: dict) -> list[dict]:
    d, pl = r["detail"], r["per_layer"]
    layers = [p["layer"] for p in pl]
    enough = len(pl) >= 3
    rsa_qk = [p["rsa_QK"] for p in pl]
    falls = {p: correlate(layers, [x[f"selectivity_{p}"] for x in pl], "spearman").r for p in ("Q", "K")} \
        if enough else None
    mean_sel = {p: float(np.mean([x[f"selectivity_{p}"] for x in pl])) for p in PARTS}
    v = np.array([x["selectivity_V"] for x in pl])
    q = max(1, len(v) // 4)
    ends, middle = float(np.r_[v[:q], v[-q:]].mean()), float(v[q:len(v) - q].mean()) if len(v) > 2 * q else None
    return [
        Claim(f"Q and K group words by category at layer {r['layer']} (selectivity > 1)",
              "selectivity > 1, significant", {p: d[p] for p in PARTS},
              all(d[p]["selectivity"] > 1 and d[p]["p_permutation"] < 0.05 for p in ("Q", "K"))),
        Claim(f"RSA between the Q and K similarity matrices is strong at layer {r['layer']}", "really strong",
              d["rsa_QK"], d["rsa_QK"]["statistic"] > 0.5),
        Claim("RSA(Q, K) stays high over all layers", "~0.84-0.96",
              {"min": float(np.min(rsa_qk)), "median": float(np.median(rsa_qk)), "max": float(np.max(rsa_qk))},
              float(np.median(rsa_qk)) > 0.7),
        Claim("Category selectivity falls with depth", "falls", {"spearman_layer_vs_selectivity": falls},
              None if falls is None else all(f < 0 for f in falls.values())),
        Claim("V is more selective than Q and K", "V higher", {"mean_over_layers": mean_sel},
              mean_sel["V"] > mean_sel["Q"] and mean_sel["V"] > mean_sel["K"]),
        Claim("V's selectivity is U-shaped over depth", "high at both ends",
              {"first_and_last_quarter": ends, "middle": middle}, None if middle is None else ends > middle),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
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
        ax.set_title(f"{p} at layer {r['layer']}: selectivity {r['detail'][p]['selectivity']:.2f}")
        fig.colorbar(im, ax=ax, shrink=0.7)
    files.append((save(fig, folder, "matrices"), f"Word x word {r['similarity']} at layer {r['layer']} (colour "
                  "range: off-diagonal 1-99th percentile)"))

    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    fig, axes = new_figure(1, 2, size=(12, 4))
    for p in PARTS:
        axes[0, 0].plot(layers, [x[f"selectivity_{p}"] for x in pl], label=p)
    axes[0, 0].axhline(1, color="k", lw=0.5)
    axes[0, 0].set(title="category selectivity (within / across)", xlabel="layer")
    axes[0, 0].legend()
    for a_, b_ in PAIRS:
        axes[0, 1].plot(layers, [x[f"rsa_{a_}{b_}"] for x in pl], label=f"RSA {a_}-{b_}")
    axes[0, 1].set(title="RSA between similarity matrices", xlabel="layer")
    axes[0, 1].legend()
    files.append((save(fig, folder, "per_layer", svg=True), "Laminar profile of selectivity and RSA"))
    return files
