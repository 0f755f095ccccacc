"""token-length: do MLP neurons encode how many characters a token has?

Protocol (STUDIES.md section 4): ~8192 corpus tokens run as windows of 512; for every token its length in
characters and the activation of every MLP expansion neuron in every block; per layer the Pearson r between
length and each neuron over tokens (a distribution of r over neurons, histogram edges linspace(-0.8, 0.8,
81)); at one block, activation histograms for tokens shorter than, equal to and longer than the median length.
Added to the write-up: token frequency as a confound (partial correlation); nulls (issue #11): the same r with
token lengths shuffled across tokens (several seeded shuffles), a block bootstrap over runs of tokens for the
per-layer curves, a control covariate as correlated with length as frequency but otherwise random, random
token subsets for the bimodality test, and the framework's random-init copy of the model (``baseline``).
Optionally a second model measured the same way (``compare``) drawn beside at relative depth.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..capture import capture
from ..errors import LaminaError
from ..stats import bimodality_bic, fixed_histogram, partial_from_correlations
from .base import StudyOutput, register, scaled_layer
from .texts import corpus_text
from .token_length_claims import claims  # noqa: F401 - the framework looks it up in this module

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
        compare: a second model measured the same way and drawn beside at relative depth: a model spec,
            ``"random"`` (a random-init copy built by the study: only useful with ``--baseline none``, since the
            framework's random-init baseline is the same null) or ``"none"``.
        bimodality_sample: pooled short-token activations (seeded subsample) for the bimodality test.
        n_shuffles: seeded shuffles of the token lengths (null of r) and draws of the frequency control.
        n_bootstrap: bootstrap resamples of the runs of ``bootstrap_block`` consecutive tokens.
        bootstrap_block: tokens per resampled run (neighbouring tokens are not independent).
        n_bimodality_null: random token subsets (as many tokens as the short ones) for the bimodality null.
        alpha: significance level of the claims' tests.
        seed: seed of the subsample, shuffles, bootstrap and of a ``compare="random"`` copy.
    """

    n_tokens: int = 8192
    seq_len: int = 512
    skip_tokens: int = 1000
    site: str = "mlp.hook_pre"
    length: str = "decoded"
    block: int | None = None
    compare: str | None = None
    bimodality_sample: int = 20000
    n_shuffles: int = 30
    n_bootstrap: int = 500
    bootstrap_block: int = 64
    n_bimodality_null: int = 5
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        check.at_least("n_tokens", self.n_tokens, 100)
        check.at_least("seq_len", self.seq_len, 8)
        check.at_least("skip_tokens", self.skip_tokens, 0)
        check.choice("site", self.site, SITES)
        check.choice("length", self.length, LENGTHS)
        check.layer("block", self.block)
        check.at_least("bimodality_sample", self.bimodality_sample, 100)
        check.at_least("n_shuffles", self.n_shuffles, 2)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% percentile CI needs ~100 resamples
        check.at_least("bootstrap_block", self.bootstrap_block, 1)
        check.at_least("n_bimodality_null", self.n_bimodality_null, 2)
        check.between("alpha", self.alpha, 0, 1)
        check.seed("seed", self.seed)
        if self.compare not in (None, "", "none", "random"):
            from ..capture.model_checks import check_spec

            check_spec(self.compare)  # a missing or damaged comparison model: before the main one loads

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("block", self.block, model.n_layers, model.name)


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


def control_covariates(x: np.ndarray, r_xz: float, n: int, seed: int) -> np.ndarray:
    """(n, T) seeded variables correlated ~r_xz with ``x`` (T,) and otherwise pure noise: controlling for one
    shrinks |r| only as much as any covariate that correlated with length would (the frequency claim's null)."""
    z = (x - x.mean()) / (x.std() or 1.0)
    noise = np.random.default_rng(seed).standard_normal((n, x.size))
    return r_xz * z + np.sqrt(max(0.0, 1 - r_xz**2)) * noise


