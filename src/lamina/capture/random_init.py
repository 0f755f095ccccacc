"""Random-init copies of a model: the same architecture, config and tokenizer with seeded untrained weights
(the null model of every study's random-init baseline), built without a float32 host copy and, from a
:class:`RandomInitPlan`, without the trained model resident."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .models import Model

__all__ = ["RandomInitPlan", "random_init_copy"]


@dataclass
class RandomInitPlan:
    """What building a random-init copy of a model needs, without the model's weights: its class, config,
    buffers (rotary frequencies, masks: config constants, small), device, dtype, tokenizer and adapter. The
    trained model can be freed once the plan is made, so the copy never sits beside it (see the runner)."""

    module_class: type
    config: object
    buffers: dict
    device: torch.device
    dtype: torch.dtype
    tokenizer: object
    adapter: object
    name: str
    provenance: dict
    is_masked_lm: bool

    @classmethod
    def of(cls, model: "Model") -> "RandomInitPlan":
        config = copy.deepcopy(model.hf.config)
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        buffers = {n: b.detach().clone() for n, b in model.hf.named_buffers()}
        if any(b.is_meta for b in buffers.values()):  # a weightless model: its buffers from the config alone
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):  # parameters on meta, buffers computed for real
                skeleton = type(model.hf)._from_config(config, dtype=model.dtype)
            buffers = {n: b.detach().clone() for n, b in skeleton.named_buffers()}
        return cls(module_class=type(model.hf), config=config, buffers=buffers,
                   device=model.device, dtype=model.dtype, tokenizer=model.tokenizer, adapter=model.adapter,
                   name=model.name, provenance=dict(model.provenance), is_masked_lm=model.is_masked_lm)


def _initialised_on_device(plan: RandomInitPlan, seed: int):
    """Meta-device construction, storage on the target device and dtype, seeded HF init; None if some parameter
    is left uninitialised (it is filled with NaN first, so that shows)."""
    with torch.device("meta"):
        hf = plan.module_class._from_config(plan.config, dtype=plan.dtype)
    hf.to_empty(device=plan.device)
    try:
        with torch.no_grad():
            for p in hf.parameters():
                p.fill_(float("nan"))
            for name, buffer in hf.named_buffers():
                buffer.copy_(plan.buffers[name])
    except (KeyError, RuntimeError):  # a buffer the original does not have, or of another shape
        return None
    hf.tie_weights()  # to_empty unties shared weights; tied first, they draw like a CPU construction's
    devices = [plan.device] if plan.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hf.init_weights()
    with torch.no_grad():
        if any(bool(torch.isnan(p).any()) for p in hf.parameters() if p.is_floating_point()):
            return None
    return hf


def random_init_copy(model: "Model | RandomInitPlan", *, seed: int = 0) -> Model:
    """The same architecture, config and tokenizer with freshly initialised (untrained) weights.

    A real null model for any study: whatever a trained model shows that its random-init copy also shows
    comes from the architecture and the input statistics, not from learning. The module is built on the meta
    device, its storage allocated directly on the model's device in the model's dtype (no float32 host copy),
    and every weight drawn by the HF model's own ``_init_weights`` under ``torch.manual_seed(seed)`` -- the
    initialisation HF's ``from_pretrained`` gives missing weights. Buffers (rotary frequencies, causal masks)
    are config constants, copied from the original. For a float32 model on the CPU the weights equal those of
    ``from_config`` followed by a seeded ``initialize_weights()``; they differ from earlier lamina versions,
    which let torch's default initialisers draw first (same distributions, other numbers; the provenance's
    ``init`` field tells them apart). Draws in bfloat16/float16 or on a GPU are other numbers from the same
    distributions.

    ``model`` may be a :class:`RandomInitPlan` made before the trained model was freed (same result).
    """
    plan = model if isinstance(model, RandomInitPlan) else RandomInitPlan.of(model)
    hf = _initialised_on_device(plan, seed)
    init = "meta device, HF _init_weights"
    if hf is None:  # a parameter HF's _init_weights does not cover: the full float32 construction instead
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto_cls = AutoModelForMaskedLM if plan.is_masked_lm else AutoModelForCausalLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf = auto_cls.from_config(plan.config, dtype=torch.float32)
        hf.to(device=plan.device, dtype=plan.dtype)
        init = "float32 from_config, cast"
    hf.eval()
    name = f"{plan.name}-random-init"
    provenance = {"source": "random-init", "of": {k: v for k, v in plan.provenance.items() if k != "path"},
                  "seed": seed, "init": init, "name": name, "dtype": str(plan.dtype).replace("torch.", ""),
                  "model_type": plan.config.model_type}
    return Model(hf=hf, tokenizer=plan.tokenizer, adapter=plan.adapter, name=name, provenance=provenance)
