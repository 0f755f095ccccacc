"""effective-dim: how many dimensions the token vectors of a text use, layer by layer (PCA).

The chapter's lesson: ~1000 tokens of prose and a token-shuffled copy of them (the same tokens, context
destroyed); PCA on the token vectors of every hidden state; the number of components that reach 95% (and
99%) of the variance, absolute and as % of the maximum (the rank limit min(n_tokens - 1, d_model)); both texts'
curves in one figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture, residual_sites
from ..errors import LaminaError
from ..stats import components_for_variance, participation_ratio, pca_spectrum
from .base import Claim, StudyOutput, register
from .texts import corpus_text

TEXTS = ("text", "shuffled")


@dataclass(frozen=True)
class EffectiveDimConfig:
    """Settings of effective-dim.

    Attributes:
        n_tokens: tokens of prose analysed (run as windows of at most the model's context).
        skip_tokens: corpus tokens skipped at the start.
        skip_first: leave out the first token of each window (the attention sink: its huge norm would fill
            the first principal component on its own).
        thresholds: variance fractions reported (95% and 99%).
        seed: seed of the token shuffle.
    """

    n_tokens: int = 1000
    skip_tokens: int = 3000
    skip_first: bool = True
    thresholds: tuple[float, ...] = (0.95, 0.99)
    seed: int = 0

    def __post_init__(self):
        if self.n_tokens < 20 or self.skip_tokens < 0:
            raise LaminaError("n_tokens must be >= 20 and skip_tokens >= 0")
        if not self.thresholds or any(not 0 < t <= 1 for t in self.thresholds):
            raise LaminaError("thresholds must be fractions in (0, 1], e.g. 0.95,0.99")


def _windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@register("effective-dim", "Effective dimensionality (PCA) of token vectors per layer: text vs token-shuffled text",
          EffectiveDimConfig)
def compute(model, config: EffectiveDimConfig, inputs) -> StudyOutput:
    text, source = corpus_text(inputs.get("corpus") or inputs.get("text"))
    ids = model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < config.skip_tokens + config.n_tokens:
        raise LaminaError(f"the text has {len(ids)} tokens; effective-dim needs skip_tokens + n_tokens = "
                          f"{config.skip_tokens + config.n_tokens} (lower them or pass a longer --corpus)")
    tokens = ids[config.skip_tokens:config.skip_tokens + config.n_tokens]
    size = min(config.n_tokens, model.context_length or config.n_tokens)
    # Shuffle every token except the first of each window, so both texts keep the same set of tokens.
    shuffled = np.asarray(tokens)
    movable = np.flatnonzero(np.arange(len(tokens)) % size != 0)
    shuffled[movable] = np.random.default_rng(config.seed).permutation(shuffled[movable])
    shuffled = shuffled.tolist()
    per_text = {}
    for name, seq in (("text", tokens), ("shuffled", shuffled)):
        acts = capture(model, _windows(seq, size), residual_sites(model), cache=True, add_special_tokens=False)
        hidden = acts.residual_stream().double().numpy()  # (L + 1, n_tokens, d)
        if config.skip_first:
            hidden = hidden[:, acts.rows.position != 0]
        per_text[name] = [pca_spectrum(h) for h in hidden]
    n_rows = int(hidden.shape[1])
    max_dim = min(n_rows - 1, hidden.shape[2])  # centring removes one dimension
    per_layer = []
    for layer in range(len(per_text["text"])):
        row = {"layer": layer}
        for name in TEXTS:
            spec = per_text[name][layer]
            row[name] = {f"n{round(t * 100)}": components_for_variance(spec, t) for t in config.thresholds}
            row[name].update({f"pct{round(t * 100)}": 100 * row[name][f"n{round(t * 100)}"] / max_dim
                              for t in config.thresholds})
            row[name]["participation_ratio"] = participation_ratio(spec)
            row[name]["top1_variance"] = float(spec[0])
        per_layer.append(row)
    results = {"corpus": source, "n_tokens": n_rows, "max_dimensions": max_dim, "window": size,
               "per_layer": per_layer}
    arrays = {f"spectrum_{name}": np.stack([s[:max_dim] for s in per_text[name]]) for name in TEXTS}
    layer0 = {name: per_text[name][0] for name in TEXTS}  # the same token set: equal spectra without positions
    return StudyOutput(results, _claims(results, model, layer0), arrays=arrays, resolved={"window": size})


def _claims(r: dict, model, a0: dict) -> list[dict]:
    pl = r["per_layer"]
    text = np.array([p["text"]["pct95"] for p in pl])
    shuf = np.array([p["shuffled"]["pct95"] for p in pl])
    n = len(pl)
    q = max(1, n // 4)
    middle = slice(q, n - q) if n > 2 * q else slice(0, n)
    diff = float(np.mean(np.abs(text[middle] - shuf[middle])))
    positional = model.adapter.absolute_positions
    return [
        Claim("At the embeddings the shuffled copy has exactly the spectrum of the text (same tokens)",
              "equal at layer 0 (models without added position embeddings; else not testable)",
              {"pct95_text": float(text[0]), "pct95_shuffled": float(shuf[0])},
              None if positional else bool(np.allclose(a0["text"], a0["shuffled"], rtol=1e-6, atol=1e-9)),
              source="lamina"),
        Claim("Dimensionality changes through the layers", "a laminar profile, not flat",
              {"pct95_min": float(text.min()), "pct95_max": float(text.max())}, text.max() - text.min() >= 10,
              source="lamina"),
        Claim("Context changes the dimensionality: text and shuffled text differ in the middle layers",
              "text != shuffled", {"mean_abs_pct95_difference_middle_layers": diff,
                                "layers_text_above_shuffled": int(np.sum(text > shuf)),
                                "layers_shuffled_above_text": int(np.sum(shuf > text))}, abs(diff) >= 2,
              source="lamina"),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    keys = [k for k in pl[0]["text"] if k.startswith("n")]
    files = []
    fig, axes = new_figure(1, 2, size=(12, 4))
    for name, color in zip(TEXTS, ("tab:blue", "tab:orange")):
        for key, style in zip(keys, ("-", "--", ":")):
            axes[0, 0].plot(layers, [p[name][key] for p in pl], color=color, ls=style, label=f"{name}: {key[1:]}%")
            axes[0, 1].plot(layers, [p[name]["pct" + key[1:]] for p in pl], color=color, ls=style,
                            label=f"{name}: {key[1:]}%")
    axes[0, 0].set(title="components to reach the variance", xlabel="layer (0 = embeddings)", ylabel="components")
    axes[0, 1].set(title=f"as % of the maximum ({r['max_dimensions']})", xlabel="layer (0 = embeddings)",
                   ylabel="%")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Effective dimensionality: text vs token-shuffled"))

    fig, axes = new_figure(1, 2, size=(12, 4))
    for ax, name in zip(axes[0], TEXTS):
        spec = a[f"spectrum_{name}"]
        cum = np.cumsum(spec, axis=1)
        im = ax.imshow(cum, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"{name}: cumulative explained variance", xlabel="component", ylabel="layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    files.append((save(fig, folder, "spectra"), "Cumulative PCA spectra per layer"))
    return files
