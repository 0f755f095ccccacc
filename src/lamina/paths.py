"""Where lamina keeps its on-disk cache (converted models, captured activations, file hashes)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """The user cache directory (``$LAMINA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lamina``, else
    ``~/.cache/lamina``), joined with ``parts``. Nothing is created here."""
    root = os.environ.get("LAMINA_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "lamina")
    return Path(root).joinpath(*parts)
