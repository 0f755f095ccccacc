"""Models without weights: the module tree built from the config on the meta device, for remote capture.

``load_model(spec, weights=False)`` reads only a model's config and tokenizer, and builds its HF module tree on
PyTorch's ``meta`` device: every parameter has its shape and dtype but no storage, so no weight file is read and
no weight byte allocated (a 70B model's tree builds in seconds on a laptop). Its sites are named and ordered
exactly as for the loaded model (the same module tree, the same adapter), and :func:`probe_pass` gives their
widths and forward order without computing anything: a one-token forward pass under torch's ``FakeTensorMode``,
which propagates only shapes and dtypes (nnsight's ``scan`` runs the same machinery). Such a model captures only
remotely (``backend="nnsight", remote=True``): NDIF holds the weights and runs the forward passes.

Two things a fake forward pass cannot do that a real one does, handled here: transformers' grouped-matmul MoE
kernel has a meta kernel that accepts only bfloat16 inputs, so the probe runs mixture-of-experts layers with the
``batched_mm`` implementation (the same shapes); and inputs are created on the meta device beside the weights
(ModernBERT mixes its inputs' and weights' devices otherwise).
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import LaminaError
from .hooks import StopForward, hooked

__all__ = ["build_weightless", "is_weightless", "probe_pass", "require_weights"]


def build_weightless(auto_cls, config, dtype: torch.dtype) -> torch.nn.Module:
    """The HF module tree of ``config`` on the meta device (no storage), in eval mode.

    Args:
        auto_cls: ``AutoModelForCausalLM`` or ``AutoModelForMaskedLM``.
        config: the model's HF config.
        dtype: the parameters' dtype (shapes are what matter; this is what ``Model.dtype`` reports).
    """
    with torch.device("meta"):
        hf = auto_cls.from_config(config, dtype=dtype)
    hf.eval()
    return hf


def is_weightless(hf: torch.nn.Module) -> bool:
    """True when the module holds no weights (its parameters are on the meta device)."""
    first = next(hf.parameters(), None)
    return first is not None and first.is_meta


def require_weights(model, what: str = "capture") -> None:
    """Raise the one-line error for running ``model`` locally when it was loaded without weights.

    Raises:
        LaminaError: ``model`` is weightless.
    """
    if model.weightless:
        raise LaminaError(f"{model.name} was loaded without weights (weights=False), so it cannot {what} "
                          "locally; load it with weights or capture remotely with backend='nnsight', remote=True "
                          "(--backend nnsight --remote)")


@contextlib.contextmanager
def _batched_experts(hf: torch.nn.Module):
    """Within the block, mixture-of-experts layers use transformers' ``batched_mm`` experts (see module docs)."""
    configs = {id(c): c for c in [hf.config, *(getattr(m, "config", None) for m in hf.modules())]
               if c is not None and getattr(c, "_experts_implementation", None) == "grouped_mm"}
    for c in configs.values():
        c._experts_implementation = "batched_mm"
    try:
        yield
    finally:
        for c in configs.values():
            c._experts_implementation = "grouped_mm"


def probe_pass(model, hooks: dict) -> None:
    """One forward pass over a single token with ``hooks`` attached (``(module path, io) -> fn(tensor)``, as
    :func:`lamina.capture.hooks.hooked`); a hook may raise ``StopForward`` to end it early.

    On a loaded model the pass is real; on a weightless one it runs under ``FakeTensorMode``, so the hooks see
    fake tensors with the real shapes and dtypes and no data (what widths and the forward order need).
    """
    from .run import forward_kwargs

    token = model.tokenizer.eos_token_id or 0
    if not model.weightless:
        ids = torch.tensor([[token]], device=model.device)
        with torch.no_grad(), hooked(model.hf, hooks):
            try:
                model.hf(**forward_kwargs(model, ids, torch.ones_like(ids)))
            except StopForward:
                pass
        return
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # Static shapes: every size is a plain int, as in a real pass (no symbolic sizes reach the hooks).
    fake = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(assume_static_by_default=True))
    with torch.no_grad(), _batched_experts(model.hf), hooked(model.hf, hooks), fake:
        ids = torch.full((1, 1), token, dtype=torch.long, device="meta")
        try:
            model.hf(**forward_kwargs(model, ids, torch.ones_like(ids)))
        except StopForward:
            pass
