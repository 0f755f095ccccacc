"""effective-dim: how many dimensions the token vectors of a text use, layer by layer (PCA).

The chapter's lesson: ~1000 tokens of prose and a token-shuffled copy of them (the same tokens, context
destroyed); PCA on the token vectors of every hidden state; the number of components that reach 95% (and
99%) of the variance, absolute and as % of the maximum (the rank limit min(n_tokens - 1, d_model)); both texts'
curves in one figure. Several seeded shuffled copies give the shuffled curve a spread, against which the text is
tested (a t prediction interval per layer). Each copy is computed from streaming reducers, one forward pass per
copy (:mod:`lamina.studies.effective_dim_reduce`): a float64 covariance per hidden state, or the rows themselves
when there are fewer tokens than dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LaminaError
from ..stats import components_for_variance, participation_ratio
from .base import StudyOutput, register
from .effective_dim_reduce import SINK_RATIO, copy_spectra  # noqa: F401 - SINK_RATIO: the documented rule
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
        drop_sinks: also leave out any other token whose hidden-state norm exceeds ``SINK_RATIO`` times the
            median at some layer: a shuffled copy can put a second attention sink (~100x the median norm) at
            position 1, which then fills the first component alone, as the first token would.
        n_shuffles: token-shuffled copies (seeded), so the text-vs-shuffled gap has a spread; the first is the
            protocol's copy (4 separate the text from the copies on the bundled model; 3 leave the t tests
            underpowered).
        seed: seed of the token shuffles.
    """

    n_tokens: int = 1000
    skip_tokens: int = 3000
    skip_first: bool = True
    thresholds: tuple[float, ...] = (0.95, 0.99)
    drop_sinks: bool = True
    n_shuffles: int = 4
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        check.at_least("n_tokens", self.n_tokens, 20)
        check.at_least("skip_tokens", self.skip_tokens, 0)
        if not self.thresholds:
            raise LaminaError("thresholds is empty; give variance fractions, e.g. --set thresholds=0.95,0.99")
        for t in self.thresholds:
            check.between("thresholds values", t, 0, 1, high_open=False)
        check.at_least("n_shuffles", self.n_shuffles, 2)  # a spread needs two shuffled copies
        check.seed("seed", self.seed)


def _windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def spectrum(X: np.ndarray) -> np.ndarray:
    """Explained-variance ratios of PCA on the rows of X (n, d), largest first, length min(n, d): the same
    numbers as :func:`lamina.stats.pca_spectrum`, from the eigenvalues of the smaller Gram/covariance matrix
    (3x faster than the SVD on (1000, 576))."""
    X = np.asarray(X, dtype=np.float64)
    c = X - X.mean(axis=0)
    gram = c.T @ c if c.shape[0] >= c.shape[1] else c @ c.T
    ev = np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None)[:min(X.shape)]
    total = ev.sum()
    return ev / total if total > 0 else ev


