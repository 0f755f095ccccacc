"""One registry of architecture adapters: where each named site lives in a Hugging Face module tree.

A site is read with a PyTorch hook on a real HF module, never on a re-implemented model. Each adapter maps
lamina's TransformerLens-style site names to a :class:`HookPoint` (a module path, whether its input or its
output is read, and an optional slice of the last dimension, e.g. the Q third of GPT-2's fused ``c_attn``).

Site semantics (block ``l`` counted from 0):

- ``blocks.{l}.hook_resid_pre``: the residual stream entering block ``l`` (the input of the block module;
  for ``l = 0`` the embeddings including positions).
- ``blocks.{l}.hook_resid_post``: the block's raw output (``== resid_pre[l+1]``); the last block's is before
  the final norm.
- ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``: what each sub-block adds to the residual stream, i.e. the
  output of its output projection (GPT-2 ``attn.c_proj`` / ``mlp.c_proj``). For pre-norm decoders
  ``resid_post == resid_pre + attn_out + mlp_out``. BERT is post-norm: its ``attn_out`` is the attention
  output dense layer's output and ``mlp_out`` the output dense layer's output, each *before* the residual
  add and the LayerNorm that follows it, so the identity does not hold.
- ``blocks.{l}.attn.hook_q|k|v``: projected queries/keys/values, heads concatenated, before any rotary
  embedding (width ``n_heads*d_head`` for q, ``n_kv_heads*d_head`` for k and v).
- ``blocks.{l}.mlp.hook_pre``: the expansion before the nonlinearity (the gate projection for gated MLPs,
  whose ``up`` projection is ``mlp.hook_pre_linear``); ``blocks.{l}.mlp.hook_post``: the input of the down
  projection (after the nonlinearity; ``act(gate) * up`` for gated MLPs).
- ``ln_final.hook_normalized``: the output of the final norm (decoders only); ``logits``: the LM head output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import LaminaError

__all__ = ["HookPoint", "ArchAdapter", "ADAPTERS", "adapter_for_config", "adapter_for_name", "BLOCK_SITE_KINDS"]

#: Per-block site kinds common to every architecture (gated MLPs add ``mlp.hook_pre_linear``).
BLOCK_SITE_KINDS = (
    "hook_resid_pre",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "mlp.hook_pre",
    "mlp.hook_post",
)

Slicer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HookPoint:
    """Where a site is read.

    Attributes:
        module: dotted module path relative to the HF model; ``{l}`` is replaced by the block index;
            ``a|b`` names alternatives (the first that exists is used).
        io: ``"output"`` reads the module's output (first element if a tuple), ``"input"`` its first input.
        part: optional factory ``config -> (tensor of shape (n, w_full) -> tensor of shape (n, w))`` applied
            to the already row-selected values (slices along the last dimension only).
    """

    module: str
    io: str = "output"
    part: Callable[[object], Slicer] | None = None

    def module_path(self, layer: int | None) -> str:
        return self.module.format(l=layer) if layer is not None else self.module


def _fused_thirds(index: int) -> Callable[[object], Slicer]:
    """GPT-2 style fused [Q | K | V] along the last dimension."""

    def factory(config) -> Slicer:
        d = config.hidden_size
        return lambda t: t[..., index * d : (index + 1) * d]

    return factory


def _neox_qkv(index: int) -> Callable[[object], Slicer]:
    """GPT-NeoX fuses q, k, v per head: the output viewed as (n_heads, 3, d_head)."""

    def factory(config) -> Slicer:
        n_heads = config.num_attention_heads
        d_head = config.hidden_size // n_heads

        def slicer(t: torch.Tensor) -> torch.Tensor:
            lead = t.shape[:-1]
            return t.reshape(*lead, n_heads, 3, d_head)[..., index, :].reshape(*lead, n_heads * d_head)

        return slicer

    return factory


@dataclass(frozen=True)
class ArchAdapter:
    """How one architecture family lays out its HF modules.

    Attributes:
        name: lamina's name for the family (``"gpt2"``, ``"llama"``, ...).
        model_types: HF ``config.model_type`` values this adapter handles.
        blocks: dotted path of the ``ModuleList`` of transformer blocks.
        base: dotted path of the base model (no LM head), run alone when logits are not needed.
        block_sites: site kind -> :class:`HookPoint` (module paths contain ``{l}``).
        final_sites: non-block site name -> :class:`HookPoint`.
        masked_lm: True for masked LMs (loaded with ``AutoModelForMaskedLM``).
        pre_norm: True when ``resid_post == resid_pre + attn_out + mlp_out`` holds.
        gated_mlp: True when the MLP is ``down(act(gate(x)) * up(x))``.
        absolute_positions: True when learned position embeddings are added to the token embeddings (so the
            first residual state depends on position; rotary models keep positions out of the stream).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    base: str
    block_sites: dict[str, HookPoint]
    final_sites: dict[str, HookPoint]
    masked_lm: bool = False
    pre_norm: bool = True
    gated_mlp: bool = False
    absolute_positions: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _block(prefix: str, **kinds: HookPoint) -> dict[str, HookPoint]:
    common = {
        "hook_resid_pre": HookPoint(prefix, "input"),
        "hook_resid_post": HookPoint(prefix, "output"),
    }
    common.update({k.replace("__", "."): v for k, v in kinds.items()})
    return common


