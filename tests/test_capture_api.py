"""Loading, errors, selectors, caching, saving and the capture CLI."""

from __future__ import annotations

import types

import pytest
import torch

import lamina
from lamina import LaminaError, select
from lamina.capture.adapters import adapter_for_config
from lamina.cli import main

COFFEE = "Coffee is brewed. I like coffee, and my coffee is strong. COFFEE! decaf-coffee. Coffeehouse."


def test_word_selector_finds_every_variant(tiny_models):
    model = tiny_models["gpt2"]
    acts = lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions=select.word("coffee"))
    # "Coffee", "coffee,", "coffee", "COFFEE", "decaf-coffee" are whole words; "Coffeehouse" is not.
    assert len(acts) == 5
    enc = model.tokenizer(COFFEE, return_offsets_mapping=True)
    for pos in acts.rows.position:
        start, end = enc["offset_mapping"][pos]
        assert COFFEE[start:end].strip().lower().endswith("e")  # the last token of the word


def test_word_selector_first_and_all_tokens(tiny_models):
    model = tiny_models["llama"]
    last = lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions=select.word("coffee"))
    first = lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions=select.word("coffee", token="first"))
    every = lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions=select.word("coffee", token="all"))
    assert len(first) == len(last) == 5
    assert (first.rows.position <= last.rows.position).all()
    assert len(every) >= len(last)


def test_user_errors_are_one_line(tiny_models):
    model = tiny_models["gpt2"]
    cases = [
        lambda: lamina.capture(model, COFFEE, "blocks.99.hook_resid_post"),
        lambda: lamina.capture(model, COFFEE, "blocks.0.nope"),
        lambda: lamina.capture(model, [], "blocks.0.hook_resid_post"),
        lambda: lamina.capture(model, "   ", "blocks.0.hook_resid_post"),
        lambda: lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions=select.word("tea")),
        lambda: lamina.capture(model, "word " * 400, "blocks.0.hook_resid_post"),
        lambda: lamina.capture(model, COFFEE, "blocks.0.hook_resid_post", positions="middle"),
        lambda: lamina.load_model("/nonexistent/model.gguf"),
    ]
    for case in cases:
        with pytest.raises(LaminaError) as info:
            case()
        assert "\n" not in str(info.value) and len(str(info.value)) > 20


def test_unsupported_architecture_lists_supported():
    with pytest.raises(LaminaError, match="supported: gpt2"):
        adapter_for_config(types.SimpleNamespace(model_type="t5"))
    with pytest.raises(LaminaError, match="unknown architecture 'xlnet'"):
        lamina.capture.adapter_for_name("xlnet")


def test_unknown_hub_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LaminaError, match="not available"):
        lamina.load_model("lamina-test/definitely-not-a-model")


def test_nan_activations_are_reported(tiny_models):
    model = tiny_models["gpt2"]
    emb = model.hf.transformer.wte.weight
    saved = emb.data.clone()
    try:
        emb.data[:] = float("nan")
        with pytest.raises(LaminaError, match="NaN"):
            lamina.capture(model, COFFEE, "blocks.0.hook_resid_post")
        emb.data.copy_(saved)
        last = model.tokenizer(COFFEE)["input_ids"][-1]
        emb.data[last, 3] = float("inf")  # one value of one token: the last row of resid_pre[0] only
        with pytest.raises(LaminaError, match="NaN or infinite"):
            lamina.capture(model, COFFEE, "blocks.0.hook_resid_pre")
    finally:
        emb.data.copy_(saved)


