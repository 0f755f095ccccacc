"""token-length from streaming reducers: the seeded draws made before the capture, the reducers per layer, and
the study's numbers from their states.

Per layer (width m, K = n_tokens / bootstrap_block runs, k = 2 + 2 n_shuffles covariates):

- ``Moments`` of every neuron with every covariate (length, log frequency, the shuffled lengths, the
  controls): float64, 8 m (k + 4) bytes -- r, partial r and the nulls;
- ``RunSums`` of length: per run the sums a Pearson r needs, 12 m K bytes in float32, written once to the
  store per chunk and dropped from memory (read back one chunk at a time for the bootstrap, whose 500
  resamples are then a (B, K) x (K, 3m) product);
- at the histogram block, ``KeepValues``: the (1 + n_bimodality_null) x bimodality_sample activations the
  bimodality tests draw (their positions depend only on the seed and the lengths, so they are drawn before
  the capture: exact), and ``KeepRows`` of at most ``block_rows`` rows (a seeded subset beyond that) for the
  activation histograms and their percentile edges.

At gpt-neo-1.3B shape (24 x 8192, 8192 tokens): 102 MB of co-moments, 302 MB of run sums (in memory only
until the chunk is written), 64 MiB of kept rows. At 10x the tokens, the co-moments and kept rows are the same
and the run sums in memory are still one chunk's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture.reduce import Histogram, KeepRows, Moments
from ..capture.reduce_runs import KeepValues, RunSums
from ..stats import bimodality_bic, fixed_histogram, partial_from_correlations

__all__ = ["control_covariates", "null_draws", "block_rows", "reducers", "reduced_statistics", "R_EDGES",
           "BLOCK_BYTES"]

R_EDGES = np.linspace(-0.8, 0.8, 81)
#: Default budget of the block's kept rows (float32) when ``block_rows`` is None: all 8192 tokens at the
#: bundled model's width (1536), 2048 rows at gpt-neo-1.3B's (8192).
BLOCK_BYTES = 64 * 1024**2


def control_covariates(x: np.ndarray, r_xz: float, n: int, seed: int) -> np.ndarray:
    """(n, T) seeded variables correlated ~r_xz with ``x`` (T,) and otherwise pure noise: controlling for one
    shrinks |r| only as much as any covariate that correlated with length would (the frequency claim's null)."""
    z = (x - x.mean()) / (x.std() or 1.0)
    noise = np.random.default_rng(seed).standard_normal((n, x.size))
    return r_xz * z + np.sqrt(max(0.0, 1 - r_xz**2)) * noise


def null_draws(lengths: np.ndarray, log_freq: np.ndarray, width: int, config) -> dict:
    """Every seeded draw of the study, made before the capture from the token lengths alone (in the order the
    all-in-RAM version drew them: shuffles, bootstrap counts, then the bimodality samples).

    Args:
        lengths, log_freq: (T,) per token.
        width: neurons per layer (the pooled values of a row set are ``rows x width``).
        config: a ``TokenLengthConfig``.

    Returns:
        ``{"r_len_freq", "covariates": (T, 2 + 2 n_shuffles), "runs": (T,) run labels, "weights": (B, K)
        resample counts, "samples": [(rows, cols) per bimodality test: the short tokens', then the random
        subsets'] or []}``.
    """
    r_len_freq = float(np.corrcoef(lengths, log_freq)[0, 1]) if np.ptp(lengths) and np.ptp(log_freq) else 0.0
    rng = np.random.default_rng(config.seed)
    shuffled = np.stack([rng.permutation(lengths) for _ in range(config.n_shuffles)])
    controls = control_covariates(lengths, r_len_freq, config.n_shuffles, config.seed + 1)
    n_runs = int(np.ceil(lengths.size / config.bootstrap_block))
    weights = rng.multinomial(n_runs, np.full(n_runs, 1 / n_runs), size=config.n_bootstrap).astype(np.float64)
    covariates = np.ascontiguousarray(np.concatenate([[lengths, log_freq], shuffled, controls]).T)
    short = lengths < np.median(lengths)
    samples = []
    if short.sum() * width >= 10:

        def pooled_sample(rows):  # what rng.choice(values[rows].ravel(), ...) picks, as (row, col) pairs
            n = rows.size * width
            flat = rng.choice(n, min(n, config.bimodality_sample), replace=False)
            return rows[flat // width], flat % width

        samples.append(pooled_sample(np.flatnonzero(short)))
        for _ in range(config.n_bimodality_null):
            samples.append(pooled_sample(rng.choice(short.size, int(short.sum()), replace=False)))
    runs = np.arange(lengths.size) // config.bootstrap_block
    return {"r_len_freq": r_len_freq, "covariates": covariates, "runs": runs, "weights": weights,
            "samples": samples}


def block_rows(n_tokens: int, width: int, config) -> np.ndarray | None:
    """Rows kept at the histogram block: all (None) up to the budget (``config.block_rows``, or as many float32
    rows as fit in :data:`BLOCK_BYTES`), else a seeded subset of that many."""
    budget = config.block_rows or max(100, BLOCK_BYTES // (4 * width))
    if n_tokens <= budget:
        return None
    return np.sort(np.random.default_rng([config.seed, 2]).choice(n_tokens, budget, replace=False))


def layer_reducers(draws: dict, at_block: bool, keep, *, spill: bool) -> list:
    """[Moments, RunSums(, KeepRows, KeepValues)] for one layer (see the module docstring)."""
    mine = [Moments(draws["covariates"]), RunSums(draws["covariates"][:, 0], draws["runs"], spill=spill)]
    if at_block:
        rows = np.concatenate([r for r, _ in draws["samples"]] or [np.zeros(0, np.int64)])
        cols = np.concatenate([c for _, c in draws["samples"]] or [np.zeros(0, np.int64)])
        mine += [KeepRows(where=keep), KeepValues(rows, cols)]
    return mine


def reducers(draws: dict, block: int, keep, site: str, n_layers: int) -> dict:
    """``{site of each block: its reducers}`` for ``capture_reduced(..., store=True)`` (run sums spilled)."""
    return {f"blocks.{layer}.{site}": layer_reducers(draws, layer == block, keep, spill=True)
            for layer in range(n_layers)}


def reduced_statistics(lengths, draws: dict, layers, block: int, keep, config, run_chunks=None) -> dict:
    """The study's numbers from the reducer states.

    Args:
        lengths: (T,) token lengths.
        draws: :func:`null_draws` of these lengths.
        layers: (layer index, [Moments, RunSums(, KeepRows, KeepValues)]) in depth order.
        block: the layer of the short/equal/long histograms and the bimodality test.
        keep: the block rows kept (None: all).
        config: the null and bootstrap settings.
        run_chunks: ``f(layer) -> iterable of RunSums chunks`` (spilled run sums read back from the store);
            None: the run sums in memory.

    Returns:
        JSON-able numbers (per-layer r summaries with CIs and nulls, bimodality) and ``"_arrays"`` (histograms,
        null draws (L, n_shuffles), bootstrap replicates (L, n_bootstrap)).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    r_len_freq, k = draws["r_len_freq"], config.n_shuffles
    per_layer, at_block = [], None
    arrays = {key: [] for key in ("r_hist", "partial_hist", "shuffled_mean_r", "shuffled_std_r",
                                  "control_mean_abs_partial_r", "boot_mean_r", "boot_std_r")}
    for layer, (moments, runs, *rest) in layers:
        rows = moments.correlations().cpu().numpy()  # (2 + 2k, m)
        r, r_freq, r_shuf, r_ctrl = rows[0], rows[1], rows[2:2 + k], rows[2 + k:]
        r_partial = partial_from_correlations(r, r_freq, r_len_freq)
        chunks = [runs.state_dict()] if run_chunks is None else run_chunks(layer)
        boot = RunSums.resampled_r(chunks, draws["weights"]).cpu().numpy()  # (B, m)
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
            "mean_abs_partial_r": float(np.abs(r_partial).mean()),
            "activation_std": float(moments.pooled(ddof=0)[1]),
            "mean_r_ci": np.quantile(arrays["boot_mean_r"][-1], [0.025, 0.975]).tolist(),
            "std_r_ci": np.quantile(arrays["boot_std_r"][-1], [0.025, 0.975]).tolist(),
            "shuffled_mean_r": _mean_sd(arrays["shuffled_mean_r"][-1]),
            "shuffled_std_r": _mean_sd(arrays["shuffled_std_r"][-1]),
        })
        if layer == block:
            at_block = rest
    kept, sampled = at_block
    values = kept.rows().cpu().numpy()  # (rows kept, m) as captured (float32): no float64 copy of the block
    median = float(np.median(lengths))
    block_lengths = lengths if keep is None else lengths[keep]
    masks = (block_lengths < median, block_lengths == median, block_lengths > median)
    lo, hi = np.percentile(values, [0.5, 99.5])
    act_edges = np.linspace(lo, hi, 121)
    hist = Histogram(act_edges, groups=np.select(masks[:2], [0, 1], 2))  # the reducer, once over the kept rows
    hist.update(torch.from_numpy(values), slice(0, values.shape[0]))
    density = hist.density().cpu().numpy()
    block_hist = np.stack([density[g] if m.any() else np.zeros(120) for g, m in enumerate(masks)])
    bimodal, bimodal_null = _bimodality(sampled.result().numpy(), draws["samples"], config)
    groups = {"short": lengths < median, "equal": lengths == median, "long": lengths > median}
    return {
        "n_neurons": int(values.shape[1]), "block": block, "block_rows": int(values.shape[0]),
        "length": {"median": median, "min": float(lengths.min()), "max": float(lengths.max()),
                   "counts": {g: int(m.sum()) for g, m in groups.items()}},
        "r_length_log_freq": r_len_freq, "short_token_bimodality": bimodal,
        "random_subset_bimodality": bimodal_null, "per_layer": per_layer,
        "_arrays": {**{key: np.stack(v) for key, v in arrays.items()}, "block_hist": block_hist,
                    "block_edges": act_edges},
    }


def _mean_sd(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std())}


def _bimodality(values: np.ndarray, samples: list, config) -> tuple:
    """The mixture test on the sampled pooled activations of the short tokens, and on random token subsets of
    the same size (pooling many neurons can make any token set multimodal): ``values`` holds every test's
    sample in turn (:func:`null_draws`)."""
    if not samples:
        return None, []
    bounds = np.cumsum([0] + [r.size for r, _ in samples])
    tests = [bimodality_bic(values[a:b], seed=config.seed) for a, b in zip(bounds[:-1], bounds[1:])]
    return tests[0], [{"delta_bic": b["delta_bic"], "ashman_d": b["ashman_d"], "bimodal": b["bimodal"]}
                      for b in tests[1:]]
