"""The study framework: a registry, typed frozen configs, and the runner that writes a report folder.

A study is registered with :func:`register` and provides:

- ``Config``: a frozen dataclass (defaults from the protocol, validated in ``__post_init__``);
- ``compute(model, config, inputs) -> StudyOutput``: the numbers (JSON-able ``results``, large ``arrays``
  for figures, the ``claims`` table, and ``resolved`` config values such as a scaled default layer);
- ``claims(output, config, baseline) -> list[dict]``: the claim records (:mod:`lamina.studies.claims`), decided
  from the computed output and, where the science needs that control, the same study's output on the seeded
  random-init copy of the model (``baseline``; None when that run was skipped);
- ``figures(output, folder) -> list[(file, caption)]``: drawing only, from the computed output
  (``output.baseline`` holds the random-init run's output, or None).
"""

from __future__ import annotations

import dataclasses
import platform
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._io import atomic_write_text, json_dumps
from .._version import __version__
from ..errors import LaminaError

__all__ = ["Study", "StudyOutput", "REGISTRY", "register", "get_study", "parse_overrides", "scaled_layer"]


@dataclass
class StudyOutput:
    """What a study computed: JSON-able results, arrays for figures, the claims table, resolved config."""

    results: dict
    claims: list[dict]
    resolved: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: The same study computed on the seeded random-init copy of the model (set by the runner), or None.
    baseline: "StudyOutput | None" = None


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    config_cls: type
    compute: Callable
    figures: Callable
    demo: bool = True  # run by `lamina demo`
    needs: str = "any"  # "any", "causal", "masked" or "none" (synthetic data, no model)
    module: str = ""  # the study's module, whose ``claims(output, config, baseline)`` decides its claims

    def decide_claims(self, output: "StudyOutput", config, baseline: "StudyOutput | None") -> list[dict]:
        """The claims of ``output``, each with the random-init baseline run's values beside it (when there is one).

        The module's ``claims`` is called on the baseline output too (without a baseline of its own); claims
        are matched by position, which every study keeps independent of the data.
        """
        import sys

        make = getattr(sys.modules.get(self.module), "claims", None)
        if make is None:  # a study that still builds its claims inside compute
            return list(output.claims)
        claims = make(output, config, baseline)
        if baseline is not None:
            for claim, base in zip(claims, make(baseline, config, None)):
                claim["baseline"] = {"measured": base.get("measured"), "verdict": base.get("verdict")}
        return claims


#: Registered studies by name.
REGISTRY: dict[str, Study] = {}


def register(name: str, description: str, config_cls: type, *, demo: bool = True, needs: str = "any"):
    """Decorator for a study module's ``compute``; ``figures`` is looked up beside it."""

    def deco(compute):
        import sys

        module = sys.modules[compute.__module__]
        def draw(output, folder):  # looked up at call time: `figures` is defined below `compute`
            return module.figures(output, folder)

        REGISTRY[name] = Study(name, description, config_cls, compute, draw, demo, needs, compute.__module__)
        return compute

    return deco


def get_study(name: str) -> Study:
    from . import _load_all

    _load_all()
    if name not in REGISTRY:
        raise LaminaError(f"unknown study {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _coerce(value: str, annotation, name: str):
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value.lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, name)
            except LaminaError as exc:
                errors.append(str(exc))
        raise LaminaError(f"--set {name}={value!r}: expected {annotation}")
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise LaminaError(f"--set {name}={value!r}: expected true or false")
    if annotation in (int, float):
        try:
            return annotation(value)
        except ValueError:
            raise LaminaError(f"--set {name}={value!r}: expected a {annotation.__name__}") from None
    if origin is tuple:
        return tuple(_coerce(v.strip(), args[0], name) for v in value.split(",") if v.strip())
    return value


def parse_overrides(config_cls: type, overrides: dict[str, object] | None):
    """Build a config from string (CLI) or typed overrides; unknown keys list the valid ones."""
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    kwargs = {}
    for key, value in overrides.items():
        if key not in names:
            raise LaminaError(f"unknown setting {key!r} for this study; valid: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], key) if isinstance(value, str) else value
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, LaminaError):
            raise
        raise LaminaError(f"invalid settings: {exc}") from None


def scaled_layer(reference_layer: int, reference_depth: int, n_layers: int) -> int:
    """The protocol's layer moved to a model of another depth: round(ref / ref_depth * n_layers)."""
    return int(min(n_layers - 1, max(0, round(reference_layer / reference_depth * n_layers))))


def environment() -> dict:
    """Package versions for the provenance file."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "lamina": __version__}
    for pkg in ("torch", "transformers", "numpy", "scipy", "scikit-learn", "numba", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def write_results(folder: Path, study: Study, model, config, output: StudyOutput, claims: list[dict] | None = None,
                  *, baseline_model=None, baseline_note: str | None = None, check: dict | None = None) -> dict:
    """Write ``results.json`` (deterministic: no timestamps), ``provenance.json`` and ``arrays.npz`` into
    ``folder`` (the runner's fresh temporary folder, swapped in whole when the report is complete).

    Args:
        claims: the decided claims (default: ``output.claims``).
        baseline_model: the random-init copy the baseline run used (its summary is recorded), or None.
        baseline_note: why the baseline run was skipped, when it was.
        check: the outcome of ``lamina check`` for this model, recorded in the provenance.
    """
    from .claims import tally

    claims = list(output.claims if claims is None else claims)
    config_block = {**dataclasses.asdict(config), **output.resolved}
    doc = {
        "study": study.name,
        "lamina_version": __version__,
        "model": model.summary(),
        "config": config_block,
        "results": output.results,
        "claims": claims,
        "verdicts": tally(claims),
    }
    if output.baseline is not None:
        doc["baseline"] = {"model": baseline_model.summary() if baseline_model is not None else None,
                           "results": output.baseline.results,
                           "resolved": output.baseline.resolved}
    else:
        doc["baseline"] = {"skipped": baseline_note or "no baseline run"}
    atomic_write_text(folder / "results.json", json_dumps(_finite(doc)) + "\n")
    provenance = {"environment": environment(), "model": model.provenance}
    if baseline_model is not None:
        provenance["baseline_model"] = baseline_model.provenance
    if check is not None:
        provenance["check"] = check
    atomic_write_text(folder / "provenance.json", json_dumps(_finite(provenance)) + "\n")
    if output.arrays:
        np.savez_compressed(folder / "arrays.npz", **output.arrays)
    return doc


def _finite(obj):
    """NaN/inf -> None so results.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