def test_hooks_removed_when_forward_fails(tiny_models, monkeypatch):
    model = tiny_models["gpt-neox"]
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
    before = count()
    block = model.hf.gpt_neox.layers[1]

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(block, "forward", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        lamina.capture(model, COFFEE, "blocks.*.hook_resid_post")
    assert count() == before


def test_cache_roundtrip_and_reuse(tiny_models, cache_dir, monkeypatch):
    model = tiny_models["gpt2"]
    first = lamina.capture(model, [COFFEE, "Another text."], "blocks.*.hook_attn_out", cache=True)
    entries = list((cache_dir / "activations").iterdir())
    assert len(entries) == 1 and not any(p.name.startswith(".tmp") for p in entries)

    def fail(*a, **k):
        raise AssertionError("the model ran although the capture was cached")

    monkeypatch.setattr(model.hf.transformer, "forward", fail)
    second = lamina.capture(model, [COFFEE, "Another text."], "blocks.*.hook_attn_out", cache=True)
    for site in first.sites:
        assert torch.equal(first[site], second[site])
    assert second.rows.token == first.rows.token
    assert second.provenance["model"]["sha256"] == model.provenance["sha256"]


def test_save_load(tiny_models, tmp_path):
    model = tiny_models["bert"]
    acts = lamina.capture(model, COFFEE, "blocks.1.*,logits", positions=select.word("coffee"))
    acts.save(tmp_path / "acts")
    back = lamina.Activations.load(tmp_path / "acts")
    assert back.sites == acts.sites
    for site in acts.sites:
        assert torch.equal(back[site], acts[site])
    assert back.rows.to_records() == acts.rows.to_records()
    assert back.provenance["tokenizer_sha256"] == acts.provenance["tokenizer_sha256"]


def test_glob_patterns(tiny_models):
    model = tiny_models["llama"]
    assert model.sites("blocks.*.hook_resid_post") == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert all(s.startswith("blocks.1.") for s in model.sites("blocks.1.*"))
    assert "blocks.1.mlp.hook_pre_linear" in model.sites("blocks.1.*")


def test_cli_sites_and_capture(tiny_paths, tmp_path, capsys):
    assert main(["sites", str(tiny_paths["gpt2"]), "--pattern", "blocks.0.*"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.hook_q\t32" in out and "blocks.1" not in out
    text = tmp_path / "t.txt"
    text.write_text(COFFEE)
    assert main(["capture", str(tiny_paths["gpt2"]), "--text-file", str(text), "--sites", "blocks.1.hook_mlp_out",
                 "--positions", "word:coffee", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert len(lamina.Activations.load(tmp_path / "o")) == 5


def test_cli_user_error_is_one_line(tiny_paths, capsys):
    assert main(["sites", str(tiny_paths["gpt2"]), "--pattern", "blocks.7.*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown site") and err.count("\n") == 1


def test_default_model_loads_offline():
    """The bundled SmolLM2-135M-Instruct (converted once, then loaded from the cache)."""
    model = lamina.load_model("default")
    assert (model.arch, model.n_layers, model.d_model) == ("llama", 30, 576)
    text = "The capital of France is"
    acts = lamina.capture(model, text, "blocks.*.hook_resid_pre,logits")
    enc = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.hf(**enc, output_hidden_states=True)
    for layer in range(model.n_layers):
        # Real weights: residual norms reach ~2e4 (massive activations), so compare relative to scale.
        ref = out.hidden_states[layer][0]
        torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_pre"], ref, atol=1e-6 * ref.abs().max(), rtol=0)
    assert model.tokenizer.decode(int(acts["logits"][-1].argmax())) == " Paris"


def test_tune_malloc_is_opt_in_and_idempotent():
    import subprocess
    import sys

    code = ("import lamina, lamina._malloc as m; assert m._done is None; "  # importing lamina tunes nothing
            "first = lamina.tune_malloc(); assert lamina.tune_malloc() is first; print(first)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("True" if sys.platform.startswith("linux") else "False")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_causal_models_read_only_up_to_the_last_selected_token(tiny_models, arch):
    """A causal LM's state at a selected token does not depend on later tokens, so the forward pass stops
    reading there (punctuation-clusters' windows lose 10 of 31 tokens); a masked LM reads every text whole.
    The rows equal those of a capture that reads every text whole."""
    model = tiny_models[arch]
    texts = ["the cat sat on the mat and then it slept", "a dog ran far away from home today"]
    model.site_widths()  # measured once per model by a one-token pass: not part of what is counted here
    seen = []
    embed = model.hf.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        acts = lamina.capture(model, texts, "blocks.*.hook_resid_post", positions=select.index(3), batch_size=1)
        reduced = lamina.capture.capture_reduced(model, texts, {"blocks.0.hook_resid_post": lamina.capture.reduce.KeepRows()},
                                         positions=select.index(3), batch_size=1)
    finally:
        handle.remove()
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    expected = [lengths[0], lengths[1]] * 2 if model.is_masked_lm else [4, 4, 4, 4]
    assert seen == expected
    whole = lamina.capture(model, texts, "blocks.*.hook_resid_post")  # every position: each text read whole
    at3 = whole.rows.position == 3
    for layer in range(model.n_layers):
        site = f"blocks.{layer}.hook_resid_post"
        # float32 round-off: the same layers over sequences of different length (different kernel blocking)
        torch.testing.assert_close(acts[site], whole[site][at3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reduced["blocks.0.hook_resid_post"].rows(), whole["blocks.0.hook_resid_post"][at3],
                               rtol=1e-5, atol=1e-5)
