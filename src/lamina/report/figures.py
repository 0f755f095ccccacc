"""Shared drawing helpers (matplotlib, Agg backend). They draw what they are given; they never compute
statistics."""

from __future__ import annotations

from pathlib import Path

__all__ = ["new_figure", "save", "layer_ticks"]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    size = size or (4.6 * ncols, 3.6 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kwargs)
    return fig, axes


def save(fig, folder: Path, name: str, *, svg: bool = False) -> str:
    """Save ``name.png`` (and ``name.svg``) into ``folder``; returns the PNG file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(Path(folder) / f"{name}.png", dpi=110)
    if svg:
        fig.savefig(Path(folder) / f"{name}.svg")
    plt.close(fig)
    return f"{name}.png"


def layer_ticks(ax, n: int) -> None:
    step = max(1, n // 12)
    ax.set_xticks(range(0, n, step))
