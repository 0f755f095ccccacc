"""token-length computed from streaming reducers: parity with the all-in-RAM computation it replaced, the
kept-rows subset beyond ``block_rows``, and a killed run that resumes to identical results."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lamina import capture
from lamina.stats import bimodality_bic, fixed_histogram, partial_from_correlations
from lamina.studies.texts import corpus_text
from lamina.studies.token_length import (R_EDGES, TokenLengthConfig, control_covariates, corpus_windows, measure,
                                         token_lengths)


# -- the reference: the all-in-RAM computation the study used before the reducers (verbatim) ---------------
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


def length_statistics(lengths, log_freq, layers, block: int, config) -> dict:
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
    bimodal, bimodal_null = _ref_bimodality(block_values, groups["short"], config, rng)
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


def _ref_bimodality(values: np.ndarray, short: np.ndarray, config, rng) -> tuple:
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




def reference(model, config):
    """The old path: a plain capture of every block (host RAM, float32), then the all-in-RAM statistics."""
    windows, counts, seq = corpus_windows(model, corpus_text()[0], config)
    flat = np.concatenate(windows)
    lengths = token_lengths(model, flat, config.length)
    log_freq = np.log10(counts[flat] / counts.sum())
    acts = capture(model, windows, f"blocks.*.{config.site}", add_special_tokens=False)
    block = config.block
    return length_statistics(lengths, log_freq, ((layer, acts[f"blocks.{layer}.{config.site}"].numpy())
                                                 for layer in acts.layers(config.site)), block, config)


def _close(new, old, path=""):
    """Every number of ``old`` equals ``new`` (nested dicts/lists), to the tolerances of :func:`_tol`."""
    if isinstance(old, dict):
        assert set(old) <= set(new), path
        for key in old:
            _close(new[key], old[key], f"{path}.{key}")
    elif isinstance(old, (list, tuple)):
        assert len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old)):
            _close(a, b, f"{path}[{i}]")
    elif isinstance(old, (bool, np.bool_, str)) or old is None:
        assert new == old, path
    else:
        np.testing.assert_allclose(np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64),
                                   **_tol(path), err_msg=path)


def _tol(path: str) -> dict:
    if "bimodality" in path and ("bic" in path or "ashman" in path or "means" in path or "weights" in path):
        # the same 20000 float32 values in both; the mixture fit (EM) amplifies last-bit differences of the
        # float64 sums of two summation orders
        return {"rtol": 1e-6, "atol": 1e-6}
    if "_ci" in path or "boot_" in path:
        # the run sums the bootstrap resamples are kept in float32 (24-bit mantissa, ~6e-8 relative): each
        # resampled r moves by ~1e-8..1e-7 (observed ~2e-10 on these means and quantiles)
        return {"rtol": 0, "atol": 1e-7}
    if "block_edges" in path or "block_hist" in path:
        # np.percentile of the same float32 values, interpolated in float32 (new) vs float64 (old): ~1 ulp of
        # float32 in the edges, and so in the densities (1 / bin width)
        return {"rtol": 1e-6, "atol": 0}
    # float64 sums of float32 activations in another order and about another shift (the first batch's mean
    # instead of the global mean): agreement to float64 rounding, amplified by r = cov / sqrt(var var)
    return {"rtol": 1e-9, "atol": 1e-10}


SETTINGS = {"n_tokens": 600, "seq_len": 128, "skip_tokens": 50, "n_shuffles": 4, "n_bootstrap": 100,
            "n_bimodality_null": 2, "bimodality_sample": 2000}


@pytest.mark.parametrize("arch,extra", [("gpt2", {"bootstrap_block": 64}),
                                        ("llama", {"bootstrap_block": 50, "site": "mlp.hook_post"})])
def test_reduced_results_match_the_all_in_ram_computation(tiny_models, cache_dir, arch, extra):
    """Every number and array of the reduced study equals the old all-in-RAM computation (runs of 50 tokens
    cross the 128-token windows: a run's sums then come from two batches)."""
    model = tiny_models[arch]
    config = TokenLengthConfig(**SETTINGS, **extra, block=1)
    old = reference(model, config)
    new = measure(model, corpus_text()[0], config)
    assert new["block_rows"] == 600 and new["per_layer"] and len(new["per_layer"]) == model.n_layers
    old_arrays, new_arrays = old.pop("_arrays"), new.pop("_arrays")
    _close(new, old)
    assert old_arrays.keys() == new_arrays.keys()
    for key in old_arrays:
        if key in ("r_hist", "partial_hist"):  # counts of r per bin: exact unless an r sits on an edge
            assert np.abs(new_arrays[key] - old_arrays[key]).sum() <= 2, key
        else:
            _close(new_arrays[key], old_arrays[key], key)
    # the verdict inputs are the same: the bimodality decisions and bootstrap CIs
    assert new["short_token_bimodality"]["bimodal"] == old["short_token_bimodality"]["bimodal"]


def test_a_second_run_is_served_from_the_store(tiny_models, cache_dir):
    model = tiny_models["gpt2"]
    config = TokenLengthConfig(**SETTINGS, block=1)
    first = measure(model, corpus_text()[0], config)
    stores = list((cache_dir / "store").iterdir())
    assert len(stores) == 1 and (stores[0] / "complete.json").is_file()
    calls = []
    hook = model.hf.register_forward_hook(lambda *a: calls.append(1))
    try:
        second = measure(model, corpus_text()[0], config)
    finally:
        hook.remove()
    assert not calls  # no forward pass: the reducer states came from the store
    first.pop("_arrays"), second.pop("_arrays")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_beyond_block_rows_the_block_keeps_a_seeded_subset(tiny_models, cache_dir):
    """Past ``block_rows`` tokens the block's histograms come from a seeded subset of its rows (memory does not
    grow with the corpus); the per-layer r still uses every token."""
    model = tiny_models["gpt2"]
    config = TokenLengthConfig(**SETTINGS, block=1, block_rows=200)
    full = TokenLengthConfig(**SETTINGS, block=1)
    new = measure(model, corpus_text()[0], config)
    old = reference(model, full)
    assert new["block_rows"] == 200
    _close(new["per_layer"], old["per_layer"])  # every token still counts in r
    keep = np.sort(np.random.default_rng([config.seed, 2]).choice(600, 200, replace=False))
    windows, counts, _ = corpus_windows(model, corpus_text()[0], config)
    acts = capture(model, windows, "blocks.1.mlp.hook_pre", add_special_tokens=False).numpy("blocks.1.mlp.hook_pre")
    values = acts[keep]
    lengths = token_lengths(model, np.concatenate(windows))
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    edges = new["_arrays"]["block_edges"]
    np.testing.assert_allclose(edges, np.linspace(lo, hi, 121), rtol=1e-6)  # float32 vs float64 interpolation
    short = lengths[keep] < np.median(lengths)
    np.testing.assert_allclose(new["_arrays"]["block_hist"][0],
                               np.histogram(values[short].ravel(), edges, density=True)[0], rtol=1e-12)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import lamina
    from test_study_reducers_token_length import killable_measure

    killable_measure(lamina.load_model(sys.argv[1]))
""")


def killable_measure(model) -> dict:
    """The study's compute path split into many checkpoints: one window of 64 tokens per batch and a
    checkpoint after every batch (test settings of the capture; the victim and the resumed run share them)."""
    import lamina.studies.token_length as tl

    saved = tl.BATCH_TOKENS, tl.CHECKPOINT_TOKENS
    tl.BATCH_TOKENS, tl.CHECKPOINT_TOKENS = 64, 64  # one 64-token window per batch, a checkpoint after each
    try:
        config = TokenLengthConfig(**{**SETTINGS, "seq_len": 64}, block=1, bootstrap_block=40)
        return measure(model, corpus_text()[0], config)
    finally:
        tl.BATCH_TOKENS, tl.CHECKPOINT_TOKENS = saved


@pytest.mark.slow
def test_a_killed_study_run_resumes_to_identical_results(tmp_path, tiny_paths, tiny_models, monkeypatch):
    """SIGKILL the study between checkpoints (a test hook sleeps after each), run it again (it resumes from
    the store), compare every number and array with an uninterrupted run: identical, not merely close."""
    script = tmp_path / "token_length_run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAMINA_CACHE_DIR": str(tmp_path / "killed"),
           "LAMINA_TEST_CHUNK_SLEEP": "0.3"}
    victim = subprocess.Popen([sys.executable, str(script), str(tiny_paths["gpt2"]), os.path.dirname(__file__)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store_root = tmp_path / "killed" / "store"
    deadline = time.time() + 120  # imports and model load take a few seconds on a loaded machine
    while time.time() < deadline and victim.poll() is None:
        states = list(store_root.glob("*/state-*.safetensors"))
        if states and int(states[0].name[6:12]) >= 3:
            break
        time.sleep(0.05)
    assert victim.poll() is None, victim.stderr.read().decode()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (folder,) = store_root.iterdir()
    done_before = int(next(folder.glob("state-*.safetensors")).name[6:12])
    assert 3 <= done_before < 10 and not (folder / "complete.json").exists()  # 10 windows of 64 tokens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the victim's setting: the same kernels, the same floats
    try:
        monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "killed"))
        resumed = killable_measure(tiny_models["gpt2"])
        monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "clean"))
        clean = killable_measure(tiny_models["gpt2"])
    finally:
        torch.set_num_threads(threads)
    assert (folder / "complete.json").is_file()
    resumed_arrays, clean_arrays = resumed.pop("_arrays"), clean.pop("_arrays")
    assert json.dumps(resumed, sort_keys=True) == json.dumps(clean, sort_keys=True)  # every number, bit for bit
    for key in clean_arrays:
        np.testing.assert_array_equal(resumed_arrays[key], clean_arrays[key], err_msg=key)


# -- the reducers the study added: RunSums (block bootstrap sums), KeepValues --------------------------------


def _runs_data(seed=5, n=300, m=7, block=40):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 12, n).astype(float)
    A = (0.2 * x[:, None] * rng.standard_normal(m) + 3 + rng.standard_normal((n, m))).astype(np.float32)
    return x, A, np.arange(n) // block


def test_run_sums_resample_like_the_all_in_ram_block_bootstrap():
    """Batches that split runs, a merge of two halves, and a resample equal to np.corrcoef on the rows it
    picks; constant features give 0."""
    from lamina.capture.reduce_runs import RunSums

    x, A, runs = _runs_data()
    A[:, 3] = 2.5  # a constant feature
    K = runs.max() + 1
    w = np.random.default_rng(0).multinomial(K, np.full(K, 1 / K), size=50).astype(float)
    whole, first, second = RunSums(x, runs), RunSums(x, runs), RunSums(x, runs)
    for start, stop in ((0, 25), (25, 130), (130, 300)):  # cuts inside runs 0 and 3
        whole.update(torch.from_numpy(A[start:stop]), slice(start, stop))
    first.update(torch.from_numpy(A[:130]), slice(0, 130))
    second.update(torch.from_numpy(A[130:]), slice(130, 300))
    want = bootstrap_r(block_sums(x - x.mean(), A - A.mean(0, dtype=np.float64), 40), w)
    # float32 run sums (24-bit mantissa) against float64 sums of the same rows: ~1e-7 in r
    np.testing.assert_allclose(whole.correlations(w).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(first.merge(second).correlations(w).numpy(), want, atol=1e-6)
    rows = np.concatenate([np.arange(k * 40, min(300, k * 40 + 40)) for k in range(K) for _ in range(int(w[0, k]))])
    direct = [np.corrcoef(x[rows], A[rows, j])[0, 1] if j != 3 else 0.0 for j in range(7)]
    np.testing.assert_allclose(whole.correlations(w[:1]).numpy()[0], direct, atol=1e-6)  # same reason


def test_run_sums_spill_to_the_store_and_read_back_chunk_by_chunk(tiny_models, cache_dir):
    """With spill, the runs leave memory once a checkpoint wrote them; read back from the store they give the
    same resampled r as an in-memory reducer; a second call is served from the store."""
    from lamina.capture.reduce_runs import RunSums
    from lamina.capture.reduced import capture_reduced
    from lamina.capture.store import stored_rows

    model = tiny_models["gpt2"]
    windows = [list(range(5 + i, 45 + i)) for i in range(6)]  # 6 windows of 40 tokens
    x = np.arange(240) % 9 + 1.0
    runs = np.arange(240) // 30  # runs of 30 cross the 40-token windows
    w = np.random.default_rng(1).multinomial(8, np.full(8, 1 / 8), size=20).astype(float)
    site = "blocks.1.mlp.hook_pre"
    red = capture_reduced(model, windows, {site: RunSums(x, runs, spill=True)}, batch_size=2, store=True,
                          chunk_batches=1, add_special_tokens=False)
    assert not [k for k in red[site].state_dict() if k.startswith("sums.")]  # all handed over to the store
    chunks = list(stored_rows(red.provenance["store"], 0))
    pieces = [v.shape[0] for c in chunks for k, v in c.items() if k.startswith("sums.")]
    assert len(chunks) == 3 and sum(pieces) == 8 + 2  # runs 1 and 5 are split by the batches
    kept = capture_reduced(model, windows, {site: RunSums(x, runs)}, batch_size=2, add_special_tokens=False)
    # the same float32 pieces; the resample products are summed chunk by chunk vs in one: float64 rounding
    np.testing.assert_allclose(RunSums.resampled_r(chunks, w).numpy(), kept[site].correlations(w).numpy(),
                               rtol=0, atol=1e-14)
    again = capture_reduced(model, windows, {site: RunSums(x, runs, spill=True)}, batch_size=2, store=True,
                            chunk_batches=1, add_special_tokens=False)
    assert again.provenance["bytes_written"] == 0
    np.testing.assert_array_equal(RunSums.resampled_r(stored_rows(again.provenance["store"], 0), w).numpy(),
                                  RunSums.resampled_r(chunks, w).numpy())


def test_keep_values_gathers_exactly_in_the_given_order():
    from lamina.capture.reduce_runs import KeepValues

    _, A, _ = _runs_data()
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, 300, 50), rng.integers(0, 7, 50)
    a, b = KeepValues(rows, cols), KeepValues(rows, cols)
    a.update(torch.from_numpy(A[:100]), slice(0, 100))
    with pytest.raises(Exception, match="incomplete"):
        a.result()
    b.update(torch.from_numpy(A[100:]), slice(100, 300))
    np.testing.assert_array_equal(a.merge(b).result().numpy(), A[rows, cols].astype(np.float64))  # exact copies