def _summary(spec: np.ndarray, thresholds, max_dim: int) -> dict:
    out = {f"n{round(t * 100)}": components_for_variance(spec, t) for t in thresholds}
    out.update({f"pct{round(t * 100)}": 100 * out[f"n{round(t * 100)}"] / max_dim for t in thresholds})
    out["participation_ratio"] = participation_ratio(spec)
    out["top1_variance"] = float(spec[0])
    return out


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
    # Shuffle every token except the first of each window, so every copy keeps the same set of tokens; the
    # first copy is the protocol's (the same permutation as before n_shuffles existed).
    rng = np.random.default_rng(config.seed)
    movable = np.flatnonzero(np.arange(len(tokens)) % size != 0)
    copies = [("text", list(tokens))]
    for k in range(config.n_shuffles):
        shuffled = np.asarray(tokens)
        shuffled[movable] = rng.permutation(shuffled[movable])
        copies.append((f"shuffle{k}", shuffled.tolist()))
    spectra, layer0, max_dim, sinks, n_rows = {}, {}, {}, {}, {}
    for name, seq in copies:
        out = copy_spectra(model, _windows(seq, size), config)
        spectra[name], layer0[name], sinks[name] = out["spectra"], out["layer0"], out["sinks"]
        n_rows[name] = out["n_rows"]
        max_dim[name] = min(n_rows[name] - 1, out["width"])  # centring removes one dimension
    shuffles = [f"shuffle{k}" for k in range(config.n_shuffles)]
    per_layer = []
    for layer in range(spectra["text"].shape[0]):
        summaries = {name: _summary(spectra[name][layer], config.thresholds, max_dim[name]) for name in spectra}
        row = {"layer": layer, "text": summaries["text"], "shuffled": summaries["shuffle0"],
               "shuffles": {key: {"values": (v := [summaries[s][key] for s in shuffles]), "mean": float(np.mean(v)),
                                  "sd": float(np.std(v, ddof=1))}
                            for key in summaries["text"] if key.startswith("pct")}}
        per_layer.append(row)
    layer0_diff = max(float(np.max(np.abs(layer0["text"] - layer0[s]))) for s in shuffles)
    results = {"corpus": source, "n_tokens": n_rows["text"], "max_dimensions": max_dim["text"],
               "window": size, "n_shuffles": config.n_shuffles,
               "absolute_positions": bool(model.adapter.absolute_positions), "sinks_dropped": sinks,
               "layer0_max_spectrum_difference": layer0_diff, "per_layer": per_layer}
    arrays = {f"spectrum_{t}": spectra[name][:, :max_dim[name]] for t, name in zip(TEXTS, ("text", "shuffle0"))}
    return StudyOutput(results, [], arrays=arrays, resolved={"window": size})


def claims(output: StudyOutput, config: EffectiveDimConfig, baseline: StudyOutput | None) -> list[dict]:
    """lamina's checks of the chapter's lesson (the write-up reports curves, no numbers)."""
    from .effective_dim_claims import effective_dim_claims

    return effective_dim_claims(output.results, config)


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline.results["per_layer"] if output.baseline is not None else None
    pl = r["per_layer"]
    layers = [p["layer"] for p in pl]
    keys = [k for k in pl[0]["text"] if k.startswith("n")]
    files = []
    fig, axes = new_figure(1, 2, size=(12, 4))
    for key, style in zip(keys, ("-", "--", ":")):
        pct = "pct" + key[1:]
        axes[0, 0].plot(layers, [p["text"][key] for p in pl], color="tab:blue", ls=style, label=f"text: {key[1:]}%")
        axes[0, 0].plot(layers, [p["shuffled"][key] for p in pl], color="tab:orange", ls=style,
                        label=f"shuffled: {key[1:]}%")
        axes[0, 1].plot(layers, [p["text"][pct] for p in pl], color="tab:blue", ls=style, label=f"text: {key[1:]}%")
        mean = np.array([p["shuffles"][pct]["mean"] for p in pl])
        sd = np.array([p["shuffles"][pct]["sd"] for p in pl])
        axes[0, 1].plot(layers, mean, color="tab:orange", ls=style, label=f"shuffled (mean of {r['n_shuffles']}): "
                                                                         f"{key[1:]}%")
        axes[0, 1].fill_between(layers, mean - 2 * sd, mean + 2 * sd, color="tab:orange", alpha=0.25, lw=0)
        if base is not None:
            axes[0, 1].plot(layers, [p["text"][pct] for p in base], color="grey", ls="--" if style == "-" else ":",
                            label=f"random-init text: {key[1:]}%")
    axes[0, 0].set(title="components to reach the variance", xlabel="layer (0 = embeddings)", ylabel="components")
    axes[0, 1].set(title=f"as % of the maximum ({r['max_dimensions']}); band: shuffles +-2 sd",
                   xlabel="layer (0 = embeddings)", ylabel="%")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Effective dimensionality: text vs token-shuffled copies "
                  "(band: +-2 sd over the seeded shuffles); grey: the random-init model's text"))

    fig, axes = new_figure(1, 2, size=(12, 4))
    for ax, name in zip(axes[0], TEXTS):
        spec = a[f"spectrum_{name}"]
        cum = np.cumsum(spec, axis=1)
        im = ax.imshow(cum, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"{name}: cumulative explained variance", xlabel="component", ylabel="layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    files.append((save(fig, folder, "spectra"), "Cumulative PCA spectra per layer"))
    return files
