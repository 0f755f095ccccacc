"""Architecture adapters: where each named site lives in a Hugging Face module tree, written as data.

A site is read with a PyTorch hook on a real HF module, never on a re-implemented model. An adapter names, relative
to one transformer block, the module whose output (or input) each site reads -- ``self_attn.o_proj`` for
``hook_attn_out`` -- plus a few flags. Most families differ from Llama in a handful of names, so a family is a
few lines (the registry below; the machinery is :mod:`lamina.capture.layout`; how-to in ``docs/architectures.md``)::

    STARCODER2 = family("starcoder2", "starcoder2", like=LLAMA, mlp_pre="mlp.c_fc", mlp_pre_linear=None,
                        mlp_out="mlp.c_proj")

Site semantics (block ``l`` from 0; the per-family details and every difference from TransformerLens are in
``docs/architectures.md``):

- ``blocks.{l}.hook_resid_pre`` / ``hook_resid_post``: the block module's input / output (the residual stream).
- ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``: what each sub-block adds to the residual stream, so that
  ``resid_post == resid_pre + attn_out + mlp_out`` wherever ``residual_identity`` is True (pre-norm, parallel
  and sandwich-norm blocks); post-norm encoders (BERT-likes) read the output projections before the residual add
  and the LayerNorm that follows, and the identity does not hold.
- ``blocks.{l}.attn.hook_q|k|v``: projected queries/keys/values, heads concatenated, before rotary embeddings
  and any q/k norm (widths ``n_heads*d_head`` and ``n_kv_heads*d_head``).
- ``blocks.{l}.mlp.hook_pre``: the expansion before the nonlinearity (the gate for gated MLPs, whose linear
  branch is ``mlp.hook_pre_linear``); ``mlp.hook_post``: the input of the down projection. Mixture-of-experts MLPs
  have neither (no single hidden layer): their ``hook_mlp_out`` is the whole MoE block's output.
- ``ln_final.hook_out``: the final norm's output after gain and bias (HF's last hidden state in decoders);
  ``logits``: the model's output logits (after any logit scale or soft-cap the model applies).
"""

from __future__ import annotations

import dataclasses

from ..errors import LaminaError
from .layout import BLOCK_SITE_KINDS, ArchAdapter, HookPoint, attention_shape, family, scale_logits, softcap_logits

__all__ = ["HookPoint", "ArchAdapter", "ADAPTERS", "family", "register", "adapter_for_config",
           "adapter_for_name", "attention_shape", "supported_model_types", "BLOCK_SITE_KINDS"]


# -- the registry: one entry per family; most are Llama with a few names changed --------------------------------
LLAMA = family(
    "llama", "llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "stablelm",
    notes="hook_q/k are the q_proj/k_proj outputs before rotary and, where present, before the q/k norm (Qwen3, "
          "StableLM qk_layernorm) or OLMo's clip_qkv; Gemma scales the embeddings by sqrt(d_model) before block 0, "
          "so resid_pre[0] includes that scale",
)
MOE = family(
    "moe", "mixtral", "qwen2_moe", "qwen3_moe", like=LLAMA, mlp_out="mlp|block_sparse_moe", moe=True,
    notes="hook_mlp_out is the sparse MoE block's output: the router-weighted sum of the top-k experts (Qwen2-MoE "
          "adds its sigmoid-gated shared expert); no mlp.hook_pre/post (no single hidden layer of neurons)",
)
GEMMA2 = family(
    "gemma2", "gemma2", "gemma3_text", "olmo2", "olmo3", "exaone4", like=LLAMA, attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm", mlp_post="mlp.down_proj", logits_fn=softcap_logits,
    notes="norms after each sublayer: hook_attn_out/hook_mlp_out are the post-attention/post-feedforward norm "
          "outputs (what is added to the residual stream, so the identity holds), not the o_proj/down_proj outputs; "
          "logits include Gemma's final soft-cap; OLMo 2/3 and EXAONE 4 have no norm before the sublayers",
)
PHI = family("phi", "phi", like=LLAMA, attn_out="self_attn.dense", mlp_out="mlp.fc2", mlp_pre="mlp.fc1",
             mlp_pre_linear=None, final_norm="model.final_layernorm",
             notes="parallel block: attention and MLP read the same normed input; the identity holds")
PHI3 = family("phi3", "phi3", like=LLAMA, qkv="self_attn.qkv_proj", gate_up="mlp.gate_up_proj",
              notes="fused qkv_proj ([Q | K | V], GQA widths) and gate_up_proj ([gate | up]) are sliced")
STARCODER2 = family("starcoder2", "starcoder2", like=LLAMA, mlp_out="mlp.c_proj", mlp_pre="mlp.c_fc",
                    mlp_pre_linear=None)
