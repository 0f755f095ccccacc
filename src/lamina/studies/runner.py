"""Run a study end to end: load the model, compute, write results.json, figures and report.html."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import LaminaError
from .base import REGISTRY, get_study, parse_overrides, write_results

__all__ = ["run_study", "run_demo", "StudyInputs", "load_cached"]

_MODELS: dict[tuple, object] = {}

#: What ``--baseline`` accepts.
BASELINES = ("random-init", "none")


class StudyInputs(dict):
    """User-supplied inputs: ``text`` (from --text-file) and ``corpus`` (from --corpus), else None."""


#: The user inputs each built-in study reads (``text``: --text-file, ``corpus``: --corpus). A file given to a
#: study that would ignore it is refused before anything loads (a silently unused file looks like a result on
#: the user's text). tests/test_cli_faults.py checks this table against the studies' sources.
READS: dict[str, tuple[str, ...]] = {
    "coffee-mi": ("text",),
    "effective-dim": ("text", "corpus"),
    "logit-lens": ("text",),
    "mi-layers": ("text",),
    "mi-theory": (),
    "path-length": ("text",),
    "punctuation-clusters": ("corpus",),
    "qkv-layers": ("text",),
    "qkv-similarity": ("text",),
    "rsa-categories": ("text",),
    "token-length": ("corpus",),
}


def load_cached(spec, device="cpu", dtype=None, weights: bool = True):
    """Load a model, reusing the last one loaded if it is the same; a loaded Model passes through.

    One model is resident at a time: loading another first drops the previous one (and its random-init
    baseline) and frees its memory, so ``--model A --model B --model C`` never holds two sets of weights.
    """
    from ..capture import Model, load_model

    if isinstance(spec, (Model, NoModel)):
        return spec  # an already loaded Model
    if not isinstance(spec, (str, Path)):
        raise LaminaError(f"model must be a name, a path or a loaded lamina Model, not {type(spec).__name__}; "
                          "e.g. model='default' or model=lamina.load_model(...)")
    key = (str(spec), str(device), str(dtype)) + (() if weights else ("weightless",))
    if key not in _MODELS:
        release_models()
        _MODELS[key] = load_model(spec, device=device, dtype=dtype, **({} if weights else {"weights": False}))
    return _MODELS[key]


def release_models() -> None:
    """Drop the loaded model and its random-init baseline and free their memory."""
    _MODELS.clear()
    globals().get("_BASELINES", {}).clear()
    _free_memory()


def _free_memory() -> None:
    """Collect dropped models now (HF modules hold reference cycles) and return cached GPU blocks."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class NoModel:
    """Stands in for a model in studies that need none (``needs="none"``, e.g. synthetic data)."""

    name = "synthetic"
    provenance = {"source": "none: synthetic data generated from the config's seed"}
    is_masked_lm = False

    def summary(self) -> dict:
        return {"name": "synthetic data (no model)", "n_layers": None}


class ModelRecord:
    """What a report needs of a model whose weights were freed (its summary and provenance)."""

    def __init__(self, model):
        self.name, self.provenance, self.is_masked_lm = model.name, dict(model.provenance), model.is_masked_lm
        self._summary = model.summary()

    def summary(self) -> dict:
        return dict(self._summary)


