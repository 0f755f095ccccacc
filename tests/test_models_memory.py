"""Models in memory: the random-init copy built on the target device/dtype, one cached model at a time."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import torch

import lamina
from lamina.capture import random_init_copy


def _hf_init_reference(model, seed: int) -> torch.nn.Module:
    """A float32 CPU construction whose weights are then redrawn by HF's own initialisation under ``seed``."""
    hf = type(model.hf)._from_config(copy.deepcopy(model.hf.config), dtype=torch.float32)
    for obj in [*hf.modules(), *hf.parameters(), *hf.buffers()]:
        if hasattr(obj, "_is_hf_initialized"):
            del obj._is_hf_initialized
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf.init_weights()
    return hf


def test_random_init_copy_draws_exactly_hf_init_weights(tiny):
    copy0 = random_init_copy(tiny, seed=0)
    assert copy0.provenance["init"] == "meta device, HF _init_weights"  # the fallback was not needed
    got, want = copy0.hf.state_dict(), _hf_init_reference(tiny, 0).state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bit for bit: the same draws in the same order
    assert dict(copy0.hf.named_buffers()).keys() == dict(tiny.hf.named_buffers()).keys()
    emb, out = copy0.hf.get_input_embeddings(), copy0.hf.get_output_embeddings()
    if tiny.hf.get_output_embeddings().weight is tiny.hf.get_input_embeddings().weight:
        assert out.weight is emb.weight  # ties survive the meta-device construction
    other = random_init_copy(tiny, seed=1).hf.state_dict()
    assert not torch.equal(other[next(k for k in want if k.endswith("weight") and want[k].ndim == 2)],
                           got[next(k for k in want if k.endswith("weight") and want[k].ndim == 2)])
    # The copy runs: same sites, finite activations, different from the trained model's.
    a = lamina.capture(copy0, "a short test sentence", "blocks.0.hook_resid_post")
    b = lamina.capture(tiny, "a short test sentence", "blocks.0.hook_resid_post")
    assert torch.isfinite(a["blocks.0.hook_resid_post"]).all()
    assert not torch.equal(a["blocks.0.hook_resid_post"], b["blocks.0.hook_resid_post"])


def test_random_init_copy_in_bfloat16_is_built_in_bfloat16(tiny_paths):
    model = lamina.load_model(tiny_paths["llama"], dtype="bf16")
    rand = random_init_copy(model, seed=0)
    assert {p.dtype for p in rand.hf.parameters()} == {torch.bfloat16}
    ref = _hf_init_reference(model, 0)
    for (name, p), q in zip(rand.hf.named_parameters(), ref.parameters()):
        if p.ndim == 2 and p.numel() >= 1000:
            # Drawn in bfloat16 (other numbers, same distribution): the std of >= 1000 draws has a relative
            # standard error <= 1/sqrt(2 * 1000) = 2.2%; two independent samples differ by < 5 sigma = 16%.
            s_p, s_q = float(p.detach().float().std()), float(q.detach().float().std())
            assert abs(s_p - s_q) / s_q < 0.16, name
        elif p.ndim == 1:
            assert torch.equal(p.float(), q.float()), name  # norms' ones and biases' zeros: exact in bf16


def test_load_cached_keeps_one_model_resident(tiny_paths):
    from lamina.studies import runner

    a = runner.load_cached(str(tiny_paths["gpt2"]))
    assert runner.load_cached(str(tiny_paths["gpt2"])) is a  # reused while it is the latest
    gone = weakref.ref(a.hf)
    del a
    b = runner.load_cached(str(tiny_paths["gpt-neo"]))
    gc.collect()
    assert gone() is None  # loading another model freed the first one's weights
    assert len(runner._MODELS) == 1 and runner.load_cached(str(tiny_paths["gpt-neo"])) is b
    assert np.isfinite(float(next(b.hf.parameters()).detach().float().sum()))
    runner._MODELS.clear()


def test_capture_buffers_are_reused_only_once_free(tiny_models, monkeypatch):
    """Output buffers come from a pool: a dropped capture's memory serves the next one, a live one's never."""
    from lamina.capture import _buffers

    monkeypatch.setattr(_buffers, "_POOL", [])  # no idle maps left by other tests
    model = tiny_models["gpt2"]
    texts = ["the first text of a few words", "and a second one, a little longer than the first"]
    sites = "blocks.*.hook_resid_post"
    first = lamina.capture(model, texts, sites)
    kept = {s: first[s].clone() for s in first.sites}
    second = lamina.capture(model, texts[::-1], sites)  # the first is alive: fresh memory
    ptrs = {first[s].data_ptr() for s in first.sites}
    assert not ptrs & {second[s].data_ptr() for s in second.sites}
    for s in first.sites:
        assert torch.equal(first[s], kept[s])  # untouched by the second capture
    del first
    gc.collect()
    third = lamina.capture(model, texts, sites)
    assert ptrs == {third[s].data_ptr() for s in third.sites}  # the freed map, reused
    for s in third.sites:
        assert torch.equal(third[s], kept[s])
    monkeypatch.setenv("LAMINA_BUFFER_POOL_GB", "0")  # pooling off: ordinary allocations, same values
    plain = lamina.capture(model, texts, sites)
    for s in plain.sites:
        assert torch.equal(plain[s], kept[s])
