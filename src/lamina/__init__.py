"""lamina: measure what a transformer language model represents, layer by layer.

Top level (loaded lazily, so ``import lamina`` is cheap and has no side effects):

- :func:`load_model`, :func:`capture`, :class:`Activations`, :class:`Model`, :mod:`select` (``lamina.capture``)
- :mod:`lamina.stats`: pure statistics on arrays
- :mod:`lamina.studies`: registered, reproducible studies
- :class:`LaminaError`: the error type for user mistakes
- :func:`tune_malloc`: opt-in glibc tuning that makes large captures ~1.05x a plain forward pass
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import LaminaError

__all__ = [
    "Activations",
    "LaminaError",
    "Model",
    "__version__",
    "capture",
    "load_model",
    "residual_sites",
    "select",
    "stats",
    "studies",
    "tune_malloc",
]

_FROM_CAPTURE = {"Activations", "Model", "load_model", "residual_sites", "select"}
_SUBPACKAGES_CALLABLE = {"capture"}
_SUBPACKAGES = {"stats", "studies", "report"}


def __getattr__(name: str):
    if name == "tune_malloc":
        return importlib.import_module("._malloc", __name__).tune_malloc
    if name in _FROM_CAPTURE:
        return getattr(importlib.import_module(".capture", __name__), name)
    if name in _SUBPACKAGES or name in _SUBPACKAGES_CALLABLE:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")