_GPT2 = ArchAdapter(
    name="gpt2",
    absolute_positions=True,
    model_types=("gpt2",),
    blocks="transformer.h",
    base="transformer",
    block_sites=_block(
        "transformer.h.{l}",
        hook_attn_out=HookPoint("transformer.h.{l}.attn.c_proj"),
        hook_mlp_out=HookPoint("transformer.h.{l}.mlp.c_proj"),
        attn__hook_q=HookPoint("transformer.h.{l}.attn.c_attn", part=_fused_thirds(0)),
        attn__hook_k=HookPoint("transformer.h.{l}.attn.c_attn", part=_fused_thirds(1)),
        attn__hook_v=HookPoint("transformer.h.{l}.attn.c_attn", part=_fused_thirds(2)),
        mlp__hook_pre=HookPoint("transformer.h.{l}.mlp.c_fc"),
        mlp__hook_post=HookPoint("transformer.h.{l}.mlp.c_proj", "input"),
    ),
    final_sites={
        "ln_final.hook_normalized": HookPoint("transformer.ln_f"),
        "logits": HookPoint("lm_head"),
    },
)

_GPT_NEO = ArchAdapter(
    name="gpt-neo",
    absolute_positions=True,
    model_types=("gpt_neo",),
    blocks="transformer.h",
    base="transformer",
    block_sites=_block(
        "transformer.h.{l}",
        hook_attn_out=HookPoint("transformer.h.{l}.attn.attention.out_proj"),
        hook_mlp_out=HookPoint("transformer.h.{l}.mlp.c_proj"),
        attn__hook_q=HookPoint("transformer.h.{l}.attn.attention.q_proj"),
        attn__hook_k=HookPoint("transformer.h.{l}.attn.attention.k_proj"),
        attn__hook_v=HookPoint("transformer.h.{l}.attn.attention.v_proj"),
        mlp__hook_pre=HookPoint("transformer.h.{l}.mlp.c_fc"),
        mlp__hook_post=HookPoint("transformer.h.{l}.mlp.c_proj", "input"),
    ),
    final_sites={
        "ln_final.hook_normalized": HookPoint("transformer.ln_f"),
        "logits": HookPoint("lm_head"),
    },
)

