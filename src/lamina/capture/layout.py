"""How an architecture lays out its modules, as data: :class:`HookPoint`, :class:`ArchAdapter` and :func:`family`.

The registry of families built from these is :mod:`lamina.capture.adapters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from ..errors import LaminaError

__all__ = ["HookPoint", "ArchAdapter", "family", "attention_shape", "softcap_logits", "scale_logits",
           "BLOCK_SITE_KINDS"]

#: Per-block site kinds of a dense model (gated MLPs add ``mlp.hook_pre_linear``; MoE MLPs drop the mlp.* ones).
BLOCK_SITE_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_q",
                    "attn.hook_k", "attn.hook_v", "mlp.hook_pre", "mlp.hook_post")

Slicer = Callable[[torch.Tensor], torch.Tensor]
_RENAMED_FINAL = ("renamed ln_final.hook_out: the final norm's output after gain and bias (TransformerLens's "
                  "ln_final.hook_normalized is before gain and bias, which lamina does not offer)")


@dataclass(frozen=True)
class HookPoint:
    """Where a site is read.

    Attributes:
        module: dotted module path from the HF model's root; ``{l}`` is replaced by the block index.
        io: ``"output"`` reads the module's output (first element if a tuple), ``"input"`` its first input.
        part: optional factory ``config -> (tensor of shape (n, w_full) -> tensor of shape (n, w))`` applied to
            the already row-selected values: a slice of the last dimension (one of a fused Q/K/V) or an
            elementwise transform (the logit soft-cap).
    """

    module: str
    io: str = "output"
    part: Callable[[object], Slicer] | None = None

    def module_path(self, layer: int | None) -> str:
        return self.module.format(l=layer) if layer is not None else self.module


def attention_shape(config, kv_heads: Callable[[object], int] | None = None) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, d_head)`` of an HF config (GQA and multi-query aware).

    ``kv_heads`` overrides the key/value head count for families that store it unusually (Falcon).
    """
    n_heads = next(int(v) for a in ("num_attention_heads", "n_head", "num_heads", "n_heads")
                   if (v := getattr(config, a, None)) is not None)
    d_head = getattr(config, "head_dim", None) or int(config.hidden_size) // n_heads
    if kv_heads is not None:
        n_kv = kv_heads(config)
    elif getattr(config, "num_key_value_heads", None) is not None:
        n_kv = int(config.num_key_value_heads)
    else:
        n_kv = 1 if getattr(config, "multi_query", False) else n_heads
    return n_heads, n_kv, int(d_head)


def _fused_qkv(index: int, layout, kv_heads) -> Callable[[object], Slicer]:
    """Q (0), K (1) or V (2) of a fused projection.

    Layouts: ``"concat"`` = [Q | K | V] with widths (n_heads, n_kv, n_kv) x d_head (GPT-2, Phi-3, multi-query
    StarCoder and Falcon); ``"per_head"`` = (n_heads, 3, d_head) (GPT-NeoX, BLOOM); ``"grouped"`` = (n_kv,
    n_heads/n_kv + 2, d_head) (Falcon's new decoder). ``layout`` may be a function of the config.
    """

    def factory(config) -> Slicer:
        n_q, n_kv, d = attention_shape(config, kv_heads)
        kind = layout(config) if callable(layout) else layout
        if kind == "concat":
            start = (0, n_q * d, (n_q + n_kv) * d)[index]
            width = (n_q if index == 0 else n_kv) * d
            return lambda t: t[..., start:start + width]
        if kind == "per_head":
            return lambda t: t.reshape(*t.shape[:-1], n_q, 3, d)[..., index, :].reshape(*t.shape[:-1], n_q * d)
        if kind == "grouped":
            g = n_q // n_kv
            cols = slice(0, g) if index == 0 else slice(g + index - 1, g + index)
            return lambda t: t.reshape(*t.shape[:-1], n_kv, g + 2, d)[..., cols, :].reshape(*t.shape[:-1], -1)
        raise ValueError(f"unknown fused QKV layout {kind!r}")

    return factory