def block_sums(x: np.ndarray, Y: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """Per run of ``block`` consecutive tokens: the sums a Pearson r needs (x: (T,), Y: (T, m), both centred).

    Returns:
        ``{"n": (K,), "x": (K,), "xx": (K,), "y": (K, m), "yy": (K, m), "xy": (K, m)}`` for K = ceil(T / block)
        (the last run holds the remainder).
    """
    full = (x.size // block) * block
    parts = [(x[:full].reshape(-1, block), Y[:full].reshape(-1, block, Y.shape[1]))]
    if full < x.size:
        parts.append((x[None, full:], Y[None, full:]))
    out = {k: [] for k in ("n", "x", "xx", "y", "yy", "xy")}
    for xs, ys in parts:
        out["n"].append(np.full(xs.shape[0], xs.shape[1], dtype=np.float64))
        out["x"].append(xs.sum(1))
        out["xx"].append(np.einsum("kb,kb->k", xs, xs))
        out["y"].append(ys.sum(1))
        out["yy"].append(np.einsum("kbm,kbm->km", ys, ys))
        out["xy"].append(np.einsum("kb,kbm->km", xs, ys))
    return {k: np.concatenate(v) for k, v in out.items()}


def bootstrap_r(sums: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Pearson r per column for each resample of the runs (weights: (B, K) counts) -> (B, m)."""
    n, sx, sxx = (weights @ sums[k] for k in ("n", "x", "xx"))
    sy, syy, sxy = (weights @ sums[k] for k in ("y", "yy", "xy"))
    cov = sxy - (sx / n)[:, None] * sy
    vx = sxx - sx**2 / n
    vy = syy - sy**2 / n[:, None]
    den = np.sqrt(np.maximum(vx[:, None] * vy, 0.0))
    return np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0)


def _correlate_centred(unit_x: np.ndarray, A: np.ndarray, sum_sq: np.ndarray) -> np.ndarray:
    """Pearson r of k centred unit-norm variables (k, T) with every column of the centred A (T, m) whose sums
    of squares are ``sum_sq`` (m,): ``unit_x @ A / sqrt(sum_sq)`` -> (k, m); constant columns give 0."""
    return np.clip((unit_x @ A) / np.where(sum_sq > 0, np.sqrt(sum_sq), np.inf), -1.0, 1.0)


def measure(model, text: str, config: TokenLengthConfig) -> dict:
    """Every number of the study for one model: corpus windows, token lengths and frequencies, the capture, then
    :func:`length_statistics`."""
    windows, counts, seq = corpus_windows(model, text, config)
    flat = np.concatenate(windows)
    lengths = token_lengths(model, flat, config.length)
    log_freq = np.log10(counts[flat] / counts.sum())
    acts = capture(model, windows, f"blocks.*.{config.site}", cache=True, add_special_tokens=False)
    layers = acts.layers(config.site)
    block = config.block if config.block is not None else scaled_layer(4, 12, len(layers))
    if not 0 <= block < len(layers):
        raise LaminaError(f"block {block} does not exist; {model.name} has blocks 0-{len(layers) - 1}")
    stats = length_statistics(lengths, log_freq, ((layer, acts[f"blocks.{layer}.{config.site}"].numpy())
                                                  for layer in layers), block, config)
    return {"model": model.summary(), "n_tokens": int(flat.size), "n_windows": len(windows), "seq_len": seq,
            **stats}


def length_statistics(lengths, log_freq, layers, block: int, config: TokenLengthConfig) -> dict:
    """The study's numbers from token lengths, log frequencies and activations (pure: arrays in, numbers out).

    Args:
        lengths, log_freq: (T,) per token.
        layers: iterable of (layer index, (T, m) activations), in depth order.
        block: the layer of the short/equal/long histograms and the bimodality test.
        config: the null and bootstrap settings.

    Returns:
        JSON-able numbers (per-layer r summaries with CIs and nulls, bimodality) and ``"_arrays"`` (histograms,
        null draws (L, n_shuffles), bootstrap replicates (L, n_bootstrap)).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    log_freq = np.asarray(log_freq, dtype=np.float64)
    r_len_freq = float(np.corrcoef(lengths, log_freq)[0, 1]) if np.ptp(lengths) and np.ptp(log_freq) else 0.0
    rng = np.random.default_rng(config.seed)
    shuffled = np.stack([rng.permutation(lengths) for _ in range(config.n_shuffles)])
    controls = control_covariates(lengths, r_len_freq, config.n_shuffles, config.seed + 1)
    n_blocks = int(np.ceil(lengths.size / config.bootstrap_block))
    weights = rng.multinomial(n_blocks, np.full(n_blocks, 1 / n_blocks), size=config.n_bootstrap).astype(np.float64)
    variables = np.concatenate([[lengths, log_freq], shuffled, controls])
    variables = variables - variables.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(variables, axis=1, keepdims=True)
    variables = variables / np.where(norm > 0, norm, np.inf)  # centred, unit norm (a constant row stays 0)
    x_centred = lengths - lengths.mean()
    k = config.n_shuffles
    per_layer, block_values = [], None
    arrays = {key: [] for key in ("r_hist", "partial_hist", "shuffled_mean_r", "shuffled_std_r",
                                  "control_mean_abs_partial_r", "boot_mean_r", "boot_std_r")}
    for layer, raw in layers:
        means = raw.mean(axis=0, dtype=np.float64)
        A = raw - means  # centred float64 (r is unchanged by the shift)
        sums = block_sums(x_centred, A, config.bootstrap_block)
        rows = _correlate_centred(variables, A, sums["yy"].sum(axis=0))
        r, r_freq, r_shuf, r_ctrl = rows[0], rows[1], rows[2:2 + k], rows[2 + k:]
        r_partial = partial_from_correlations(r, r_freq, r_len_freq)
        boot = bootstrap_r(sums, weights)  # (B, m)
        activation_var = (sums["yy"].sum() + A.shape[0] * np.sum((means - means.mean()) ** 2)) / A.size
        for key, value in (("r_hist", fixed_histogram(r, R_EDGES)),
                           ("partial_hist", fixed_histogram(r_partial, R_EDGES)),
                           ("shuffled_mean_r", r_shuf.mean(axis=1)), ("shuffled_std_r", r_shuf.std(axis=1)),
                           ("control_mean_abs_partial_r",
                            np.abs(partial_from_correlations(r, r_ctrl, r_len_freq)).mean(axis=1)),
                           ("boot_mean_r", boot.mean(axis=1)), ("boot_std_r", boot.std(axis=1))):
            arrays[key].append(value)
        per_layer.append({
            "layer": layer, "mean_r": float(r.mean()), "median_r": float(np.median(r)), "std_r": float(r.std()),
            "fraction_negative": float(np.mean(r < 0)), "mean_abs_r": float(np.abs(r).mean()),
            "mean_r_log_freq": float(r_freq.mean()), "mean_partial_r": float(r_partial.mean()),
            "mean_abs_partial_r": float(np.abs(r_partial).mean()), "activation_std": float(np.sqrt(activation_var)),
            "mean_r_ci": np.quantile(arrays["boot_mean_r"][-1], [0.025, 0.975]).tolist(),
            "std_r_ci": np.quantile(arrays["boot_std_r"][-1], [0.025, 0.975]).tolist(),
            "shuffled_mean_r": _mean_sd(arrays["shuffled_mean_r"][-1]),
            "shuffled_std_r": _mean_sd(arrays["shuffled_std_r"][-1]),
        })
        if layer == block:
            block_values = raw.astype(np.float64)
    median = float(np.median(lengths))
    groups = {"short": lengths < median, "equal": lengths == median, "long": lengths > median}
    lo, hi = np.percentile(block_values, [0.5, 99.5])
    act_edges = np.linspace(lo, hi, 121)
    block_hist = np.stack([fixed_histogram(block_values[m].ravel(), act_edges, density=True) if m.any()
                           else np.zeros(120) for m in groups.values()])
    bimodal, bimodal_null = _bimodality(block_values, groups["short"], config, rng)
    return {
        "n_neurons": int(block_values.shape[1]), "block": block,
        "length": {"median": median, "min": float(lengths.min()), "max": float(lengths.max()),
                   "counts": {g: int(m.sum()) for g, m in groups.items()}},
        "r_length_log_freq": r_len_freq, "short_token_bimodality": bimodal,
        "random_subset_bimodality": bimodal_null, "per_layer": per_layer,
        "_arrays": {**{key: np.stack(v) for key, v in arrays.items()}, "block_hist": block_hist,
                    "block_edges": act_edges},
    }


def _mean_sd(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std())}


def _bimodality(values: np.ndarray, short: np.ndarray, config: TokenLengthConfig, rng) -> tuple:
    """The mixture test on the short tokens' pooled activations, and on random token subsets of the same size
    (pooling many neurons can make any token set multimodal)."""
    if short.sum() * values.shape[1] < 10:
        return None, []

    def test(rows):
        pooled = values[rows].ravel()
        return bimodality_bic(rng.choice(pooled, min(pooled.size, config.bimodality_sample), replace=False),
                              seed=config.seed)

    observed = test(short)
    null = [test(rng.choice(short.size, int(short.sum()), replace=False)) for _ in range(config.n_bimodality_null)]
    return observed, [{"delta_bic": b["delta_bic"], "ashman_d": b["ashman_d"], "bimodal": b["bimodal"]} for b in null]


def _comparison_model(model, spec: str, seed: int):
    from ..capture import random_init_copy
    from .runner import load_cached

    if spec == "random":
        return random_init_copy(model, seed=seed)
    return load_cached(spec, model.device, None)


@register("token-length", "MLP neuron activations vs token length in characters, with a frequency control, "
          "shuffled-length and random-init nulls", TokenLengthConfig)
def compute(model, config: TokenLengthConfig, inputs) -> StudyOutput:
    text, source = corpus_text(inputs.get("corpus"))
    main = measure(model, text, config)
    arrays = {k: v for k, v in main.pop("_arrays").items()}
    results = {"corpus": source, "frequency_source": "token counts in the whole corpus (log10 relative "
               "frequency)", **main}
    compare = None if config.compare in (None, "", "none") else config.compare
    if compare and model.provenance.get("source") == "random-init":
        compare = None  # the framework's baseline run: its comparison would repeat the main run's
    if compare:
        other = _comparison_model(model, compare, config.seed)
        other_block = scaled_layer(main["block"], model.n_layers, other.n_layers)
        second = measure(other, text, dataclasses.replace(config, block=other_block))
        arrays.update({f"compare_{k}": v for k, v in second.pop("_arrays").items()})
        results["comparison"] = second
    return StudyOutput(results, [], arrays=arrays,
                       resolved={"block": main["block"], "seq_len": main["seq_len"], "compare": compare})


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from .token_length_figures import draw

    return draw(output, folder, R_EDGES)
