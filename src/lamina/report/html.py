"""Self-contained HTML reports (figures embedded as base64 PNG) and the index of all reports."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .._io import atomic_write_text

__all__ = ["write_report", "write_index"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.yes{color:#0a7a2f;font-weight:600}
.no{color:#b00020;font-weight:600}.na{color:#777}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return html.escape(json.dumps(value[:12]))[:-1] + ", ...]"
    if isinstance(value, (dict, list, tuple)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _claims(claims: list[dict]) -> str:
    head = ("<tr><th>claim</th><th>source</th><th>expected</th><th>measured here</th><th>holds</th></tr>")
    rows = []
    for c in claims:
        holds = c.get("holds")
        cls, word = ("yes", "yes") if holds else ("na", "n/a") if holds is None else ("no", "no")
        rows.append(f"<tr><td>{html.escape(c['claim'])}</td><td>{html.escape(c.get('source', 'write-up'))}</td>"
                    f"<td>{html.escape(str(c['expected']))}</td>"
                    f"<td>{_fmt(c['measured'])}</td><td class='{cls}'>{word}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _scalars(results: dict) -> dict:
    return {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool)) or
            (isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (int, float, str)) for x in v))}


def write_report(folder: Path, doc: dict, figures: list[tuple[str, str]], *, seconds: float | None = None) -> Path:
    """Write ``report.html``: config, model provenance, claims table, figures (embedded) and key numbers."""
    folder = Path(folder)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(doc['study'])} — "
             f"{html.escape(doc['model']['name'])}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(doc['study'])} on {html.escape(doc['model']['name'])}</h1>",
             f"<p>lamina {html.escape(doc['lamina_version'])}"
             + (f" · computed in {seconds:.1f} s" if seconds is not None else "")
             + " · numbers in <a href='results.json'>results.json</a></p>",
             "<h2>Claims of the write-up, tested on this model</h2>", _claims(doc["claims"]),
             "<h2>Figures</h2>"]
    for file, caption in figures:
        data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)} (<a href='{html.escape(file)}'>{html.escape(file)}</a>)"
                     "</figcaption></figure>")
    parts += ["<h2>Key numbers</h2>", _table(_scalars(doc["results"])),
              "<h2>Configuration (resolved)</h2>", _table(doc["config"]),
              "<h2>Model</h2>", _table(doc["model"]), "</body></html>"]
    out = folder / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def write_index(root: Path) -> Path:
    """``root/index.html`` linking every ``report.html`` found under ``root``."""
    root = Path(root)
    rows = []
    for report in sorted(root.glob("**/report.html")):
        results = report.parent / "results.json"
        try:
            doc = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        claims = doc.get("claims", [])
        held = sum(1 for c in claims if c.get("holds"))
        rows.append(f"<tr><td><a href='{html.escape(str(report.relative_to(root)))}'>{html.escape(doc['study'])}"
                    f"</a></td><td>{html.escape(doc['model']['name'])}</td><td>{doc['model'].get('n_layers')}</td>"
                    f"<td>{held} / {len(claims)}</td></tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lamina reports</title><style>{_STYLE}"
            "</style></head><body><h1>lamina reports</h1><table><tr><th>study</th><th>model</th><th>blocks</th>"
            f"<th>claims holding</th></tr>{''.join(rows)}</table></body></html>")
    out = root / "index.html"
    atomic_write_text(out, page)
    return out.resolve()
