"""token-length: do MLP neurons encode how many characters a token has?

Protocol (STUDIES.md section 4): ~8192 corpus tokens run as windows of 512; for every token its length in
characters and the activation of every MLP expansion neuron in every block; per layer the Pearson r between
length and each neuron over tokens (a distribution of r over neurons, histogram edges linspace(-0.8, 0.8,
81)); at one block, activation histograms for tokens shorter than, equal to and longer than the median length.
Added to the write-up: the same measurement on a second model at relative depth (by default a random-init copy
of the same architecture, a real null), and token frequency as a confound (partial correlation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture import capture
from ..errors import LaminaError
from ..stats import bimodality_bic, correlate_columns, fixed_histogram, partial_from_correlations
from .base import Claim, StudyOutput, register, scaled_layer
from .texts import corpus_text

R_EDGES = np.linspace(-0.8, 0.8, 81)
SITES = ("mlp.hook_pre", "mlp.hook_post")
LENGTHS = ("decoded", "stripped")


@dataclass(frozen=True)
class TokenLengthConfig:
    """Settings of token-length.

    Attributes:
        n_tokens: corpus tokens analysed (the original: 8192 = 16 x 512).
        seq_len: tokens per window (capped at the model's context length).
        skip_tokens: corpus tokens skipped at the start; the windows are spread evenly over the rest.
        site: ``"mlp.hook_pre"`` (the expansion before the nonlinearity; likely the original's choice) or
            ``"mlp.hook_post"`` (after it; for gated MLPs ``act(gate) * up``).
        length: ``"decoded"``: ``len(tokenizer.decode([id]))``, which counts a leading space (" the" = 4, as in
            the original); ``"stripped"``: without surrounding white space. WordPiece's ``##`` never counts.
        block: the block of the short/equal/long histograms (None: block 4 of 12 scaled to the model).
        compare: a second model measured the same way and drawn beside at relative depth: ``"random"`` (a
            random-init copy of the same architecture: a null), a model spec, or ``"none"``.
        bimodality_sample: pooled short-token activations (seeded subsample) for the bimodality test.
        seed: seed of the subsample and of the random-init copy.
    """

    n_tokens: int = 8192
    seq_len: int = 512
    skip_tokens: int = 1000
    site: str = "mlp.hook_pre"
    length: str = "decoded"
    block: int | None = None
    compare: str | None = "random"
    bimodality_sample: int = 20000
    seed: int = 0

    def __post_init__(self):
        if self.n_tokens < 100 or self.seq_len < 8 or self.skip_tokens < 0:
            raise LaminaError("n_tokens must be >= 100, seq_len >= 8 and skip_tokens >= 0")
        if self.site not in SITES:
            raise LaminaError(f"site must be one of {', '.join(SITES)} (got {self.site!r})")
        if self.length not in LENGTHS:
            raise LaminaError(f"length must be one of {', '.join(LENGTHS)} (got {self.length!r})")
        if self.bimodality_sample < 100:
            raise LaminaError("bimodality_sample must be >= 100")


def token_lengths(model, token_ids, how: str = "decoded") -> np.ndarray:
    """Length in characters of each token as the model's tokenizer decodes it (see ``TokenLengthConfig``)."""
    ids = np.asarray(token_ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    lengths = []
    for i in unique.tolist():
        s = model.tokenizer.decode([i])
        if s.startswith("##"):  # WordPiece continuation marker, not a character of the text
            s = s[2:]
        lengths.append(len(s.strip() if how == "stripped" else s))
    return np.asarray(lengths, dtype=np.float64)[inverse]


def corpus_windows(model, text: str, config: TokenLengthConfig) -> tuple[list[list[int]], np.ndarray, int]:
    """Windows of token ids spread evenly over the corpus, and the corpus token counts (a frequency source).

    Returns:
        (windows, counts over the vocabulary, the window length used).
    """
    ids = np.asarray(model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    seq = min(config.seq_len, model.context_length or config.seq_len)
    n_windows = int(np.ceil(config.n_tokens / seq))
    usable = ids.size - config.skip_tokens
    if usable < config.n_tokens:
        raise LaminaError(f"the corpus has {max(usable, 0)} tokens after skipping {config.skip_tokens}; "
                          f"n_tokens={config.n_tokens} needs more: pass a larger --corpus or lower n_tokens")
    sizes = [seq] * (n_windows - 1) + [config.n_tokens - seq * (n_windows - 1)]
    starts = np.linspace(config.skip_tokens, ids.size - seq, n_windows).astype(int)
    starts = np.minimum(starts, ids.size - np.asarray(sizes))
    if n_windows > 1 and np.any(np.diff(starts) < sizes[:-1]):  # too little room to spread: consecutive
        starts = config.skip_tokens + np.concatenate([[0], np.cumsum(sizes[:-1])])
    windows = [ids[s:s + n].tolist() for s, n in zip(starts, sizes)]
    counts = np.bincount(ids, minlength=int(ids.max()) + 1)
    return windows, counts, seq


def measure(model, text: str, config: TokenLengthConfig) -> dict:
    """Every number of the study for one model (per-layer r distributions, block histograms, bimodality)."""
    windows, counts, seq = corpus_windows(model, text, config)
    flat = np.concatenate(windows)
    lengths = token_lengths(model, flat, config.length)
    log_freq = np.log10(counts[flat] / counts.sum())
    r_len_freq = float(np.corrcoef(lengths, log_freq)[0, 1])
    acts = capture(model, windows, f"blocks.*.{config.site}", cache=True, add_special_tokens=False)
    layers = acts.layers(config.site)
    block = config.block if config.block is not None else scaled_layer(4, 12, len(layers))
    if not 0 <= block < len(layers):
        raise LaminaError(f"block {block} does not exist; {model.name} has blocks 0-{len(layers) - 1}")
    median = float(np.median(lengths))
    per_layer, r_hist, partial_hist = [], [], []
    block_values = None
    for layer in layers:
        A = acts[f"blocks.{layer}.{config.site}"].numpy()  # (n_tokens, n_neurons), float32 as captured
        r, r_freq = correlate_columns(np.stack([lengths, log_freq]), A)  # float64 inside
        r_partial = partial_from_correlations(r, r_freq, r_len_freq)
        r_hist.append(fixed_histogram(r, R_EDGES))
        partial_hist.append(fixed_histogram(r_partial, R_EDGES))
        per_layer.append({
            "layer": layer, "mean_r": float(r.mean()), "median_r": float(np.median(r)), "std_r": float(r.std()),
            "fraction_negative": float(np.mean(r < 0)), "mean_abs_r": float(np.abs(r).mean()),
            "mean_r_log_freq": float(r_freq.mean()), "mean_partial_r": float(r_partial.mean()),
            "mean_abs_partial_r": float(np.abs(r_partial).mean()), "activation_std": float(A.std(dtype=np.float64)),
        })
        if layer == block:
            block_values = A.astype(np.float64)
    groups = {"short": lengths < median, "equal": lengths == median, "long": lengths > median}
    lo, hi = np.percentile(block_values, [0.5, 99.5])
    act_edges = np.linspace(lo, hi, 121)
    block_hist = np.stack([fixed_histogram(block_values[m].ravel(), act_edges, density=True) if m.any()
                           else np.zeros(120) for m in groups.values()])
    rng = np.random.default_rng(config.seed)
    short = block_values[groups["short"]].ravel()
    bimodal = bimodality_bic(rng.choice(short, min(short.size, config.bimodality_sample), replace=False),
                             seed=config.seed) if short.size >= 10 else None
    return {
        "model": model.summary(), "n_tokens": int(flat.size), "n_windows": len(windows), "seq_len": seq,
        "n_neurons": int(block_values.shape[1]), "block": block,
        "length": {"median": median, "min": float(lengths.min()), "max": float(lengths.max()),
                   "counts": {g: int(m.sum()) for g, m in groups.items()}},
        "r_length_log_freq": r_len_freq, "short_token_bimodality": bimodal, "per_layer": per_layer,
        "_arrays": {"r_hist": np.stack(r_hist), "partial_hist": np.stack(partial_hist),
                    "block_hist": block_hist, "block_edges": act_edges},
    }


def _comparison_model(model, spec: str, seed: int):
    from ..capture import random_init_copy
    from .runner import load_cached

    if spec == "random":
        return random_init_copy(model, seed=seed)
    return load_cached(spec, model.device, None)


@register("token-length", "MLP neuron activations vs token length in characters, with a frequency control and "
          "a random-init null", TokenLengthConfig)
def compute(model, config: TokenLengthConfig, inputs) -> StudyOutput:
    text, source = corpus_text(inputs.get("corpus"))
    main = measure(model, text, config)
    arrays = {k: v for k, v in main.pop("_arrays").items()}
    results = {"corpus": source, "frequency_source": "token counts in the whole corpus (log10 relative "
               "frequency)", **main}
    compare = None if config.compare in (None, "", "none") else config.compare
    if compare:
        other = _comparison_model(model, compare, config.seed)
        other_block = scaled_layer(main["block"], model.n_layers, other.n_layers)
        second = measure(other, text, _with_block(config, other_block))
        arrays.update({f"compare_{k}": v for k, v in second.pop("_arrays").items()})
        results["comparison"] = second
    return StudyOutput(results, _claims(results, compare), arrays=arrays,
                       resolved={"block": main["block"], "seq_len": main["seq_len"], "compare": compare})


def _with_block(config: TokenLengthConfig, block: int) -> TokenLengthConfig:
    import dataclasses

    return dataclasses.replace(config, block=block)


def _spread(per_layer: list[dict]) -> tuple[float, float]:
    """Mean std of r over the last quarter of layers, and over the middle half."""
    std = np.array([p["std_r"] for p in per_layer])
    n = std.size
    q = max(1, n // 4)
    middle = std[q:n - q] if n - 2 * q > 0 else std
    return float(std[-q:].mean()), float(middle.mean())


def _claims(r: dict, compare: str | None) -> list[dict]:
    pl = r["per_layer"]
    means = np.array([p["mean_r"] for p in pl])
    frac_neg = float(np.mean(means < 0))
    last, middle = _spread(pl)
    bim = r["short_token_bimodality"]
    abs_r = float(np.mean([p["mean_abs_r"] for p in pl]))
    abs_partial = float(np.mean([p["mean_abs_partial_r"] for p in pl]))
    claims = [
        Claim("Most layers show a slightly negative mean r between token length and activation",
              "mean r < 0 (small) in most layers",
              {"fraction_of_layers_negative": frac_neg, "mean_r_over_layers": float(means.mean())},
              frac_neg > 0.5 and abs(float(means.mean())) < 0.1),
        Claim("The first layer's r is positive", "mean r > 0 at layer 0", {"mean_r_layer0": float(means[0])},
              means[0] > 0),
        Claim("The distributions of r compress in the last layers", "narrower r histograms at the end",
              {"std_r_last_quarter": last, "std_r_middle_half": middle}, last < middle),
        Claim(f"Activations of short tokens are bimodal (block {r['block']})", "two modes (bimodal at 1.3B)",
              None if bim is None else {"delta_bic": bim["delta_bic"], "ashman_d": bim["ashman_d"],
                                        "means": bim["means"]},
              None if bim is None else bim["bimodal"]),
        Claim("Token frequency is a confound: controlling for log frequency shrinks the length correlations",
              "|partial r| < |r|", {"r_length_log_freq": r["r_length_log_freq"], "mean_abs_r": abs_r,
                                   "mean_abs_partial_r": abs_partial}, abs_partial < abs_r),
    ]
    if compare == "random" and "comparison" in r:
        null = r["comparison"]["per_layer"]
        trained_std = float(np.mean([p["std_r"] for p in pl]))
        null_std = float(np.mean([p["std_r"] for p in null]))
        claims.append(Claim("The length tuning is learned: r spreads wider than in a random-init copy (a null "
                            "the write-up lacked)", "trained > random-init",
                            {"mean_std_r_trained": trained_std, "mean_std_r_random_init": null_std},
                            trained_std > null_std, source="lamina"))
    return claims


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    import matplotlib

    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    models = [("", r)] + ([("compare_", r["comparison"])] if "comparison" in r else [])
    centres = (R_EDGES[:-1] + R_EDGES[1:]) / 2
    files = []
    fig, axes = new_figure(1, len(models), size=(6.5 * len(models), 4))
    for ax, (prefix, res) in zip(axes[0], models):
        hist = a[f"{prefix}r_hist"]
        cmap = matplotlib.colormaps["viridis"]
        for layer, row in enumerate(hist):
            ax.plot(centres, row, color=cmap(layer / max(1, len(hist) - 1)), lw=0.9)
        ax.axvline(0, color="k", lw=0.5)
        ax.set(title=f"{res['model']['name']}: r(length, neuron), one line per layer", xlabel="r",
               ylabel="neurons")
    files.append((save(fig, folder, "r_lines"), "Histogram of r per layer (dark = early, yellow = late)"))

    fig, axes = new_figure(1, len(models), size=(6.5 * len(models), 4))
    for ax, (prefix, res) in zip(axes[0], models):
        hist = a[f"{prefix}r_hist"]
        im = ax.imshow(hist / hist.sum(axis=1, keepdims=True), aspect="auto", cmap="magma", origin="lower",
                       extent=(R_EDGES[0], R_EDGES[-1], 0, 1))
        ax.set(title=f"{res['model']['name']} ({len(hist)} layers)", xlabel="r", ylabel="relative depth")
        fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of neurons")
    files.append((save(fig, folder, "r_heatmap"), "Layer x r-bin heatmaps, side by side at relative depth"))

    fig, axes = new_figure(1, 2, size=(13, 4))
    for prefix, res in models:
        pl = res["per_layer"]
        depth = np.linspace(0, 1, len(pl))
        name = res["model"]["name"]
        line = axes[0, 0].plot(depth, [p["mean_r"] for p in pl], label=f"{name}: r")[0]
        axes[0, 0].plot(depth, [p["mean_partial_r"] for p in pl], ls="--", color=line.get_color(),
                        label=f"{name}: partial r | log freq")
        axes[0, 0].plot(depth, [p["mean_r_log_freq"] for p in pl], ls=":", color=line.get_color(),
                        label=f"{name}: r with log freq")
        axes[0, 1].plot(depth, [p["std_r"] for p in pl], color=line.get_color(), label=name)
    axes[0, 0].axhline(0, color="k", lw=0.5)
    axes[0, 0].set(title="mean over neurons", xlabel="relative depth")
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].set(title="spread of r over neurons (std)", xlabel="relative depth")
    axes[0, 1].legend(fontsize=7)
    files.append((save(fig, folder, "per_layer", svg=True), "Length and frequency correlations through depth"))

    fig, axes = new_figure(1, len(models), size=(6.5 * len(models), 4))
    for ax, (prefix, res) in zip(axes[0], models):
        edges = a[f"{prefix}block_edges"]
        mid = (edges[:-1] + edges[1:]) / 2
        median = res["length"]["median"]
        for row, label in zip(a[f"{prefix}block_hist"], (f"shorter than {median:g}", f"= {median:g}",
                                                         f"longer than {median:g}")):
            ax.plot(mid, row, label=label)
        ax.set(title=f"{res['model']['name']}: block {res['block']} activations", xlabel="activation",
               ylabel="density", yscale="log")
        ax.legend(fontsize=7)
    files.append((save(fig, folder, "block_histograms"), "Pooled activations of short, median-length and long "
                  "tokens at the chosen block"))
    return files
