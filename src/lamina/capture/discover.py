"""The generic fallback for a model type without an adapter: find its sites by structure and common names.

The search looks for the ``ModuleList`` of ``num_hidden_layers`` identical blocks, then, inside block 0, the
attention module and its separate q/k/v projections and output projection, the MLP and its down projection (and
gate/up projections), the final norm and the LM head. The adapter it builds is accepted only if the model passes
:func:`lamina.capture.check.check_model` (logits untouched by the hooks, residual sites equal to HF's hidden
states, ``resid_post == resid_pre + attn_out + mlp_out``, padding-independent captures, q/k/v widths); otherwise
loading fails with one line naming what was found and what failed or was missing.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import LaminaError
from .adapters import ArchAdapter, family

__all__ = ["bind_adapter", "discover_adapter", "accept_discovered"]

_ATTN = ("self_attn", "attn", "attention", "self_attention", "attn_layer")
_Q = ("q_proj", "query", "q", "wq", "q_lin", "query_proj")
_K = ("k_proj", "key", "k", "wk", "k_lin", "key_proj")
_V = ("v_proj", "value", "v", "wv", "v_lin", "value_proj")
_FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv", "wqkv", "in_proj")
_O = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o", "out_lin", "Wo", "proj")
_MLP = ("mlp", "feed_forward", "ffn", "ff", "block_sparse_moe", "moe")
_DOWN = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "fc_out", "wo", "lin2", "Wo", "out_proj")
_GATE = ("gate_proj", "w1")
_UP = ("up_proj", "w3")
_UP_PLAIN = ("up_proj", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "lin1", "w1")
_FINAL_NORM = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm", "norm_f")
_HEAD = ("lm_head", "embed_out", "output")
_POSITIONS = ("wpe", "embed_positions", "position_embeddings")


def bind_adapter(hf: torch.nn.Module, adapter: ArchAdapter | None) -> ArchAdapter:
    """The registered adapter resolved against ``hf``, or (``adapter`` None) one found by :func:`discover_adapter`."""
    return adapter.bind(hf) if adapter is not None else discover_adapter(hf)


def _out_width(module: torch.nn.Module) -> int | None:
    """Output width of a linear-like module (``nn.Linear``, GPT-2's ``Conv1D``, ...), None for anything else."""
    for attr in ("out_features", "nf"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, torch.nn.Embedding):
        return int(weight.shape[0])
    return None


def _find(modules: dict[str, torch.nn.Module], names, under: str = "", width: int | None = None,
          linear: bool = True) -> str | None:
    """The shallowest module path below ``under`` whose last name is in ``names`` (and, optionally, is linear
    with output ``width``)."""
    prefix = under + "." if under else ""
    hits = []
    for path, module in modules.items():
        if not path.startswith(prefix) or path.rsplit(".", 1)[-1] not in names:
            continue
        out = _out_width(module)
        if linear and (out is None or (width is not None and out != width)):
            continue
        hits.append((path.count("."), names.index(path.rsplit(".", 1)[-1]), path))
    return min(hits)[2] if hits else None


def _blocks(hf: torch.nn.Module, n_layers: int) -> str | None:
    candidates = []
    for path, module in hf.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and n_layers > 0 \
                and len({type(m) for m in module}) == 1:
            candidates.append((sum(p.numel() for p in module.parameters()), path))
    return max(candidates)[1] if candidates else None


def discover_adapter(hf: torch.nn.Module) -> ArchAdapter:
    """Build an adapter for ``hf`` from its module tree (see the module docstring).

    Raises:
        LaminaError: a part could not be located; the message names what was found and what is missing.
    """
    config = hf.config
    model_type = getattr(config, "model_type", "?")
    d_model = int(config.hidden_size)
    found: dict[str, str] = {}
    missing: list[str] = []
    blocks = _blocks(hf, int(getattr(config, "num_hidden_layers", 0) or 0))
    if blocks is None:
        raise LaminaError(f"model type {model_type!r} has no adapter and the generic search found no list of "
                          f"{getattr(config, 'num_hidden_layers', '?')} identical blocks; add an adapter "
                          "(docs/architectures.md)")
    found["blocks"] = blocks
    inner = dict(hf.get_submodule(blocks)[0].named_modules())
    attn = _find(inner, _ATTN, linear=False) or ""
    qkv = {name: _find(inner, names, attn) for name, names in (("q", _Q), ("k", _K), ("v", _V))}
    for name, path in qkv.items():
        if path:
            found[name] = path
    if not all(qkv.values()):
        fused = _find(inner, _FUSED_QKV, attn)
        missing.append("separate q/k/v projections" + (f" (fused {fused!r} has no known layout)" if fused else ""))
    attn_out = _find(inner, _O, attn, width=d_model) if attn else None
    if attn_out:
        found["attn_out"] = attn_out
    else:
        missing.append("attention output projection")
    mlp = _find(inner, _MLP, linear=False)
    moe = mlp is not None and any(p.startswith(mlp + ".experts") for p in inner)
    mlp_out = mlp if moe else (_find(inner, _DOWN, mlp, width=d_model) if mlp else None)
    if mlp_out:
        found["mlp_out"] = mlp_out
    else:
        missing.append("MLP down projection")
    gate = up = None
    if mlp and not moe:
        gate, up = _find(inner, _GATE, mlp), _find(inner, _UP, mlp)
        if not (gate and up):
            gate, up = _find(inner, _UP_PLAIN, mlp), None
        if gate is None:
            missing.append("MLP up projection")
    top = dict(hf.named_modules())
    base = blocks.split(".")[0]
    final_norm = _find({p: m for p, m in top.items() if p.count(".") <= blocks.count(".")}, _FINAL_NORM, base,
                       linear=False)
    head = _find({p: m for p, m in top.items() if "." not in p}, _HEAD)
    if head is None:
        missing.append("LM head")
    if missing:
        shown = ", ".join(f"{k}={v}" for k, v in found.items()) or "nothing"
        raise LaminaError(f"model type {model_type!r} has no adapter and the generic search found {shown} but not: "
                          f"{'; '.join(missing)}; add an adapter (docs/architectures.md)")
    accepts = inspect.signature(hf.get_submodule(base).forward).parameters
    return family(
        f"generic:{model_type}", model_type, blocks=blocks, q=qkv["q"], k=qkv["k"], v=qkv["v"], qkv=None,
        attn_out=attn_out, mlp_out=mlp_out, mlp_pre=gate if not moe else None, mlp_pre_linear=up, gate_up=None,
        mlp_post=None, final_norm=final_norm, head=(head,), moe=moe, discovered=True,
        masked_lm=any("MaskedLM" in a for a in (getattr(config, "architectures", None) or [])),
        absolute_positions=any(_find(top, (name,), base, linear=False) for name in _POSITIONS),
        position_ids="position_ids" in accepts,
        notes=f"found by the generic search (no {model_type} adapter): "
              + ", ".join(f"{k}={v}" for k, v in found.items()),
    )


def accept_discovered(model):
    """Run the self-check on a model with a discovered adapter (once per model hash); return the model if every
    check passes.

    Raises:
        LaminaError: a check failed (one line: the adapter found and the failed checks).
    """
    from .check import ensure_checked

    outcome = ensure_checked(model)
    if outcome["passed"]:
        return model
    failed = "; ".join(f"{c['name']} ({c['detail']})" for c in outcome["checks"] if c["passed"] is False)
    raise LaminaError(f"model type {model.config.model_type!r} has no adapter and the generic one ("
                      f"{model.adapter.notes.split(': ', 1)[-1]}) failed its self-check: {failed}; add an adapter "
                      "(docs/architectures.md)")
