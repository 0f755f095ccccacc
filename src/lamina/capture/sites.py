"""Site names: enumerate, parse and select them with glob patterns."""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterable

import torch

from ..errors import LaminaError
from .adapters import ArchAdapter, HookPoint

__all__ = ["site_names", "parse_site", "resolve_sites", "hook_point", "readout"]

_BLOCK_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def site_names(adapter: ArchAdapter, n_layers: int) -> list[str]:
    """All site names of a model, in forward order (block 0 first, then final sites)."""
    names = [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in adapter.block_sites]
    return names + list(adapter.final_sites)


def parse_site(name: str) -> tuple[int | None, str]:
    """Split ``"blocks.3.attn.hook_q"`` into ``(3, "attn.hook_q")``; final sites give ``(None, name)``."""
    match = _BLOCK_SITE.match(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, name


def hook_point(adapter: ArchAdapter, name: str) -> HookPoint:
    layer, kind = parse_site(name)
    if layer is None:
        return adapter.final_sites[kind]
    return adapter.block_sites[kind]


def readout(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own map from a residual-stream state to logits, on the real modules: the final norm (if any),
    then the head's modules in turn (BERT's whole MLM head, OPT's project_out, ...), then any logit transform
    (Gemma's soft-cap, Cohere's scale). Applied to the last residual state it gives the model's logits.

    Args:
        model: a loaded :class:`~lamina.capture.models.Model`.

    Returns:
        A function of a tensor of shape (..., d_model) returning logits of shape (..., vocab).
    """
    adapter = model.adapter
    modules = [model.module(adapter.final_norm)] if adapter.final_norm else []
    modules += [model.module(path) for path in adapter.head]
    point = adapter.final_sites["logits"]
    transform = point.part(model.config) if point.part else None

    def apply(x: torch.Tensor) -> torch.Tensor:
        for module in modules:
            x = module(x)
        return transform(x) if transform is not None else x

    return apply


def resolve_sites(patterns: str | Iterable[str], available: list[str],
                  unavailable: dict[str, str] | None = None) -> list[str]:
    """Expand site names and glob patterns against ``available``, keeping forward order, no duplicates.

    Args:
        patterns: a name, a glob (``"blocks.*.hook_resid_post"``, ``"blocks.3.*"``), a comma-separated
            string of them, or a list.
        available: every site name of the model, in forward order.
        unavailable: site kind -> why the model lacks it (a request of one raises that reason).

    Raises:
        LaminaError: a pattern matching no site (the message gives the reason or lists the site kinds).
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    patterns = list(patterns)
    if not patterns:
        raise LaminaError("no sites requested; pass site names or patterns such as 'blocks.*.hook_resid_post'")
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [s for s in available if fnmatch.fnmatchcase(s, pattern)]
        if not matched:
            for kind, why in (unavailable or {}).items():
                if fnmatch.fnmatchcase(kind, pattern) or fnmatch.fnmatchcase(f"blocks.0.{kind}", pattern) \
                        or pattern.endswith("." + kind):
                    raise LaminaError(f"site {pattern!r} is not available: {why}")
            kinds = sorted({parse_site(s)[1] for s in available})
            n_layers = 1 + max((parse_site(s)[0] or 0) for s in available)
            raise LaminaError(
                f"unknown site {pattern!r}; sites are blocks.{{0..{n_layers - 1}}}.<kind> with kind in "
                f"{', '.join(kinds)} "
                "(run 'lamina sites MODEL' to list them)"
            )
        chosen.update(matched)
    return [s for s in available if s in chosen]