def _half(index: int) -> Callable[[object], Slicer]:
    """First or second half of a fused [act-branch | linear-branch] MLP projection (Phi-3, ModernBERT)."""

    def factory(config) -> Slicer:
        return lambda t: t[..., index * (t.shape[-1] // 2):(index + 1) * (t.shape[-1] // 2)]

    return factory


def softcap_logits(config) -> Slicer | None:
    """Gemma 2/3: ``cap * tanh(logits / cap)`` when the config sets ``final_logit_softcapping``."""
    cap = getattr(config, "final_logit_softcapping", None)
    return None if cap is None else (lambda t: torch.tanh(t / cap) * cap)


def scale_logits(config) -> Slicer | None:
    """Cohere: ``logits * logit_scale``."""
    scale = getattr(config, "logit_scale", None)
    return None if scale is None else (lambda t: t * scale)


@dataclass(frozen=True)
class ArchAdapter:
    """One architecture family as data; module paths relative to a block unless named otherwise.

    The defaults are the Llama layout, so a family lists only what differs. Create adapters with :func:`family`
    (it rejects unknown keys and lists the valid ones).

    Attributes:
        name: lamina's family name (``"llama"``); model_types: the HF ``config.model_type`` values it reads.
        blocks: path (from the root) of the ``ModuleList`` of blocks; base: the base model run when no logits are
            needed (default: the first component of ``blocks``).
        attn_out, mlp_out: modules whose outputs are ``hook_attn_out`` / ``hook_mlp_out``.
        q, k, v: separate projections; or qkv: one fused projection laid out as ``qkv_layout`` (see
            :func:`_fused_qkv`).
        mlp_pre, mlp_pre_linear: gate (or up) and linear-branch projections; or gate_up: one fused projection
            [act branch | linear branch]; mlp_post: module whose *input* is ``mlp.hook_post`` (default mlp_out).
        final_norm: path from the root of the final norm (None: none); head: modules from the root applied in
            turn from the final norm's output to the logits (a trailing ``?`` marks an optional one); logits_fn:
            ``config -> elementwise transform`` the model applies to the head's output.
        mlm_decoder: masked LMs: the head's last linear layer alone.
        masked_lm, residual_identity (resid_post == resid_pre + attn_out + mlp_out), absolute_positions (learned
            positions added to the first residual state), position_ids (capture passes mask-derived position
            ids; False for models that derive them from the mask or ids themselves), moe (mixture-of-experts
            MLP: no per-neuron sites), kv_heads: ``config -> n_kv_heads`` override, reserved_positions: rows of
            the position table a text cannot use (RoBERTa's start after the padding index; int or ``config ->
            int``), subtracted from the context length.
        last_hidden: a module (from the root, ``?`` if optional) that HF applies after the final norm before
            returning its last hidden state (OPT's ``project_out``); else that state is the final norm's output,
            or the last block's output when there is no final norm.
        notes: what the sites mean where this family differs (shown by ``lamina check`` and the docs).
        discovered: True for adapters found by the generic fallback (:mod:`lamina.capture.discover`).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str = "model.layers"
    base: str | None = None
    attn_out: str = "self_attn.o_proj"
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    qkv: str | None = None
    qkv_layout: object = "concat"
    mlp_out: str = "mlp.down_proj"
    mlp_pre: str | None = "mlp.gate_proj"
    mlp_pre_linear: str | None = "mlp.up_proj"
    gate_up: str | None = None
    mlp_post: str | None = None
    final_norm: str | None = "model.norm"
    head: tuple[str, ...] = ("lm_head",)
    logits_fn: Callable[[object], Slicer | None] | None = None
    mlm_decoder: str | None = None
    masked_lm: bool = False
    residual_identity: bool = True
    absolute_positions: bool = False
    position_ids: bool = True
    moe: bool = False
    kv_heads: Callable[[object], int] | None = None
    reserved_positions: object = 0
    last_hidden: str | None = None
    notes: str = ""
    discovered: bool = False

    def __post_init__(self):
        if self.base is None:  # the base model holding the blocks: "model" for "model.layers"
            object.__setattr__(self, "base", self.blocks.split(".")[0])

    # -- derived views used by the capture code --------------------------------------------------------------
    @property
    def pre_norm(self) -> bool:
        """True when ``resid_post == resid_pre + attn_out + mlp_out`` (pre-norm, parallel, sandwich blocks)."""
        return self.residual_identity

    @property
    def gated_mlp(self) -> bool:
        return not self.moe and (self.gate_up is not None or self.mlp_pre_linear is not None)

    @property
    def extra(self) -> dict:
        return {"mlm_decoder": self.mlm_decoder} if self.mlm_decoder else {}


    def heads(self, config) -> tuple[int, int, int]:
        """``(n_heads, n_kv_heads, d_head)`` for this family."""
        return attention_shape(config, self.kv_heads)

    @cached_property
    def block_sites(self) -> dict[str, HookPoint]:
        """Site kind -> :class:`HookPoint` (paths from the root with ``{l}``), in forward order."""
        at = f"{self.blocks}.{{l}}".__add__
        sites = {"hook_resid_pre": HookPoint(at(""), "input"), "hook_resid_post": HookPoint(at("")),
                 "hook_attn_out": HookPoint(at("." + self.attn_out)),
                 "hook_mlp_out": HookPoint(at("." + self.mlp_out))}
        for i, kind in enumerate(("attn.hook_q", "attn.hook_k", "attn.hook_v")):
            if self.qkv:
                sites[kind] = HookPoint(at("." + self.qkv), part=_fused_qkv(i, self.qkv_layout, self.kv_heads))
            else:
                sites[kind] = HookPoint(at("." + (self.q, self.k, self.v)[i]))
        if not self.moe:
            if self.gate_up:
                sites["mlp.hook_pre"] = HookPoint(at("." + self.gate_up), part=_half(0))
                sites["mlp.hook_pre_linear"] = HookPoint(at("." + self.gate_up), part=_half(1))
            else:
                sites["mlp.hook_pre"] = HookPoint(at("." + self.mlp_pre))
                if self.mlp_pre_linear:
                    sites["mlp.hook_pre_linear"] = HookPoint(at("." + self.mlp_pre_linear))
            sites["mlp.hook_post"] = HookPoint(at("." + (self.mlp_post or self.mlp_out)), "input")
        return sites

    @cached_property
    def final_sites(self) -> dict[str, HookPoint]:
        """Non-block site name -> :class:`HookPoint`."""
        sites = {"ln_final.hook_out": HookPoint(self.final_norm)} if self.final_norm else {}
        sites["logits"] = HookPoint(self.head[-1].rstrip("?"), part=self.logits_fn)
        return sites

    @property
    def unavailable(self) -> dict[str, str]:
        """Site kinds this family does not have -> why (the one-line error for a request of one)."""
        out = {"ln_final.hook_normalized": _RENAMED_FINAL if self.final_norm else
               "this model has no final norm" + (" (post-norm blocks)" if not self.residual_identity else "")}
        if self.moe:
            why = ("this model's MLPs are mixtures of experts (each token goes through k of n experts, so there is "
                   "no single hidden layer of neurons); hook_mlp_out is the whole MoE block's output")
            out.update(dict.fromkeys(("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post"), why))
        elif not self.gated_mlp:
            out["mlp.hook_pre_linear"] = "this model's MLPs are not gated; only gated MLPs have a linear branch"
        return out

    def bind(self, hf: torch.nn.Module) -> ArchAdapter:
        """This adapter resolved against a real model: ``a|b`` alternatives and optional (``?``) modules.

        Raises:
            LaminaError: a module the family needs is missing (the model is not laid out like this family).
        """
        block = _get(hf, self.blocks)
        if not isinstance(block, torch.nn.ModuleList) or len(block) == 0:
            raise LaminaError(f"the {self.name} adapter expects blocks at {self.blocks!r}, which this model "
                              f"({type(hf).__name__}) does not have")
        changes = {}
        for name in ("attn_out", "q", "k", "v", "qkv", "mlp_out", "mlp_pre", "mlp_pre_linear", "gate_up",
                     "mlp_post"):
            if (self.moe and name in ("mlp_pre", "mlp_pre_linear", "gate_up", "mlp_post")) or (
                    self.qkv and name in ("q", "k", "v")) or (self.gate_up and name.startswith("mlp_pre")) \
                    or getattr(self, name) is None:
                continue
            changes[name] = _resolve(block[0], getattr(self, name), self.name, f"{self.blocks}.0.")
        for name in ("final_norm", "last_hidden"):
            if getattr(self, name):
                changes[name] = _resolve(hf, getattr(self, name), self.name, "", optional=True)
        changes["head"] = tuple(p for p in (_resolve(hf, h, self.name, "", optional=h.endswith("?"))
                                            for h in self.head) if p)
        if callable(self.residual_identity):  # depends on the config (OPT-350m, BLOOM variants)
            changes["residual_identity"] = bool(self.residual_identity(hf.config))
        if callable(self.reserved_positions):
            changes["reserved_positions"] = int(self.reserved_positions(hf.config))
        changes = {k: v for k, v in changes.items() if v != getattr(self, k)}
        return dataclasses.replace(self, **changes) if changes else self


def _get(root: torch.nn.Module, path: str):
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _resolve(root, path: str, family_name: str, shown: str, optional: bool = False) -> str | None:
    alternatives = path.rstrip("?").split("|")
    for candidate in alternatives:
        if _get(root, candidate) is not None:
            return candidate
    if optional:
        return None
    raise LaminaError(f"the {family_name} adapter expects module {shown}{path} but this model has none; "
                      "it is laid out differently (see docs/architectures.md to add an adapter)")


_FIELDS = tuple(f.name for f in dataclasses.fields(ArchAdapter))


def family(name: str, *model_types: str, like: ArchAdapter | None = None, **fields) -> ArchAdapter:
    """Define an architecture family: ``like``'s data (default: the Llama layout) with ``fields`` changed.

    Raises:
        LaminaError: an unknown field name (the message lists the valid ones).
    """
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise LaminaError(f"unknown adapter field(s) {', '.join(unknown)}; valid: {', '.join(_FIELDS[2:])}")
    if like is None:
        return ArchAdapter(name, tuple(model_types), **fields)
    if "blocks" in fields:
        fields.setdefault("base", None)  # recomputed from the new blocks path
    return dataclasses.replace(like, name=name, model_types=tuple(model_types), **fields)
