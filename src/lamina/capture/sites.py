"""Site names: enumerate, parse and select them with glob patterns."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable

from ..errors import LaminaError
from .adapters import ArchAdapter, HookPoint

__all__ = ["site_names", "parse_site", "resolve_sites", "hook_point"]

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


def resolve_sites(patterns: str | Iterable[str], available: list[str]) -> list[str]:
    """Expand site names and glob patterns against ``available``, keeping forward order, no duplicates.

    Args:
        patterns: a name, a glob (``"blocks.*.hook_resid_post"``, ``"blocks.3.*"``), a comma-separated
            string of them, or a list.
        available: every site name of the model, in forward order.

    Raises:
        LaminaError: a pattern matching no site (the message lists the site kinds).
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
            kinds = sorted({parse_site(s)[1] for s in available})
            n_layers = 1 + max((parse_site(s)[0] or 0) for s in available)
            raise LaminaError(
                f"unknown site {pattern!r}; sites are blocks.{{0..{n_layers - 1}}}.<kind> with kind in "
                f"{', '.join(kinds)} "
                "(run 'lamina sites MODEL' to list them)"
            )
        chosen.update(matched)
    return [s for s in available if s in chosen]
