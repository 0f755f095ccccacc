"""Run a study end to end: load the model, compute, write results.json, figures and report.html."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ..errors import LaminaError
from .base import REGISTRY, get_study, parse_overrides, write_results

__all__ = ["run_study", "run_demo", "StudyInputs", "load_cached"]

_MODELS: dict[tuple, object] = {}


class StudyInputs(dict):
    """User-supplied inputs: ``text`` (from --text-file) and ``corpus`` (from --corpus), else None."""


def load_cached(spec, device="cpu", dtype=None):
    """Load a model once per process (studies that compare models reuse it); a loaded Model passes through."""
    from ..capture import load_model

    if not isinstance(spec, (str, Path)):
        return spec  # an already loaded Model
    key = (str(spec), str(device), str(dtype))
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device=device, dtype=dtype)
    return _MODELS[key]


class NoModel:
    """Stands in for a model in studies that need none (``needs="none"``, e.g. synthetic data)."""

    name = "synthetic"
    provenance = {"source": "none: synthetic data generated from the config's seed"}
    is_masked_lm = False

    def summary(self) -> dict:
        return {"name": "synthetic data (no model)", "n_layers": None}


def _read(path) -> str | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LaminaError(f"cannot read {path}: {exc.strerror}") from None
    if not text.strip():
        raise LaminaError(f"{path} is empty; pass a file with some text")
    return text


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def run_study(name: str, *, model="default", out=None, text_file=None, corpus=None, overrides=None,
              device="cpu", dtype=None, reports_root: str | Path = "reports") -> Path:
    """Run one study and write its report folder.

    Args:
        name: a registered study (``lamina list``).
        model: a model spec for :func:`lamina.load_model`, or a loaded :class:`~lamina.Model`.
        out: output folder (default ``reports/<study>/<model-name>/``).
        text_file, corpus: the user's own text / corpus file.
        overrides: config field -> value (strings are parsed by the field's type).
        device, dtype: where and how to load the model.

    Returns:
        The output folder (with results.json, provenance.json, figures and report.html).
    """
    from ..report.html import write_index, write_report

    study = get_study(name)
    config = parse_overrides(study.config_cls, overrides)
    loaded = NoModel() if study.needs == "none" else load_cached(model, device, dtype)
    if study.needs == "masked" and not loaded.is_masked_lm:
        raise LaminaError(f"study {name!r} needs a masked LM (BERT); {loaded.name} is a causal LM")
    if study.needs == "causal" and loaded.is_masked_lm:
        raise LaminaError(f"study {name!r} needs a causal LM; {loaded.name} is a masked LM")
    folder = Path(out) if out else Path(reports_root) / name / _slug(loaded.name)
    inputs = StudyInputs(text=_read(text_file), corpus=_read(corpus), text_file=text_file, corpus_file=corpus)
    started = time.perf_counter()
    output = study.compute(loaded, config, inputs)
    doc = write_results(folder, study, loaded, config, output)
    figures = study.figures(output, folder)
    write_report(folder, doc, figures, seconds=time.perf_counter() - started)
    root = Path(reports_root)
    if folder.resolve().is_relative_to(root.resolve()):
        write_index(root)
    return folder


def run_demo(model="default", root: Path = Path("reports"), device="cpu", only=None) -> Path:
    """Run every demo study on one model; returns ``reports/index.html``."""
    from ..report.html import write_index
    from . import _load_all

    _load_all()
    names = only or [n for n, s in REGISTRY.items() if s.demo]
    loaded = load_cached(model, device, None)
    for name in names:
        study = get_study(name)
        if study.needs == "masked" and not loaded.is_masked_lm:
            print(f"skip {name}: needs a masked LM (BERT)")
            continue
        if study.needs == "causal" and loaded.is_masked_lm:
            print(f"skip {name}: needs a causal LM")
            continue
        started = time.perf_counter()
        folder = run_study(name, model=NoModel() if study.needs == "none" else loaded, reports_root=root)
        print(f"{name}: {time.perf_counter() - started:.1f} s -> {folder / 'report.html'}")
    return write_index(root)
