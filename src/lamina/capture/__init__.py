"""Load models, name their sites, and capture activations exactly (hooks on the real HF modules)."""

from . import select
from .activations import Activations, Rows
from .adapters import ADAPTERS, ArchAdapter, HookPoint, adapter_for_name
from .models import Model, load_model
from .random_init import RandomInitPlan, random_init_copy
from . import reduce
from .reduced import Reduced, capture_reduced
from .run import capture, measure_widths, residual_sites, tokenize

__all__ = [
    "ADAPTERS",
    "Activations",
    "ArchAdapter",
    "HookPoint",
    "Model",
    "RandomInitPlan",
    "Reduced",
    "Rows",
    "adapter_for_name",
    "capture",
    "capture_reduced",
    "load_model",
    "measure_widths",
    "random_init_copy",
    "reduce",
    "residual_sites",
    "select",
    "tokenize",
]


class _CallableModule(__import__("types").ModuleType):
    """``lamina.capture`` is both this package and the :func:`capture` function: calling it captures."""

    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