def _weight_bytes(hf) -> int:
    """Bytes of a module's parameters and buffers held in memory (tied weights once; offloaded ones not)."""
    storages = {}
    for t in list(hf.parameters()) + list(hf.buffers()):
        if t.device.type != "meta":
            storages[(t.device, t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
    return sum(storages.values())


def _free_bytes(device) -> int | None:
    """Memory free for a new allocation now: the GPU's free memory, or MemAvailable on a Linux host; None when
    unknown (then nothing is decided from it)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def baseline_fits_beside(model) -> bool:
    """Whether the random-init copy can be built while ``model`` stays loaded: its weights plus as much again
    (the study's working memory: captured rows, reducer states) must fit in what the device has free now.
    If not, the runner frees the trained model first (it is reloaded when needed again)."""
    free = _free_bytes(model.device)
    return free is None or 2 * _weight_bytes(model.hf) <= free


def check_local_baseline_fits(model) -> None:
    """With ``--remote`` the random-init baseline is still built and run here (NDIF hosts trained models only),
    in float32 on the CPU: refuse it in one line, before any remote work, when it would not fit."""
    params = sum(p.numel() for p in model.hf.parameters())
    need = 4 * params
    free = _free_bytes(__import__("torch").device("cpu"))
    if free is not None and 2 * need > free:
        raise LaminaError(f"the random-init baseline of {model.name} would be built here: {need / 1e9:.1f} GB of "
                          f"float32 weights, with {free / 1e9:.1f} GB free; pass --baseline none (the report says "
                          "the baseline was skipped)")


def _read(path, option: str = "--text-file") -> str | None:
    """A user's text file (UTF-8, not empty), or None when none was given."""
    from .._preflight import read_text_file

    return None if path is None else read_text_file(path, option)


def read_inputs(name: str, text_file=None, corpus=None) -> StudyInputs:
    """The user's files for study ``name``, checked (read by the study, UTF-8 text, not empty) and read.

    Cheap (no model, no torch import): the CLI calls it first so a wrong file costs well under a second.
    """
    reads = READS.get(name, ("text", "corpus"))  # a study registered outside lamina: it decides itself
    for given, key, option in ((text_file, "text", "--text-file"), (corpus, "corpus", "--corpus")):
        if given is not None and key not in reads:
            other = {"text": "--text-file", "corpus": "--corpus"}
            uses = " or ".join(other[k] for k in reads)
            raise LaminaError(f"study {name!r} does not read {option}; "
                              + (f"pass your file as {uses}" if uses else "drop it (this study uses no text)"))
    return StudyInputs(text=_read(text_file, "--text-file"), corpus=_read(corpus, "--corpus"),
                       text_file=text_file, corpus_file=corpus)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def run_study(name: str, *, model="default", out=None, text_file=None, corpus=None, overrides=None,
              device="cpu", dtype=None, reports_root: str | Path = "reports", baseline: str = "random-init",
              backend: str = "hooks", remote: bool = False) -> Path:
    """Run one study and write its report folder.

    Args:
        name: a registered study (``lamina list``).
        model: a model spec for :func:`lamina.load_model`, or a loaded :class:`~lamina.Model`.
        out: output folder (default ``reports/<study>/<model-name>/``).
        text_file, corpus: the user's own text / corpus file.
        overrides: config field -> value (strings are parsed by the field's type).
        device, dtype: where and how to load the model.
        baseline: ``"random-init"`` also runs the study on the seeded random-init copy of the model (the
            architecture's null model: its values sit beside each claim and in the per-layer figures);
            ``"none"`` skips it (the report says so).
        backend, remote: how the study's captures read the model (``"hooks"`` or ``"nnsight"``; ``remote`` runs
            them on NDIF, see :mod:`lamina.capture.ndif`). The random-init baseline exists only on this machine:
            it is always computed locally (with ``remote``, by the nnsight backend locally).

    Returns:
        The output folder (with results.json, provenance.json, figures and report.html).
    """
    from ..report.html import write_index

    if baseline not in BASELINES:
        raise LaminaError(f"--baseline {baseline!r} is not valid; choose one of: {', '.join(BASELINES)}")
    from .._preflight import check_output_folder, check_writable

    from ..capture.backend_nnsight import check_backend, using_backend

    study = get_study(name)
    # Everything the user passed is checked before the model loads: a mistake costs a second, not a load.
    check_backend(backend, remote)
    if remote:
        from ..capture.ndif import api_key

        api_key()  # a missing key: one line before anything loads
    config = parse_overrides(study.config_cls, overrides)
    inputs = read_inputs(name, text_file, corpus)
    if out is not None:
        check_output_folder(out, "--out", legacy=legacy_report_files)
    else:
        check_writable(reports_root, "reports folder")
    owned = isinstance(model, (str, Path))  # loaded here from a name or path: the runner may free and reload it
    # --remote: the model runs on NDIF; here only its config and tokenizer are read (no weights).
    loaded = NoModel() if study.needs == "none" else load_cached(model, device, dtype, weights=not remote)
    if remote and baseline != "none" and study.needs != "none":
        check_local_baseline_fits(loaded)
    if study.needs == "masked" and not loaded.is_masked_lm:
        raise LaminaError(f"study {name!r} needs a masked LM (BERT); {loaded.name} is a causal LM")
    if study.needs == "causal" and loaded.is_masked_lm:
        raise LaminaError(f"study {name!r} needs a causal LM; {loaded.name} is a masked LM")
    if study.needs != "none" and hasattr(config, "check_model"):
        config.check_model(loaded)  # settings whose range depends on the model (layer, top_k): before compute
    folder = Path(out) if out is not None else Path(reports_root) / name / _slug(loaded.name)
    if out is None:
        check_output_folder(folder, "report folder", legacy=legacy_report_files)
    if study.needs == "none":
        check = None
    elif remote:
        check = {"passed": None, "skipped": "captured on NDIF: no local weights to check"}
    else:
        check = model_check(loaded)
    started = time.perf_counter()
    with using_backend(backend, remote):
        output = study.compute(loaded, config, inputs)
    seconds = {"study": time.perf_counter() - started}
    baseline_model, note = None, None
    if baseline == "none":
        note = "skipped: --baseline none"
    elif study.needs == "none":
        note = "not applicable: this study uses no model"
    else:
        mark = time.perf_counter()
        if owned and not baseline_fits_beside(loaded):
            # One model resident at a time: what the copy needs is kept (config, buffers), the trained weights
            # are freed before the copy is allocated, and the report keeps the trained model's summary.
            from ..capture.random_init import RandomInitPlan

            plan = RandomInitPlan.of(loaded)
            loaded = ModelRecord(loaded)
            release_models()
            baseline_model = random_baseline(plan)
        else:
            baseline_model = random_baseline(loaded)
        with using_backend(backend, False):
            output.baseline = study.compute(baseline_model, config, inputs)
        seconds["baseline"] = time.perf_counter() - mark
    claims = study.decide_claims(output, config, output.baseline)
    _write_folder(folder, study, loaded, config, output, claims, baseline_model, note, seconds, check)
    root = Path(reports_root)
    if folder.resolve().is_relative_to(root.resolve()):
        write_index(root)
    return folder


def model_check(model) -> dict:
    """``lamina check`` for ``model``, run the first time a model is used and remembered per model hash; a
    failed check is reported in one line and recorded in the run's provenance (the run goes on)."""
    import sys

    from ..capture.check import ensure_checked

    outcome = ensure_checked(model)
    if not outcome.get("passed"):
        print(f"warning: {model.name} fails `lamina check` (see provenance.json); its captures may be inexact",
              file=sys.stderr)
    return outcome


def _write_folder(folder: Path, study, loaded, config, output, claims, baseline_model, note, seconds,
                  check=None) -> None:
    """Results, figures and report written into a fresh temporary sibling, swapped in whole when complete: the
    folder always holds one run's complete report (this one, or the previous one after a Ctrl-C)."""
    from .._io import atomic_dir
    from ..report.html import write_report

    with atomic_dir(folder, exists="replace", legacy=legacy_report_files) as tmp:
        doc = write_results(tmp, study, loaded, config, output, claims, baseline_model=baseline_model,
                            baseline_note=note, check=check)
        figures = study.figures(output, tmp)
        write_report(tmp, doc, figures, seconds=seconds)


def legacy_report_files(folder: Path) -> set[str] | None:
    """The files of a report folder written before lamina kept manifests (results.json names a lamina study):
    results, provenance, arrays, report and the figures the report links; None for any other folder."""
    try:
        doc = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or "lamina_version" not in doc or "study" not in doc:
        return None
    files = {f for f in ("results.json", "provenance.json", "arrays.npz", "report.html") if (folder / f).is_file()}
    try:
        page = (folder / "report.html").read_text(encoding="utf-8")
    except OSError:
        page = ""
    linked = re.findall(r"<a href='([^'/]+\.(?:png|svg))'>", page)
    return files | {f for f in linked if (folder / f).is_file()}


_BASELINES: dict[int, object] = {}


def random_baseline(model):
    """The seeded random-init copy of ``model`` (seed 0), built once per loaded model and process; ``model``
    may be a :class:`~lamina.capture.models.RandomInitPlan` of a model already freed (then built, not kept)."""
    from ..capture import random_init_copy
    from ..capture.random_init import RandomInitPlan

    if isinstance(model, RandomInitPlan):
        return random_init_copy(model, seed=0)
    key = id(model)
    if key not in _BASELINES:
        _BASELINES.clear()  # one baseline resident at a time
        _BASELINES[key] = (model, random_init_copy(model, seed=0))  # keep `model` alive so its id stays unique
    return _BASELINES[key][1]


def run_demo(model="default", root: Path = Path("reports"), device="cpu", only=None,
             baseline: str = "random-init") -> Path:
    """Run every demo study on one model; returns ``reports/index.html``."""
    from ..report.html import write_index
    from . import _load_all

    _load_all()
    names = only or [n for n, s in REGISTRY.items() if s.demo]
    masked = load_cached(model, device, None).is_masked_lm  # no reference kept: the runner may free the model
    for name in names:
        study = get_study(name)
        if study.needs == "masked" and not masked:
            print(f"skip {name}: needs a masked LM (BERT)")
            continue
        if study.needs == "causal" and masked:
            print(f"skip {name}: needs a causal LM")
            continue
        started = time.perf_counter()
        # A name or path (not the loaded Model): the runner reuses the loaded model, and may free it while a
        # baseline that would not fit beside it runs (reloaded for the next study).
        folder = run_study(name, model=NoModel() if study.needs == "none" else model, device=device,
                           reports_root=root, baseline=baseline)
        print(f"{name}: {time.perf_counter() - started:.1f} s -> {folder / 'report.html'}")
    return write_index(root)
