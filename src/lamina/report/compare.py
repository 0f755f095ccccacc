"""Overlay per-layer curves from several reports at relative depth (0 = first layer, 1 = last)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import LaminaError
from .figures import new_figure, save
from .html import write_report

__all__ = ["per_layer_curves", "compare_reports"]


def _flatten(row: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "layer":
            out[name] = float(value)
    return out


def per_layer_curves(doc: dict) -> dict[str, np.ndarray]:
    """Every numeric field of ``results.per_layer`` as a curve over layers (dotted names)."""
    rows = doc.get("results", {}).get("per_layer")
    if not rows:
        return {}
    flat = [_flatten(r) for r in rows]
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    return {k: np.array([np.nan if f[k] is None else f[k] for f in flat]) for k in keys}


def compare_reports(folders: list[Path], out: Path) -> Path:
    """Draw the per-layer curves shared by the reports of one study, at relative depth; returns the report."""
    docs = []
    for folder in folders:
        try:
            doc = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise LaminaError(f"{folder} has no readable results.json; pass folders written by 'lamina run'") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("study"), str) and isinstance(doc.get("model"), dict)
                and isinstance(doc.get("results"), dict)):
            raise LaminaError(f"{Path(folder) / 'results.json'} is not a lamina report (no study, model and results); "
                              "pass folders written by 'lamina run'")
        docs.append(doc)
    studies = {d["study"] for d in docs}
    if len(studies) != 1:
        raise LaminaError(f"compare reports of one study at a time (got {', '.join(sorted(studies))})")
    curves = [per_layer_curves(d) for d in docs]
    shared = [k for k in curves[0] if all(k in c for c in curves[1:])]
    if not shared:
        raise LaminaError("these reports have no per-layer curves in common")
    shared = shared[:12]
    out.mkdir(parents=True, exist_ok=True)
    cols = min(3, len(shared))
    rows = int(np.ceil(len(shared) / cols))
    fig, axes = new_figure(rows, cols)
    for i, key in enumerate(shared):
        ax = axes[i // cols, i % cols]
        for doc, c in zip(docs, curves):
            y = c[key]
            ax.plot(np.linspace(0, 1, len(y)), y, label=f"{doc['model']['name']} ({len(y)})")
        ax.set(title=key, xlabel="relative depth")
    for j in range(len(shared), rows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    figure = save(fig, out, "compare")
    doc = {"study": f"compare: {studies.pop()}", "lamina_version": docs[0]["lamina_version"],
           "model": {"name": " vs ".join(d["model"]["name"] for d in docs)},
           "config": {"reports": [str(f) for f in folders]}, "results": {"curves": shared}, "claims": []}
    return write_report(out, doc, [(figure, "Per-layer curves at relative depth")])
