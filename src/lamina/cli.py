"""The ``lamina`` command line: a thin layer over the Python API.

``main(argv)`` returns the exit status (0 ok, 2 user error, 130 interrupted) and never raises for user mistakes:
a :class:`~lamina.errors.LaminaError` or a usage mistake prints one line ``error: ...`` to stderr. Options,
settings, input files, the output folder and the device are checked before any model loads, so a mistake
costs a second; a real bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LaminaError

__all__ = ["main"]


class _UsageError(Exception):
    """A command-line mistake argparse found (unknown option, missing or malformed value)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: lamina run: ...``) instead of usage text and ``sys.exit``."""

    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}; see '{self.prog} --help'")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 (got {value!r})")
    return number


def _check_model_opts(args, specs: list[str] | None = None, weights: bool = True) -> None:
    """--device, --dtype and the model specs (what can be known without loading), checked before any load;
    ``weights=False``: the model will be loaded without weights (a folder needs no weight files)."""
    from .capture.model_checks import check_device, check_spec
    from .capture.models import resolve_dtype

    check_device(args.device)
    resolve_dtype(getattr(args, "dtype", None))
    _device_map(args)
    for spec in specs if specs is not None else [args.model]:
        check_spec(spec, weights=weights)


def _check_backend_opts(args) -> None:
    """--backend / --remote, before anything loads: the backend exists, nnsight is installed, the NDIF key is in
    the environment, and no local placement option is given with --remote."""
    from .capture.backend_nnsight import check_backend

    check_backend(args.backend, args.remote)
    if args.remote:
        from .capture.ndif import api_key

        api_key()  # a missing key costs a second, not a load
        if args.device_map or args.device != "cpu":
            raise LaminaError("--remote runs the model on NDIF and loads no weights here, so --device and "
                              "--device-map do not apply; drop them")


def _device_map(args):
    """--device-map parsed (a strategy, or a JSON map inline or in a file), or None."""
    if not getattr(args, "device_map", None):
        return None
    from .capture.devices import parse_device_map

    return parse_device_map(args.device_map)


def _check_cache_settings() -> None:
    """Environment settings of the cache ($LAMINA_CACHE_MAX_GB), checked before any work."""
    from .cache import cache_limit_bytes

    cache_limit_bytes()


def _cmd_sites(args) -> int:
    from .capture import load_model

    _check_model_opts(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=_device_map(args))
    names = model.sites(args.pattern) if args.pattern else model.sites()
    widths = model.site_widths()
    if args.json:
        print(json.dumps({"model": model.summary(), "sites": {s: widths[s] for s in names}}, indent=2))
    else:
        print(f"# {model.name}: {model.arch}, {model.n_layers} blocks, d_model {model.d_model}")
        for name in names:
            print(f"{name}\t{widths[name]}")
    return 0


def _cmd_check(args) -> int:
    from .capture import load_model

    _check_model_opts(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=_device_map(args))
    report = model.check()
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1


def _cmd_capture(args) -> int:
    from ._preflight import check_output_folder, read_text_file

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites:
        raise LaminaError("--sites is empty; pass site names or patterns such as 'blocks.*.hook_resid_post' "
                          "(lamina sites MODEL lists them)")
    text = read_text_file(args.text_file)  # the cheap checks first: no torch import needed
    texts = [t for t in text.split("\n\n") if t.strip()] if args.split_paragraphs else [text]
    from .capture import capture, load_model
    from .capture.activations import _legacy_files
    from .capture.select import parse_positions

    positions = parse_positions(args.positions)
    _check_backend_opts(args)
    check_output_folder(args.out, legacy=_legacy_files)
    _check_model_opts(args, weights=not args.remote)
    # --remote: only the config and tokenizer are read; the module tree is built on the meta device
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=_device_map(args),
                       weights=not args.remote)
    acts = capture(model, texts, sites, positions=positions, batch_size=args.batch_size,
                   progress=not args.quiet, backend=args.backend, remote=args.remote)
    out = acts.save(args.out)
    print(f"captured {len(acts)} rows x {len(acts.sites)} sites -> {out}")
    return 0


def _cmd_list(args) -> int:
    from .studies import REGISTRY, _load_all

    _load_all()
    width = max(len(n) for n in REGISTRY)
    for name, study in REGISTRY.items():
        print(f"{name:<{width}}  {study.description}")
    return 0


def _cmd_info(args) -> int:
    import dataclasses
    import inspect

    from .studies import get_study

    study = get_study(args.study)
    print(f"{study.name}: {study.description}")
    needs = {"any": "any model", "causal": "a causal LM", "masked": "a masked LM", "none": "no model"}
    print(f"needs: {needs.get(study.needs, study.needs)}; in the demo: {'yes' if study.demo else 'no'}")
    print("settings (--set key=value):")
    for f in dataclasses.fields(study.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        print(f"  {f.name} = {default!r}")
    doc = inspect.cleandoc(study.config_cls.__doc__ or "")
    if "Attributes:" in doc:
        print("\n" + doc[doc.index("Attributes:"):])
    return 0


def _cmd_cache(args) -> int:
    from .cache import clear_cache, describe

    _check_cache_settings()
    if args.clear:
        for kind in args.clear:
            print(f"cleared {kind}: {clear_cache(kind) / 1024**3:.2f} GB")
    print(describe())
    return 0


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LaminaError(f"--set {pair!r} is not key=value; e.g. --set bins=20 (lamina info STUDY lists "
                              "the settings)")
        if key in out:
            raise LaminaError(f"--set {key} is given twice ({key}={out[key]} and {key}={value.strip()}); keep one")
        out[key] = value.strip()
    return out


def _cmd_run(args) -> int:
    from ._preflight import check_writable
    from .studies.runner import read_inputs

    models = args.model or ["default"]
    twice = next((m for i, m in enumerate(models) if m in models[:i]), None)
    if twice is not None:
        raise LaminaError(f"--model {twice} is given twice; pass each model once")
    overrides = _parse_sets(args.set)
    read_inputs(args.study, args.text_file, args.corpus)  # the cheap checks first: no torch import needed
    _check_cache_settings()
    from .studies import get_study, run_study

    study = get_study(args.study)
    if study.needs == "none" and args.model:
        raise LaminaError(f"study {args.study!r} uses no model (synthetic data); drop --model")
    _check_backend_opts(args)
    # Every model now: a typo in the last --model must not wait until the first ones are computed.
    _check_model_opts(args, [] if study.needs == "none" else models, weights=not args.remote)
    several = len(models) > 1
    root = Path(args.out) if several and args.out else Path("reports")
    if several:
        if args.out is not None and not args.out.strip():
            raise LaminaError("--out is empty; name a folder for the reports")
        check_writable(root, "--out" if args.out else "reports folder")
    folders = []
    for model in models:  # several models: each under ROOT/<study>/<model>/, then the overlay
        if _device_map(args) is not None and study.needs != "none":  # a split model: loaded here, passed in
            from .capture import load_model

            model = load_model(model, device=args.device, dtype=args.dtype, device_map=_device_map(args))
        out = run_study(args.study, model=model, out=None if several else args.out, text_file=args.text_file,
                        corpus=args.corpus, overrides=overrides, device=args.device,
                        dtype=args.dtype, reports_root=root, baseline=args.baseline, backend=args.backend,
                        remote=args.remote)
        folders.append(out)
        print(f"report: {out / 'report.html'}")
    if several:
        from .report.compare import compare_reports

        print(f"comparison: {compare_reports(folders, root / args.study / 'compare')}")
    return 0


def _cmd_demo(args) -> int:
    from ._preflight import check_writable
    from .studies import get_study, run_demo

    _check_cache_settings()
    check_writable(args.reports, "--reports")
    for name in args.only or []:
        get_study(name)
    _check_model_opts(args, [args.model])
    index = run_demo(model=args.model, root=Path(args.reports), device=args.device, only=args.only,
                     baseline=args.baseline)
    print(f"index: {index}")
    return 0


def _cmd_compare(args) -> int:
    from ._preflight import check_writable
    from .report.compare import compare_reports

    check_writable(args.out, "--out")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise LaminaError(f"--out {args.out} is a file, not a folder; choose a folder for the comparison")
    out = compare_reports([Path(p) for p in args.reports], Path(args.out))
    print(f"comparison: {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lamina", description="Measure what a transformer represents, layer "
                                     "by layer.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_opts(p, multiple=False):
        if multiple:
            p.add_argument("--model", action="append", help="model: 'default', a hub id, a folder or a .gguf "
                           "file (repeat to compare models)")
        p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
        p.add_argument("--device-map", default=None, help="split the model over devices with accelerate: auto, "
                       "balanced, sequential, or a JSON map {module: device} (inline or a .json file)")
        p.add_argument("--dtype", default=None, help="weight dtype (float32 default; bf16, fp16)")

    def baseline_opt(p):
        p.add_argument("--baseline", default="random-init", choices=["random-init", "none"],
                       help="also run the study on a seeded random-init copy of the model, the null model its "
                       "claims are compared with (default: random-init)")

    def backend_opts(p):
        p.add_argument("--backend", default="hooks", choices=["hooks", "nnsight"], help="read sites with "
                       "forward hooks (default) or nnsight tracing (same numbers)")
        p.add_argument("--remote", action="store_true", help="with --backend nnsight: run on NDIF (API key from "
                       "$NDIF_API_KEY); only the selected rows and reducer states come back")

    p = sub.add_parser("sites", help="list a model's site names and widths")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--pattern", help="glob pattern(s), comma-separated")
    p.add_argument("--json", action="store_true")
    model_opts(p)
    p.set_defaults(func=_cmd_sites)

    p = sub.add_parser("check", help="verify a model's sites (hooks, hidden states, residual identity, padding, "
                       "widths); exit status 1 if a check fails")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--json", action="store_true")
    model_opts(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("capture", help="capture activations of a text file and save them")
    p.add_argument("model")
    p.add_argument("--text-file", required=True)
    p.add_argument("--sites", required=True, help="site names or globs, comma-separated")
    p.add_argument("--positions", default="all", help="all | word:WORD | index:N")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=_positive_int, default=None, help="texts per forward pass (default: "
                   "packs ~4096 tokens per pass)")
    p.add_argument("--split-paragraphs", action="store_true", help="one text per blank-line-separated paragraph")
    p.add_argument("--quiet", action="store_true")
    backend_opts(p)
    model_opts(p)
    p.set_defaults(func=_cmd_capture)

    p = sub.add_parser("list", help="list the registered studies")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="describe a study and its settings")
    p.add_argument("study")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("run", help="run a study and write its report")
    p.add_argument("study")
    p.add_argument("--out", default=None, help="output folder (default reports/<study>/<model>/); with several "
                   "--model, the root of their folders and of the comparison")
    p.add_argument("--text-file", default=None)
    p.add_argument("--corpus", default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    baseline_opt(p)
    backend_opts(p)
    model_opts(p, multiple=True)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run every demo study on a model and write reports/index.html")
    p.add_argument("--model", default="default")
    p.add_argument("--reports", default="reports")
    p.add_argument("--only", action="append", help="run only these studies")
    baseline_opt(p)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("cache", help="show the on-disk cache (size per kind, limit) or clear it")
    p.add_argument("--clear", action="append", choices=["activations", "store", "models"],
                   help="delete every entry of this kind (repeatable)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("compare", help="overlay per-layer curves of several reports at relative depth")
    p.add_argument("reports", nargs="+")
    p.add_argument("--out", default="reports/compare")
    p.set_defaults(func=_cmd_compare)
    return parser


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        from ._malloc import tune_malloc

        tune_malloc()  # our own process: keep large freed blocks for reuse (see lamina/_malloc.py)
        return args.func(args)
    except (LaminaError, _UsageError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept in the cache; run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lamina sites | head`: the reader left; say nothing more
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not raise BrokenPipeError again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured by a test)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
