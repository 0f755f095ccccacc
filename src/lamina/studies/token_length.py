"""token-length: do MLP neurons encode how many characters a token has?

Protocol (STUDIES.md section 4): ~8192 corpus tokens run as windows of 512; for every token its length in
characters and the activation of every MLP expansion neuron in every block; per layer the Pearson r between
length and each neuron over tokens (a distribution of r over neurons, histogram edges linspace(-0.8, 0.8,
81)); at one block, activation histograms for tokens shorter than, equal to and longer than the median length.
Added to the write-up: token frequency as a confound (partial correlation); nulls (issue #11): the same r with
token lengths shuffled across tokens (several seeded shuffles), a block bootstrap over runs of tokens for the
per-layer curves, a control covariate as correlated with length as frequency but otherwise random, random
token subsets for the bimodality test, and the framework's random-init copy of the model (``baseline``).

Computed from online reducers (``capture_reduced(..., store=True)``, resumable): per layer the co-moments of
every neuron with every covariate (length, log frequency, the shuffled lengths, the controls), the per-run sums
the block bootstrap resamples, and at the histogram block the sampled values of the bimodality tests and its
rows (all, or a seeded subset beyond ``block_rows``): see :mod:`lamina.studies.token_length_reduce`.
Optionally a second model measured the same way (``compare``) drawn beside at relative depth.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

import torch

from ..capture.reduced import capture_reduced
from ..capture.store import stored_rows
from ..errors import LaminaError
from .base import StudyOutput, register, scaled_layer
from .token_length_reduce import (R_EDGES, block_rows, control_covariates, layer_reducers, null_draws,  # noqa: F401
                                  reduced_statistics, reducers)
from .texts import corpus_text
from .token_length_claims import claims  # noqa: F401 - the framework looks it up in this module

#: Tokens per forward pass: the forward's own temporaries grow with the batch (at gpt-neo-1.3B shape ~0.4 GB
#: for 1024 tokens, several times that for lamina's default 4096), at about the same speed on a CPU.
BATCH_TOKENS = 1024
#: Tokens per checkpoint of the store: the co-moments (~100 MB at gpt-neo-1.3B shape) are rewritten at each,
#: and the run sums of one chunk are held in memory until it is written (~300 MB there for 8192 tokens).
CHECKPOINT_TOKENS = 8192
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
        block_rows: block rows kept for its activation histograms: every token up to this many, else a seeded
            subset of this size (memory stays bounded at any corpus size); None: as many as fit in 64 MiB of
            float32. The bimodality tests always draw from every token.
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
    block_rows: int | None = None
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
        if self.block_rows is not None:
            check.at_least("block_rows", self.block_rows, 100)
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


def length_statistics(lengths, log_freq, layers, block: int, config: "TokenLengthConfig") -> dict:
    """The study's numbers from token lengths, log frequencies and activations (pure: arrays in, numbers out):
    each layer's activations go through the reducers of a capture (:func:`reducers`) in one update.

    Args:
        lengths, log_freq: (T,) per token.
        layers: iterable of (layer index, (T, m) activations), in depth order.
        block: the layer of the short/equal/long histograms and the bimodality test.
        config: the null and bootstrap settings.

    Returns:
        As :func:`reduced_statistics`.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    draws = keep = None
    fed = []
    for layer, raw in layers:
        x = torch.from_numpy(np.ascontiguousarray(raw))
        if draws is None:
            draws = null_draws(lengths, np.asarray(log_freq, dtype=np.float64), x.shape[1], config)
            keep = block_rows(lengths.size, x.shape[1], config)
        mine = layer_reducers(draws, layer == block, keep, spill=False)
        for reducer in mine:
            reducer.bind(x.shape[0], x.device)
            reducer.update(x, slice(0, x.shape[0]))
        fed.append((layer, mine))
    return reduced_statistics(lengths, draws, fed, block, keep, config)


def measure(model, text: str, config: TokenLengthConfig) -> dict:
    """Every number of the study for one model: corpus windows, token lengths and frequencies, the reduced
    capture (resumable store), then :func:`reduced_statistics` (run sums read back from the store)."""
    windows, counts, seq = corpus_windows(model, text, config)
    flat = np.concatenate(windows)
    lengths = token_lengths(model, flat, config.length)
    log_freq = np.log10(counts[flat] / counts.sum())
    n_layers = model.n_layers
    block = config.block if config.block is not None else scaled_layer(4, 12, n_layers)
    if not 0 <= block < n_layers:
        raise LaminaError(f"block {block} does not exist; {model.name} has blocks 0-{n_layers - 1}")
    width = model.site_widths()[f"blocks.{block}.{config.site}"]
    draws = null_draws(lengths, log_freq, width, config)
    keep = block_rows(flat.size, width, config)
    batch = max(1, BATCH_TOKENS // seq)
    red = capture_reduced(model, windows, reducers(draws, block, keep, config.site, n_layers),
                          add_special_tokens=False, store=True, batch_size=batch,
                          chunk_batches=max(1, CHECKPOINT_TOKENS // (batch * seq)))
    order = [(tuple(spec["sites"]), spec["type"]) for spec in red.provenance["reducers"]]
    folder = red.provenance["store"]

    def run_chunks(layer):  # the spilled run sums of one layer, one stored chunk at a time
        return stored_rows(folder, order.index(((f"blocks.{layer}.{config.site}",), "RunSums")))

    layers = [(layer, red[f"blocks.{layer}.{config.site}"]) for layer in red.layers(config.site)]
    stats = reduced_statistics(lengths, draws, layers, block, keep, config, run_chunks)
    return {"model": model.summary(), "n_tokens": int(flat.size), "n_windows": len(windows), "seq_len": seq,
            **stats}


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