COHERE = family("cohere", "cohere", "cohere2", like=LLAMA, logits_fn=scale_logits,
                notes="parallel block (one norm feeds attention and MLP); logits include the logit_scale factor")
GPT2 = family("gpt2", "gpt2", blocks="transformer.h", attn_out="attn.c_proj", qkv="attn.c_attn",
              mlp_out="mlp.c_proj", mlp_pre="mlp.c_fc", mlp_pre_linear=None, final_norm="transformer.ln_f",
              absolute_positions=True)
GPT_NEO = family("gpt-neo", "gpt_neo", like=GPT2, qkv=None, q="attn.attention.q_proj", k="attn.attention.k_proj",
                 v="attn.attention.v_proj", attn_out="attn.attention.out_proj")
GPT_BIGCODE = family("gpt-bigcode", "gpt_bigcode", like=GPT2,
                     qkv_layout=lambda c: "concat" if getattr(c, "multi_query", False) else "per_head",
                     notes="multi-query c_attn is [Q | K | V] with one key/value head (widths d_model, d_head, d_head)")
GPTJ = family("gptj", "gptj", like=GPT2, qkv=None, q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
              attn_out="attn.out_proj", mlp_out="mlp.fc_out", mlp_pre="mlp.fc_in", absolute_positions=False,
              notes="parallel block; hook_q/k before the partial rotary embedding")
GPT_NEOX = family("gpt-neox", "gpt_neox", blocks="gpt_neox.layers", attn_out="attention.dense",
                  qkv="attention.query_key_value", qkv_layout="per_head", mlp_out="mlp.dense_4h_to_h",
                  mlp_pre="mlp.dense_h_to_4h", mlp_pre_linear=None, final_norm="gpt_neox.final_layer_norm",
                  head=("lm_head|embed_out",), notes="query_key_value is fused per head: (n_heads, 3, d_head)")
BLOOM = family("bloom", "bloom", like=GPT_NEOX, blocks="transformer.h", attn_out="self_attention.dense",
               qkv="self_attention.query_key_value", final_norm="transformer.ln_f", head=("lm_head",),
               position_ids=False,
               residual_identity=lambda c: not getattr(c, "apply_residual_connection_post_layernorm", False),
               notes="ALiBi (positions come from the attention mask); resid_pre[0] is after the embedding LayerNorm; "
                     "query_key_value is fused per head")
FALCON = family(
    "falcon", "falcon", like=BLOOM, position_ids=True, residual_identity=True,
    qkv_layout=lambda c: ("grouped" if c.new_decoder_architecture else "concat" if c.multi_query else "per_head"),
    kv_heads=lambda c: (c.num_kv_heads if c.new_decoder_architecture else 1 if c.multi_query else
                        c.num_attention_heads),
    notes="query_key_value: multi-query [Q | K | V] (one key/value head), per head, or grouped by key/value head "
          "(new decoder architecture), following the config; hook_k/v hold the key/value heads before broadcasting",
)
OPT = family("opt", "opt", blocks="model.decoder.layers", attn_out="self_attn.out_proj", mlp_out="fc2",
             mlp_pre="fc1", mlp_pre_linear=None, final_norm="model.decoder.final_layer_norm",
             head=("model.decoder.project_out?", "lm_head"), last_hidden="model.decoder.project_out?",
             absolute_positions=True,
             residual_identity=lambda c: getattr(c, "do_layer_norm_before", True),
             notes="the MLP has no submodule (fc1/fc2 sit in the block); hook_q is q_proj's output before OPT scales "
                   "it by 1/sqrt(d_head); OPT-350m (do_layer_norm_before=False) is post-norm and has no final norm")
BERT = family("bert", "bert", blocks="bert.encoder.layer", q="attention.self.query", k="attention.self.key",
              v="attention.self.value", attn_out="attention.output.dense", mlp_out="output.dense",
              mlp_pre="intermediate.dense", mlp_pre_linear=None, final_norm=None, head=("cls",),
              mlm_decoder="cls.predictions.decoder", masked_lm=True, residual_identity=False,
              absolute_positions=True,
              notes="post-norm: resid_post = LayerNorm(h + mlp_out) with h = LayerNorm(resid_pre + attn_out); "
                    "attn_out/mlp_out are the dense outputs before the residual add and the LayerNorm")
ROBERTA = family("roberta", "roberta", like=BERT, blocks="roberta.encoder.layer", head=("lm_head",),
                 mlm_decoder="lm_head.decoder", position_ids=False,
                 reserved_positions=lambda c: (c.pad_token_id or 0) + 1,
                 notes=BERT.notes + "; positions start after the padding index (RoBERTa computes them from the ids)")
