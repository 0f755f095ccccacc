"""Capture equals plain HF forward passes, on tiny random models of every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina import select

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Coffee is a drink; coffee beans are roasted.",
    "A short one.",
]
ATOL = 1e-5  # float32 parity tolerance asked of the capture core (the bound)


def hf_hidden_states(model, text):
    enc = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.hf(**enc, output_hidden_states=True)
    return out, enc


def test_resid_pre_matches_hidden_states(tiny):
    acts = lamina.capture(tiny, TEXTS, "blocks.*.hook_resid_pre,blocks.*.hook_resid_post")
    for i, text in enumerate(TEXTS):
        out, _ = hf_hidden_states(tiny, text)
        rows = acts.rows.for_text(i)
        for layer in range(tiny.n_layers):
            torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_pre"][rows], out.hidden_states[layer][0],
                                       atol=ATOL, rtol=0)
        for layer in range(tiny.n_layers - 1):  # resid_post[l] == resid_pre[l+1]
            torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_post"][rows],
                                       acts[f"blocks.{layer + 1}.hook_resid_pre"][rows], atol=0, rtol=0)


def test_final_norm_and_logits_match(tiny):
    sites = "logits" if tiny.is_masked_lm else "logits,ln_final.hook_out,blocks.*.hook_resid_post"
    acts = lamina.capture(tiny, TEXTS, sites)
    for i, text in enumerate(TEXTS):
        out, _ = hf_hidden_states(tiny, text)
        rows = acts.rows.for_text(i)
        torch.testing.assert_close(acts["logits"][rows], out.logits[0], atol=ATOL, rtol=0)
        if not tiny.is_masked_lm:
            # HF's last hidden state is after the final norm; lamina's last resid_post is before it.
            torch.testing.assert_close(acts["ln_final.hook_out"][rows], out.hidden_states[-1][0],
                                       atol=ATOL, rtol=0)
            final_norm = tiny.module(tiny.adapter.final_sites["ln_final.hook_out"].module)
            last = acts[f"blocks.{tiny.n_layers - 1}.hook_resid_post"][rows]
            torch.testing.assert_close(final_norm(last), out.hidden_states[-1][0], atol=ATOL, rtol=0)


def test_residual_identity_for_pre_norm(tiny):
    if not tiny.adapter.pre_norm:
        pytest.skip("post-norm blocks (BERT): the identity does not apply")
    acts = lamina.capture(tiny, TEXTS, "blocks.*.hook_resid_pre,blocks.*.hook_resid_post,blocks.*.hook_attn_out,"
                                       "blocks.*.hook_mlp_out")
    for layer in range(tiny.n_layers):
        total = (acts[f"blocks.{layer}.hook_resid_pre"] + acts[f"blocks.{layer}.hook_attn_out"]
                 + acts[f"blocks.{layer}.hook_mlp_out"])
        torch.testing.assert_close(total, acts[f"blocks.{layer}.hook_resid_post"], atol=ATOL, rtol=0)


def _qkv_reference(model, layer, resid_pre):
    """Q, K, V recomputed by calling the real HF submodules on the captured block input."""
    hf = model.hf
    if model.arch == "gpt2":
        block = hf.transformer.h[layer]
        qkv = block.attn.c_attn(block.ln_1(resid_pre))
        return qkv.split(model.d_model, dim=-1)
    if model.arch == "gpt-neo":
        block = hf.transformer.h[layer]
        x = block.ln_1(resid_pre)
        att = block.attn.attention
        return att.q_proj(x), att.k_proj(x), att.v_proj(x)
    if model.arch == "gpt-neox":
        block = hf.gpt_neox.layers[layer]
        h = model.config.num_attention_heads
        qkv = block.attention.query_key_value(block.input_layernorm(resid_pre))
        qkv = qkv.view(qkv.shape[0], h, 3, -1)
        return tuple(qkv[:, :, i].reshape(qkv.shape[0], -1) for i in range(3))
    if model.arch == "llama":
        block = hf.model.layers[layer]
        x = block.input_layernorm(resid_pre)
        att = block.self_attn
        return att.q_proj(x), att.k_proj(x), att.v_proj(x)
    if model.arch == "bert":
        att = hf.bert.encoder.layer[layer].attention.self
        return att.query(resid_pre), att.key(resid_pre), att.value(resid_pre)
    raise AssertionError(model.arch)


def test_qkv_and_mlp_sites_match_modules(tiny):
    acts = lamina.capture(tiny, TEXTS, "blocks.*.*")
    for layer in range(tiny.n_layers):
        pre = acts[f"blocks.{layer}.hook_resid_pre"]
        with torch.no_grad():
            q, k, v = _qkv_reference(tiny, layer, pre)
        torch.testing.assert_close(acts[f"blocks.{layer}.attn.hook_q"], q, atol=ATOL, rtol=0)
        torch.testing.assert_close(acts[f"blocks.{layer}.attn.hook_k"], k, atol=ATOL, rtol=0)
        torch.testing.assert_close(acts[f"blocks.{layer}.attn.hook_v"], v, atol=ATOL, rtol=0)
        # mlp.hook_post is the down projection's input: down(hook_post) == mlp_out.
        down = tiny.module(tiny.adapter.block_sites["mlp.hook_post"].module.format(l=layer))
        with torch.no_grad():
            torch.testing.assert_close(down(acts[f"blocks.{layer}.mlp.hook_post"]),
                                       acts[f"blocks.{layer}.hook_mlp_out"], atol=ATOL, rtol=0)
    if tiny.adapter.gated_mlp:
        mlp = tiny.hf.model.layers[0].mlp
        with torch.no_grad():
            expected = mlp.act_fn(acts["blocks.0.mlp.hook_pre"]) * acts["blocks.0.mlp.hook_pre_linear"]
        torch.testing.assert_close(acts["blocks.0.mlp.hook_post"], expected, atol=ATOL, rtol=0)
    n_kv = getattr(tiny.config, "num_key_value_heads", tiny.config.num_attention_heads)
    d_head = tiny.d_model // tiny.config.num_attention_heads
    assert acts["blocks.0.attn.hook_k"].shape[1] == n_kv * d_head


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


def test_logits_unchanged_by_capture(tiny):
    hooks_before = _hook_count(tiny)  # transformers may keep hooks of its own
    enc = tiny.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        before = tiny.hf(**enc).logits
    acts = lamina.capture(tiny, TEXTS[0], "blocks.*.*,logits")
    with torch.no_grad():
        after = tiny.hf(**enc).logits
    assert torch.equal(before, after)  # hooks only read, and are gone afterwards
    torch.testing.assert_close(acts["logits"], before[0], atol=ATOL, rtol=0)
    assert _hook_count(tiny) == hooks_before


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_one_at_a_time(tiny, padding_side):
    sites = "blocks.*.hook_resid_post,blocks.*.attn.hook_q"
    together = lamina.capture(tiny, TEXTS, sites, batch_size=3, padding_side=padding_side)
    for i, text in enumerate(TEXTS):
        alone = lamina.capture(tiny, text, sites)
        rows = together.rows.for_text(i)
        for site in together.sites:
            torch.testing.assert_close(together[site][rows], alone[site], atol=ATOL, rtol=0)


def test_positions_select_rows_inside_hooks(tiny):
    full = lamina.capture(tiny, TEXTS, "blocks.0.hook_mlp_out")
    picked = lamina.capture(tiny, TEXTS, "blocks.0.hook_mlp_out", positions=select.index(-1))
    assert len(picked) == len(TEXTS)
    last_rows = [full.rows.for_text(i)[-1] for i in range(len(TEXTS))]
    torch.testing.assert_close(picked["blocks.0.hook_mlp_out"], full["blocks.0.hook_mlp_out"][last_rows],
                               atol=0, rtol=0)
    assert picked.rows.position.tolist() == [int(full.rows.position[r]) for r in last_rows]


def test_stack_and_residual_stream(tiny):
    acts = lamina.capture(tiny, TEXTS[:2], lamina.residual_sites(tiny))
    stream = acts.residual_stream()
    assert stream.shape == (tiny.n_layers + 1, len(acts), tiny.d_model)
    assert acts.stack("hook_resid_pre").shape == (tiny.n_layers, len(acts), tiny.d_model)


def test_bfloat16_storage_is_close(tiny):
    exact = lamina.capture(tiny, TEXTS[0], "blocks.0.hook_resid_post")
    half = lamina.capture(tiny, TEXTS[0], "blocks.0.hook_resid_post", dtype="bf16")
    assert half["blocks.0.hook_resid_post"].dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: relative error <= 2**-8.
    np.testing.assert_allclose(half["blocks.0.hook_resid_post"].float().numpy(),
                               exact["blocks.0.hook_resid_post"].numpy(), rtol=2**-8, atol=1e-6)
