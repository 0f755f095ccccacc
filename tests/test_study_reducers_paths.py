"""effective-dim, path-length and mi-layers compute from streaming reducers (issue #12 item 2): each against the
all-in-RAM computation it replaced (``lamina.capture`` of every row + numpy), on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

from lamina import capture
from lamina.capture import residual_sites
from lamina.studies import effective_dim_reduce as edr
from lamina.studies import kept_rows
from lamina.studies.effective_dim import EffectiveDimConfig, spectrum
from lamina.studies.mi_layers import MILayersConfig, token_vectors
from lamina.studies.path_length import PathLengthConfig, compute as path_length_compute, measure_paths
from lamina.testing import offline_text

# Spectra from a float64 co-moment accumulated batch by batch (and, for sinks, with rows taken out of it) vs
# numpy's c.T @ c on the same float64 rows: the same sums in another order, ~1e-15 relative; 1e-10 is loose.
SPECTRUM_ATOL = 1e-10
# Per-token norms and dots in torch vs numpy (other summation order, ~1e-16 relative), carried through
# correlations, bootstrap quantiles and leave-one-out influences: observed <= 1e-11 relative on the bundled model.
PATH_RTOL = 1e-9


# ------------------------------------------------------------------------------------------- effective-dim
def _reference_copy(model, windows, ratio, skip_first=True):
    """The old all-in-RAM computation of one copy: every row in float64, sinks found and dropped in numpy."""
    acts = capture(model, windows, residual_sites(model), add_special_tokens=False)
    hidden = acts.residual_stream().double().numpy()
    positions = acts.rows.position
    if skip_first:
        hidden, positions = hidden[:, positions != 0], positions[positions != 0]
    layer0 = spectrum(hidden[0])
    norms = np.linalg.norm(hidden, axis=2)
    median = np.median(norms, axis=1, keepdims=True)
    sink = (norms > ratio * median).any(axis=0)
    excess = (norms / median).max(axis=0)  # each token's worst layer
    hidden = hidden[:, ~sink]
    return {"spectra": np.stack([spectrum(h) for h in hidden]), "layer0": layer0,
            "sinks": positions[sink].tolist(), "n_rows": hidden.shape[1], "excess": excess, "positions": positions}


def _windows(model, n_tokens=240, size=120):
    ids = model.tokenizer(offline_text(), add_special_tokens=False)["input_ids"][3000:3000 + n_tokens]
    return [ids[i:i + size] for i in range(0, n_tokens, size)]


def _same_copy(got, want):
    assert got["sinks"] == want["sinks"] and got["n_rows"] == want["n_rows"]
    assert got["spectra"].shape == want["spectra"].shape
    np.testing.assert_allclose(got["spectra"], want["spectra"], atol=SPECTRUM_ATOL)
    np.testing.assert_allclose(got["layer0"], want["layer0"], atol=SPECTRUM_ATOL)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("n_tokens", [240, 24])  # more rows than the width (covariance), fewer (the rows)
def test_effective_dim_copy_matches_the_all_in_ram_spectra(tiny_models, cache_dir, arch, n_tokens):
    model = tiny_models[arch]
    assert (n_tokens - 2 < model.d_model) == (n_tokens == 24)
    windows = _windows(model, n_tokens, n_tokens // 2)  # two windows: rows of several texts and batches
    want = _reference_copy(model, windows, edr.SINK_RATIO)
    _same_copy(edr.copy_spectra(model, windows, EffectiveDimConfig(n_tokens=n_tokens)), want)


@pytest.mark.parametrize("early", [10**6, 4, None])
def test_effective_dim_sinks_are_dropped_exactly(tiny_models, cache_dir, monkeypatch, early):
    """Lower the sink ratio so ~15% of the tokens count as sinks: with every row kept (early=10**6) they are
    taken out of the pooled co-moment; with 4 early positions most are beyond the kept rows (a second pass);
    with fewer rows than the width (None) they are left out of the kept rows."""
    model = tiny_models["llama"]
    windows = _windows(model, 24, 12) if early is None else _windows(model)
    excess = np.sort(_reference_copy(model, windows, np.inf)["excess"])
    cut = int(0.85 * excess.size)
    ratio = float(excess[cut - 1] + excess[cut]) / 2  # between two tokens: no token on the border
    want = _reference_copy(model, windows, ratio)
    assert 10 * want["n_rows"] // 240 < len(want["sinks"]) < want["n_rows"]
    if early is not None and early < 100:
        assert max(want["sinks"]) >= early  # some sinks beyond the kept rows: the second pass runs
    monkeypatch.setattr(edr, "SINK_RATIO", ratio)
    monkeypatch.setattr(edr, "EARLY_POSITIONS", early or 0)
    passes = []
    real = edr.capture_reduced
    counting = lambda *a, **k: passes.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(edr, "capture_reduced", counting)
    monkeypatch.setattr(kept_rows, "capture_reduced", counting)  # the rows path captures through kept_rows
    _same_copy(edr.copy_spectra(model, windows, EffectiveDimConfig(n_tokens=240)), want)
    assert len(passes) == (2 if early == 4 else 1)  # sinks among the kept rows need no second pass


def test_remove_rows_is_the_comoment_of_the_rest():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)) * rng.uniform(0.1, 10, 12)
    x[[3, 50]] *= 100  # two large rows, as attention sinks are
    import torch

    c = x - x.mean(0)
    m2, rest = edr.remove_rows(torch.as_tensor(c.T @ c), torch.as_tensor(x.mean(0)), 200, torch.as_tensor(x[[3, 50]]))
    keep = np.delete(x, [3, 50], axis=0)
    k = keep - keep.mean(0)
    assert rest == 198
    # Removing rows ~100x the others' size: float64 cancellation of ~1e-16 x 1e4 of the result's scale.
    np.testing.assert_allclose(m2.numpy(), k.T @ k, rtol=0, atol=1e-9 * np.abs(k.T @ k).max())


# ------------------------------------------------------------------------------------------- path-length
def _close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)) and not (want and isinstance(want[0], str)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, (bool, str, type(None))):
        assert got == want, path
    else:
        np.testing.assert_allclose(got, want, rtol=PATH_RTOL, atol=0, err_msg=path)


@pytest.mark.parametrize("arch", ["gpt2", "gpt-neox", "llama"])
def test_path_length_matches_the_all_in_ram_computation(tiny_models, cache_dir, arch):
    model = tiny_models[arch]
    text = "The river bends twice before it reaches the sea, and the old town sits on the second bend of it."
    config = PathLengthConfig(n_bootstrap=200)
    out = path_length_compute(model, config, {"text": text})
    acts = capture(model, text, residual_sites(model) + ["blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"])
    stack = {k: acts.stack(k).double().numpy() for k in ("hook_attn_out", "hook_mlp_out")}
    results, arrays = measure_paths(acts.residual_stream().double().numpy(), stack["hook_attn_out"],
                                    stack["hook_mlp_out"], config)
    _close({k: out.results[k] for k in results}, results)
    assert out.results["tokens"] == list(acts.rows.token) and out.results["n_tokens"] == len(acts)
    assert set(out.arrays) == set(arrays)
    for key, want in arrays.items():
        np.testing.assert_allclose(out.arrays[key], want, rtol=PATH_RTOL, atol=1e-12, err_msg=key)


# ------------------------------------------------------------------------------------------- mi-layers
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_mi_layers_keeps_exactly_the_rows_it_analyses(tiny_models, cache_dir, arch):
    model = tiny_models[arch]
    text = " ".join(["The river bends twice before it reaches the sea."] * 4)
    config = MILayersConfig(max_tokens=20)
    got = token_vectors(model, text, config)
    hidden = capture(model, text, residual_sites(model)).residual_stream().double().numpy()
    np.testing.assert_array_equal(got, hidden[:, 1:21])  # the same forward pass, the same float32 rows
    again = token_vectors(model, text, config)  # served by the store: no forward pass, the same rows
    np.testing.assert_array_equal(again, got)