_GPT_NEOX = ArchAdapter(
    name="gpt-neox",
    model_types=("gpt_neox",),
    blocks="gpt_neox.layers",
    base="gpt_neox",
    block_sites=_block(
        "gpt_neox.layers.{l}",
        hook_attn_out=HookPoint("gpt_neox.layers.{l}.attention.dense"),
        hook_mlp_out=HookPoint("gpt_neox.layers.{l}.mlp.dense_4h_to_h"),
        attn__hook_q=HookPoint("gpt_neox.layers.{l}.attention.query_key_value", part=_neox_qkv(0)),
        attn__hook_k=HookPoint("gpt_neox.layers.{l}.attention.query_key_value", part=_neox_qkv(1)),
        attn__hook_v=HookPoint("gpt_neox.layers.{l}.attention.query_key_value", part=_neox_qkv(2)),
        mlp__hook_pre=HookPoint("gpt_neox.layers.{l}.mlp.dense_h_to_4h"),
        mlp__hook_post=HookPoint("gpt_neox.layers.{l}.mlp.dense_4h_to_h", "input"),
    ),
    final_sites={
        "ln_final.hook_normalized": HookPoint("gpt_neox.final_layer_norm"),
        "logits": HookPoint("lm_head|embed_out"),  # transformers >= 5 renamed embed_out
    },
)

_LLAMA = ArchAdapter(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    blocks="model.layers",
    base="model",
    block_sites=_block(
        "model.layers.{l}",
        hook_attn_out=HookPoint("model.layers.{l}.self_attn.o_proj"),
        hook_mlp_out=HookPoint("model.layers.{l}.mlp.down_proj"),
        attn__hook_q=HookPoint("model.layers.{l}.self_attn.q_proj"),
        attn__hook_k=HookPoint("model.layers.{l}.self_attn.k_proj"),
        attn__hook_v=HookPoint("model.layers.{l}.self_attn.v_proj"),
        mlp__hook_pre=HookPoint("model.layers.{l}.mlp.gate_proj"),
        mlp__hook_pre_linear=HookPoint("model.layers.{l}.mlp.up_proj"),
        mlp__hook_post=HookPoint("model.layers.{l}.mlp.down_proj", "input"),
    ),
    final_sites={
        "ln_final.hook_normalized": HookPoint("model.norm"),
        "logits": HookPoint("lm_head"),
    },
    gated_mlp=True,
)

_BERT = ArchAdapter(
    name="bert",
    absolute_positions=True,
    model_types=("bert",),
    blocks="bert.encoder.layer",
    base="bert",
    block_sites=_block(
        "bert.encoder.layer.{l}",
        hook_attn_out=HookPoint("bert.encoder.layer.{l}.attention.output.dense"),
        hook_mlp_out=HookPoint("bert.encoder.layer.{l}.output.dense"),
        attn__hook_q=HookPoint("bert.encoder.layer.{l}.attention.self.query"),
        attn__hook_k=HookPoint("bert.encoder.layer.{l}.attention.self.key"),
        attn__hook_v=HookPoint("bert.encoder.layer.{l}.attention.self.value"),
        mlp__hook_pre=HookPoint("bert.encoder.layer.{l}.intermediate.dense"),
        mlp__hook_post=HookPoint("bert.encoder.layer.{l}.output.dense", "input"),
    ),
    final_sites={"logits": HookPoint("cls")},
    extra={"mlm_decoder": "cls.predictions.decoder"},  # the MLM head's last layer alone (the "wrong" lens)
    masked_lm=True,
    pre_norm=False,
    notes=(
        "BERT is post-norm: resid_post = LayerNorm(h + mlp_out) with h = LayerNorm(resid_pre + attn_out); "
        "attn_out/mlp_out are the dense outputs before the residual add and LayerNorm."
    ),
)

#: The registry: lamina's architecture name -> adapter.
ADAPTERS: dict[str, ArchAdapter] = {a.name: a for a in (_GPT2, _GPT_NEO, _GPT_NEOX, _LLAMA, _BERT)}


def _supported() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in ADAPTERS.values())


def adapter_for_name(name: str) -> ArchAdapter:
    """Return the adapter registered as ``name``; unknown names raise a one-line :class:`LaminaError`."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise LaminaError(f"unknown architecture {name!r}; supported: {_supported()}") from None


def adapter_for_config(config) -> ArchAdapter:
    """Return the adapter for an HF config by its ``model_type``."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    raise LaminaError(f"unsupported architecture {model_type!r}; supported: {_supported()}")
