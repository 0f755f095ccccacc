"""Load models, name their sites, and capture activations exactly (hooks on the real HF modules)."""

from . import select
from .activations import Activations, Rows
from .adapters import ADAPTERS, ArchAdapter, HookPoint, adapter_for_name
from .models import Model, load_model, random_init_copy
from .run import capture, measure_widths, residual_sites, tokenize

__all__ = [
    "ADAPTERS",
    "Activations",
    "ArchAdapter",
    "HookPoint",
    "Model",
    "Rows",
    "adapter_for_name",
    "capture",
    "load_model",
    "measure_widths",
    "random_init_copy",
    "residual_sites",
    "select",
    "tokenize",
]


class _CallableModule(__import__("types").ModuleType):
    """``lamina.capture`` is both this package and the :func:`capture` function: calling it captures."""

    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
