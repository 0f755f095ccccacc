"""Registered, reproducible studies. ``lamina list`` shows them; ``lamina run NAME`` runs one."""

from __future__ import annotations

import importlib

from .base import REGISTRY, Study, StudyOutput, get_study, register
from .claims import VERDICTS, Claim, decide
from .runner import run_demo, run_study

__all__ = ["REGISTRY", "VERDICTS", "Claim", "Study", "StudyOutput", "decide", "get_study", "register", "run_demo",
           "run_study"]

_MODULES = (
    "coffee_mi",
    "punctuation_clusters",
    "path_length",
    "token_length",
    "qkv_similarity",
    "mi_theory",
    "mi_layers",
    "qkv_layers",
    "rsa_categories",
    "effective_dim",
    "logit_lens",
)


def _load_all() -> None:
    """Import every study module so it registers itself (kept lazy: importing lamina stays cheap)."""
    for module in _MODULES:
        try:
            importlib.import_module(f".{module}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
