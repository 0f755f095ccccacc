"""The ``lamina`` command line: a thin layer over the Python API.

``main(argv)`` returns the exit status (0 ok, 2 user error) and never raises for user mistakes: a
:class:`~lamina.errors.LaminaError` prints one line ``error: ...`` to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LaminaError

__all__ = ["main"]


def _cmd_sites(args) -> int:
    from .capture import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    names = model.sites(args.pattern) if args.pattern else model.sites()
    widths = model.site_widths()
    if args.json:
        print(json.dumps({"model": model.summary(), "sites": {s: widths[s] for s in names}}, indent=2))
    else:
        print(f"# {model.name}: {model.arch}, {model.n_layers} blocks, d_model {model.d_model}")
        for name in names:
            print(f"{name}\t{widths[name]}")
    return 0


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LaminaError(f"cannot read {path}: {exc.strerror}") from None


def _cmd_capture(args) -> int:
    from .capture import capture, load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    text = _read_text(args.text_file)
    texts = [t for t in text.split("\n\n") if t.strip()] if args.split_paragraphs else [text]
    acts = capture(model, texts, args.sites, positions=args.positions, batch_size=args.batch_size,
                   progress=not args.quiet)
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

    if args.clear:
        for kind in args.clear:
            print(f"cleared {kind}: {clear_cache(kind) / 1024**3:.2f} GB")
    print(describe())
    return 0


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LaminaError(f"--set {pair!r} is not key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _cmd_run(args) -> int:
    from .report.compare import compare_reports
    from .studies import run_study

    models = args.model or ["default"]
    several = len(models) > 1
    root = Path(args.out) if several and args.out else Path("reports")
    folders = []
    for model in models:  # several models: each under ROOT/<study>/<model>/, then the overlay
        out = run_study(args.study, model=model, out=None if several else args.out, text_file=args.text_file,
                        corpus=args.corpus, overrides=_parse_sets(args.set), device=args.device,
                        dtype=args.dtype, reports_root=root)
        folders.append(out)
        print(f"report: {out / 'report.html'}")
    if several:
        print(f"comparison: {compare_reports(folders, root / args.study / 'compare')}")
    return 0


def _cmd_demo(args) -> int:
    from .studies import run_demo

    index = run_demo(model=args.model, root=Path(args.reports), device=args.device, only=args.only)
    print(f"index: {index}")
    return 0


def _cmd_compare(args) -> int:
    from .report.compare import compare_reports

    out = compare_reports([Path(p) for p in args.reports], Path(args.out))
    print(f"comparison: {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="Measure what a transformer represents, layer "
                                     "by layer.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_opts(p, multiple=False):
        if multiple:
            p.add_argument("--model", action="append", help="model: 'default', a hub id, a folder or a .gguf "
                           "file (repeat to compare models)")
        p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
        p.add_argument("--dtype", default=None, help="weight dtype (float32 default; bf16, fp16)")

    p = sub.add_parser("sites", help="list a model's site names and widths")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--pattern", help="glob pattern(s), comma-separated")
    p.add_argument("--json", action="store_true")
    model_opts(p)
    p.set_defaults(func=_cmd_sites)

    p = sub.add_parser("capture", help="capture activations of a text file and save them")
    p.add_argument("model")
    p.add_argument("--text-file", required=True)
    p.add_argument("--sites", required=True, help="site names or globs, comma-separated")
    p.add_argument("--positions", default="all", help="all | word:WORD | index:N")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--split-paragraphs", action="store_true", help="one text per blank-line-separated paragraph")
    p.add_argument("--quiet", action="store_true")
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
    model_opts(p, multiple=True)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run every demo study on a model and write reports/index.html")
    p.add_argument("--model", default="default")
    p.add_argument("--reports", default="reports")
    p.add_argument("--only", action="append", help="run only these studies")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("cache", help="show the on-disk cache (size per kind, limit) or clear it")
    p.add_argument("--clear", action="append", choices=["activations", "models"],
                   help="delete every entry of this kind (repeatable)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("compare", help="overlay per-layer curves of several reports at relative depth")
    p.add_argument("reports", nargs="+")
    p.add_argument("--out", default="reports/compare")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    from ._malloc import tune_malloc

    tune_malloc()  # our own process: keep large freed blocks for reuse (see lamina/_malloc.py)
    try:
        return args.func(args)
    except LaminaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept in the cache; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