ELECTRA = family("electra", "electra", like=BERT, blocks="electra.encoder.layer",
                 head=("generator_predictions", "generator_lm_head"), mlm_decoder="generator_lm_head",
                 notes=BERT.notes + "; resid_pre[0] is after embeddings_project when embedding_size != hidden_size")
DISTILBERT = family("distilbert", "distilbert", like=BERT, blocks="distilbert.transformer.layer",
                    q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", attn_out="attention.out_lin",
                    mlp_out="ffn.lin2", mlp_pre="ffn.lin1",
                    head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
                    mlm_decoder="vocab_projector")
MODERNBERT = family("modernbert", "modernbert", like=BERT, blocks="model.layers", qkv="attn.Wqkv",
                    attn_out="attn.Wo", mlp_out="mlp.Wo", gate_up="mlp.Wi", final_norm="model.final_norm",
                    head=("head", "decoder"), mlm_decoder="decoder", residual_identity=True,
                    absolute_positions=False,
                    notes="pre-norm encoder (the identity holds); Wqkv is [Q | K | V]; Wi is [act branch | linear "
                          "branch]: mlp.hook_pre is the half that goes through the activation")

#: The registry: lamina's family name -> adapter (``register`` adds one).
ADAPTERS: dict[str, ArchAdapter] = {}


def register(adapter: ArchAdapter) -> ArchAdapter:
    """Add a family to the registry (a later registration of a model type wins)."""
    for other in list(ADAPTERS.values()):
        shared = set(other.model_types) & set(adapter.model_types)
        if shared and other.name != adapter.name:
            ADAPTERS[other.name] = dataclasses.replace(
                other, model_types=tuple(t for t in other.model_types if t not in shared))
    ADAPTERS[adapter.name] = adapter
    return adapter


for _adapter in (GPT2, GPT_NEO, GPT_NEOX, LLAMA, BERT, MOE, GEMMA2, PHI, PHI3, STARCODER2, COHERE, GPT_BIGCODE,
                 GPTJ, BLOOM, FALCON, OPT, ROBERTA, ELECTRA, DISTILBERT, MODERNBERT):
    register(_adapter)

#: Recurrent / state-space model types (lamina reads attention blocks).
_STATE_SPACE = {"mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
                "granitemoehybrid", "nemotron_h", "lfm2", "recurrent_gemma", "xlstm"}


def supported_model_types() -> list[str]:
    """Every HF ``model_type`` with an adapter, sorted."""
    return sorted(t for a in ADAPTERS.values() for t in a.model_types)


def _supported() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in ADAPTERS.values())


def adapter_for_name(name: str) -> ArchAdapter:
    """Return the adapter registered as ``name``; unknown names raise a one-line :class:`LaminaError`."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise LaminaError(f"unknown architecture {name!r}; supported: {_supported()}") from None


def _unsupported_kind(config, model_type: str) -> str | None:
    """Why a model type cannot be read at all (encoder-decoder, state-space, multimodal), or None."""
    enc_dec = getattr(config, "is_encoder_decoder", None)
    if enc_dec is None:  # a bare namespace: ask the model type's default config
        try:
            from transformers import CONFIG_MAPPING

            enc_dec = bool(CONFIG_MAPPING[model_type]().is_encoder_decoder)
        except Exception:  # an unknown type or a config that needs arguments: no verdict
            enc_dec = False
    if enc_dec:
        return (f"{model_type!r} is an encoder-decoder model, which lamina does not support (it reads decoder-only "
                "language models and masked-LM encoders)")
    if model_type in _STATE_SPACE or any(hasattr(config, a) for a in ("ssm_state_size", "mamba_d_state")):
        return (f"{model_type!r} is a state-space / recurrent model, which lamina does not support (its sites are "
                "attention-block sites)")
    if getattr(config, "text_config", None) is not None or getattr(config, "vision_config", None) is not None:
        return (f"{model_type!r} is a multimodal model, which lamina does not support; load its language model "
                "alone (e.g. a checkpoint of its text-only model type)")
    return None


def adapter_for_config(config, *, fallback: bool = False) -> ArchAdapter | None:
    """The adapter for an HF config by its ``model_type``.

    Args:
        config: an HF config (or anything with ``model_type``).
        fallback: return None for a model type without an adapter (the caller then tries the generic
            discovery of :mod:`lamina.capture.discover`) instead of raising.

    Raises:
        LaminaError: an unsupported kind of model (encoder-decoder, state-space, multimodal), or an unknown type
            when ``fallback`` is False; the message lists the supported types.
    """
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    why = _unsupported_kind(config, str(model_type))
    if why:
        raise LaminaError(f"{why}; supported: {_supported()}")
    if fallback:
        return None
    raise LaminaError(f"unsupported architecture {model_type!r}; supported: {_supported()}")
