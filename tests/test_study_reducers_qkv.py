"""qkv-similarity, qkv-layers and rsa-categories compute from kept rows (issue 12, phase 2): KeepRows reducers
in ``capture_reduced(..., store=True)`` instead of an all-in-RAM ``lamina.capture(..., cache=True)``. The kept
rows equal lamina.capture's, every number, array and claim equals the all-in-RAM computation, and what the
store holds is the rows the studies read, served to the next study without running the model again."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lamina
from lamina import select
from lamina.studies import qkv_layers, qkv_similarity, rsa_categories
from lamina.studies.kept_rows import QKV_SITES, capture_qkv_rows
from lamina.studies.qkv_similarity import target_and_previous
from lamina.studies.runner import StudyInputs
from lamina.studies.texts import HER_SENTENCES
from lamina.testing import single_token_words

# The kept rows are copies of the same float32 values from the same forward passes (same prefixes, same
# batches): the study's float64 numpy code then sees identical inputs and gives identical numbers. 1e-12 only
# leaves room for a BLAS that would sum in another order from one call to the next (never observed: 0 here).
RTOL = 1e-12
ATOL = 1e-12


def _in_ram(model, texts, positions):
    """The all-in-RAM reference: every selected row of every Q/K/V site in host RAM (the old code path)."""
    return lamina.capture(model, texts, list(QKV_SITES), positions=positions)


def _assert_same(got, want, where: str = "results") -> None:
    """Nested dicts / lists / numbers / strings equal; floats to RTOL/ATOL (NaN equals NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=where)
    elif isinstance(want, float) or isinstance(got, float):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=RTOL, abs=ATOL), where
    else:
        assert got == want, where


def _both(module, monkeypatch, model, config, inputs):
    """The study computed from kept rows, then again from the all-in-RAM capture (same statistics code)."""
    out = module.compute(model, config, inputs)
    with monkeypatch.context() as m:
        m.setattr(module, "capture_qkv_rows", _in_ram)
        ref = module.compute(model, config, inputs)
    return out, ref


def _assert_outputs_equal(module, out, ref, config) -> None:
    _assert_same(out.results, ref.results)
    _assert_same(out.resolved, ref.resolved, "resolved")
    assert out.arrays.keys() == ref.arrays.keys()
    for k in ref.arrays:
        _assert_same(out.arrays[k], ref.arrays[k], f"arrays.{k}")
    _assert_same(module.claims(out, config, ref), module.claims(ref, config, ref), "claims")  # ref as the baseline


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])  # fused QKV + absolute positions; GQA; masked LM
def test_kept_rows_equal_the_in_ram_capture(tiny_models, cache_dir, arch):
    model = tiny_models[arch]
    words = single_token_words(model, 6)
    for texts, positions in ((list(HER_SENTENCES), target_and_previous("her")),
                             ([f"The next word is {w}" for w in words], "index:-1")):
        kept = capture_qkv_rows(model, texts, positions)
        acts = _in_ram(model, texts, positions)
        assert len(kept) == len(acts) and kept.rows.token == acts.rows.token
        for site in model.sites(list(QKV_SITES)):
            assert kept[site].dtype == torch.float32 and torch.equal(kept[site], acts[site]), site


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qkv_similarity_equals_the_in_ram_computation(tiny_models, cache_dir, monkeypatch, arch):
    model = tiny_models[arch]
    config = qkv_similarity.QKVConfig(n_shuffles=3, n_bootstrap=20)  # the smallest allowed: speed only
    out, ref = _both(qkv_similarity, monkeypatch, model, config, StudyInputs(text=None, corpus=None))
    _assert_outputs_equal(qkv_similarity, out, ref, config)
    assert not (cache_dir / "activations").exists()  # nothing went through the all-in-RAM activation cache


@pytest.mark.parametrize("arch", ["gpt-neox", "llama"])
def test_qkv_layers_equals_the_in_ram_computation(tiny_models, cache_dir, monkeypatch, arch):
    model = tiny_models[arch]
    config = qkv_layers.QKVLayersConfig(n_bootstrap=20)
    out, ref = _both(qkv_layers, monkeypatch, model, config, StudyInputs(text=None, corpus=None))
    _assert_outputs_equal(qkv_layers, out, ref, config)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rsa_categories_equals_the_in_ram_computation(tiny_models, cache_dir, monkeypatch, arch):
    model = tiny_models[arch]
    words = single_token_words(model, 12)
    text = "\n".join(f"c{i}: {', '.join(words[4 * i:4 * i + 4])}" for i in range(3))
    config = rsa_categories.RSAConfig(n_permutations=20, n_bootstrap=20)
    out, ref = _both(rsa_categories, monkeypatch, model, config, StudyInputs(text=text, corpus=None))
    _assert_outputs_equal(rsa_categories, out, ref, config)


def test_the_store_holds_the_rows_and_serves_the_next_study(tiny_models, cache_dir):
    """qkv-similarity stores its rows once; qkv-layers (same sentences and positions) reads them back without
    a forward pass; the store's row files hold the kept rows and little else."""
    model = tiny_models["llama"]
    first = capture_qkv_rows(model, list(HER_SENTENCES), target_and_previous("her"))
    sites = model.sites(list(QKV_SITES))
    row_bytes = sum(first[s].numel() * first[s].element_size() for s in sites)
    stored = sum(f.stat().st_size for f in (cache_dir / "store").rglob("rows-*.safetensors"))
    # The rows themselves plus one safetensors header (a few hundred bytes of JSON per site) per chunk.
    assert row_bytes <= stored <= row_bytes + 1024 * len(sites)
    assert first.provenance["bytes_written"] >= stored

    def no_forward(module, args):
        raise AssertionError("the stored rows should have been read, not recomputed")

    handle = model.module(model.adapter.base).register_forward_pre_hook(no_forward)
    try:
        out = qkv_layers.compute(model, qkv_layers.QKVLayersConfig(n_bootstrap=20),
                                 StudyInputs(text=None, corpus=None))
        again = capture_qkv_rows(model, list(HER_SENTENCES), target_and_previous("her"))
    finally:
        handle.remove()
    assert len(out.results["per_layer"]) == model.n_layers
    assert again.provenance["bytes_written"] == 0
    assert all(torch.equal(again[s], first[s]) for s in sites)


@pytest.mark.slow  # ~5 s on an idle machine (model load + two captures), far more on a loaded one
def test_kept_rows_equal_the_in_ram_capture_on_the_bundled_model(tmp_path, monkeypatch):
    """The rows the three studies read on the bundled model (the her sentences; the category words at their
    positions) equal lamina.capture's, bit for bit: the studies' numbers are then the old ones exactly."""
    model = lamina.load_model("default")  # from the user's model cache (converting it again takes ~20 s)
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache"))  # the store: private to this test
    kept_words, _ = rsa_categories.single_token_words(model, rsa_categories.CATEGORIES, "The next word is {}")
    jobs = ((list(HER_SENTENCES), target_and_previous("her")),
            ([f"The next word is {w}" for _, w, _ in kept_words], select.indices([[p] for _, _, p in kept_words])))
    for texts, positions in jobs:
        kept, acts = capture_qkv_rows(model, texts, positions), _in_ram(model, texts, positions)
        assert all(torch.equal(kept[s], acts[s]) for s in model.sites(list(QKV_SITES)))
