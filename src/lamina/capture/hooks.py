"""Hooks on real HF modules, alive only inside a context manager that always removes them."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

__all__ = ["hooked", "StopForward"]

TensorFn = Callable[[torch.Tensor], None]


class StopForward(Exception):
    """Raised by a hook once every requested site has been read, to skip the rest of the forward pass."""


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "to_tuple"):  # a transformers ModelOutput
        return value.to_tuple()[0]
    raise TypeError(f"cannot read a tensor from {type(value).__name__}")


@contextlib.contextmanager
def hooked(root: torch.nn.Module, hooks: dict[tuple[str, str], TensorFn]) -> Iterator[None]:
    """Attach ``fn(tensor)`` to modules for the duration of the ``with`` block.

    Args:
        root: the model.
        hooks: ``(module_path, io) -> fn`` where ``io`` is ``"output"`` (the module's output, first element of
            a tuple) or ``"input"`` (its first positional input, or ``hidden_states`` if passed by keyword).
            ``fn`` only reads; the module's output is returned unchanged.
    """
    handles = []
    try:
        for (path, io), fn in hooks.items():
            module = root.get_submodule(path)
            if io == "output":
                handles.append(module.register_forward_hook(
                    lambda _m, _args, out, fn=fn: fn(_first_tensor(out))))
            elif io == "input":
                def pre_hook(_m, args, kwargs, fn=fn):
                    fn(args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()))))
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                raise ValueError(f"io must be 'input' or 'output', not {io!r}")
        yield
    finally:
        for handle in handles:
            handle.remove()
