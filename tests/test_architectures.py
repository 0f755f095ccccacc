"""Every supported model type, on a tiny random model built from its config and loaded like a user's folder:
``lamina check`` passes, q/k/v (fused or not) equal the inputs the attention itself receives, and a study runs
end to end."""

from __future__ import annotations

import json

import pytest
import torch

import lamina
from lamina.capture.adapters import supported_model_types
from lamina.capture.hooks import hooked
from lamina.testing import ALL_TINY_TYPES, TINY_VARIANTS, is_masked, make_tiny_model

TYPES = (*ALL_TINY_TYPES, *TINY_VARIANTS)
POST_NORM = {"bert", "roberta", "electra", "distilbert", "opt-post-norm"}  # no residual identity to check
ATOL = 1e-6  # the same float32 values read two ways (a hook vs the attention's own input): round-off at most


@pytest.fixture(scope="module")
def build(tmp_path_factory, tokenizers):
    root, models = tmp_path_factory.mktemp("arch_models"), {}

    def get(name: str):
        if name not in models:
            tok = tokenizers["wordpiece" if is_masked(name) else "bpe"]
            models[name] = lamina.load_model(make_tiny_model(name, root / name, seed=1, tokenizer=tok))
        return models[name]

    return get


def test_every_supported_type_has_a_tiny_model():
    assert len(supported_model_types()) >= 25
    assert set(supported_model_types()) == set(ALL_TINY_TYPES)


@pytest.mark.parametrize("name", TYPES)
def test_check_passes(build, name, cache_dir):
    model = build(name)
    report = model.check()
    assert report.passed, report.table()
    assert model.config.model_type == TINY_VARIANTS.get(name, (name,))[0]
    identity = next(r for r in report.results if r.name.startswith("resid_post =="))
    assert identity.passed is (None if name in POST_NORM else True)  # exempt exactly where the family says so
    if model.adapter.moe:
        with pytest.raises(lamina.LaminaError, match="mixtures of experts"):
            model.sites("blocks.0.mlp.hook_pre")


class _Spy:
    """An attention implementation that records (query, key, value) as the model hands them over."""

    def __init__(self):
        self.calls = []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self.calls.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        kwargs.pop("softcap", None)  # layer 0's inputs are all this test reads; later layers may differ
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _attention_inputs(model, ids):
    """Block 0's (q, k, v) at position 0 as the attention receives them, each (n_heads_or_kv, d_head)."""
    layer0 = model.module(f"{model.adapter.blocks}.0")
    attn = next(m for m in layer0.modules() if hasattr(m, "_split_heads") or hasattr(m, "_reshape"))  \
        if model.arch in ("bloom", "falcon") else None
    if attn is not None:  # these attentions call their own head-splitting code: use it on the fused output
        raw = {}
        path = model.resolve_path(model.adapter.block_sites["attn.hook_q"].module_path(0))
        with torch.no_grad(), hooked(model.hf, {(path, "output"): lambda t: raw.setdefault("qkv", t.clone())}):
            model.hf(input_ids=ids)
        split = attn._split_heads if hasattr(attn, "_split_heads") else attn._reshape
        q, k, v = split(raw["qkv"])
        if model.arch == "bloom":  # (batch, heads, seq, d_head)
            return q[0, :, 0], k[0, :, 0], v[0, :, 0]
        _, n_kv, _ = model.adapter.heads(model.config)
        group = q.shape[2] // n_kv if model.config.new_decoder_architecture else 1  # falcon broadcasts k/v
        return q[0, 0], k[0, 0, ::group], v[0, 0, ::group]
    from transformers import AttentionInterface

    spy = _Spy()
    AttentionInterface.register("lamina_test_spy", spy)
    previous = model.config._attn_implementation
    model.hf.set_attn_implementation("lamina_test_spy")
    try:
        with torch.no_grad():
            model.hf(input_ids=ids)
    finally:
        model.hf.set_attn_implementation(previous)
    q, k, v = spy.calls[0]  # (batch, heads, seq, d_head)
    return q[0, :, 0], k[0, :, 0], v[0, :, 0]


def _normed(model, kind: str, flat: torch.Tensor, n: int) -> torch.Tensor:
    """Apply the family's own q/k norm (Qwen3, Gemma 3, OLMo 2...) to a captured (n * d_head,) vector."""
    attn = model.module(model.adapter.block_sites["attn.hook_q"].module_path(0).rsplit(".", 1)[0])
    norm = getattr(attn, f"{kind}_norm", None)
    if norm is None:
        return flat.reshape(n, -1)
    if norm.weight.shape[0] == flat.shape[0]:  # one norm over all heads (OLMo 2)
        return norm(flat).reshape(n, -1)
    return norm(flat.reshape(n, -1))


@pytest.mark.parametrize("name", [t for t in TYPES if t != "gpt_neo"])  # GPT-Neo: separate q/k/v, no interface
def test_qkv_equal_attention_inputs(build, name):
    """Fused slices (GQA and multi-query widths, per-head and grouped layouts) pick the right columns. At position
    0 rotary embeddings are the identity, so the attention's own q/k/v there equal the projections."""
    model = build(name)
    ids = torch.tensor([model.tokenizer("Coffee is a drink")["input_ids"]])
    acts = lamina.capture(model, [ids[0].tolist()], "blocks.0.attn.*", positions="index:0")
    want = _attention_inputs(model, ids)
    n_heads, n_kv, _ = model.adapter.heads(model.config)
    with torch.no_grad():
        for kind, n, ref in zip("qkv", (n_heads, n_kv, n_kv), want):
            got = acts[f"blocks.0.attn.hook_{kind}"][0]
            got = _normed(model, kind, got, n) if kind != "v" else got.reshape(n, -1)
            if kind == "q" and model.arch == "opt":  # OPT scales q_proj's output by 1/sqrt(d_head) before attention
                got = got * model.module("model.decoder.layers.0.self_attn").scaling
            torch.testing.assert_close(got, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", TYPES)
def test_readout_reproduces_logits(build, name):
    """``readout`` (final norm, head modules, logit soft-cap or scale) maps the last residual state to the logits:
    the logit lens's last layer is the model's own output."""
    from lamina.capture.sites import readout

    model = build(name)
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    acts = lamina.capture(model, "Coffee is a drink; coffee beans are roasted.", [last, "logits"])
    with torch.no_grad():
        torch.testing.assert_close(readout(model)(acts[last]), acts["logits"], atol=1e-5, rtol=0)  # float32 parity


#: One study end to end on every type; by default on one type per unusual layout only (the rest are slow: a
#: report with figures costs ~1 s of CPU per model).
QUICK = ("gemma2", "mixtral", "modernbert", "bloom", "falcon-new-decoder", "phi3")


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in TYPES])
def test_study_end_to_end(build, name, tmp_path, cache_dir):
    model = build(name)
    folder = lamina.studies.run_study("qkv-layers", model=model, out=tmp_path / "r", reports_root=tmp_path,
                                      baseline="none")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["study"] == "qkv-layers" and doc["claims"]
    assert len(doc["results"]["per_layer"]) == model.n_layers
    assert (folder / "report.html").is_file()
