"""Self-contained HTML reports (figures embedded as base64 PNG) and the index of all reports."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .._io import atomic_write_text
from ..studies.claims import VERDICTS, format_value, tally

__all__ = ["write_report", "write_index"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.yes{color:#0a7a2f;font-weight:600}
.no{color:#b00020;font-weight:600}.unk{color:#a06000;font-weight:600}.na{color:#777}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
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


_VERDICT_CLASS = {"holds": "yes", "does not hold": "no", "inconclusive": "unk", "not applicable": "na"}


def _verdict(c: dict) -> str:
    """The claim's verdict (reports written before verdicts existed carry ``holds`` instead)."""
    if "verdict" in c:
        return c["verdict"]
    holds = c.get("holds")
    return "not applicable" if holds is None else "holds" if holds else "does not hold"


def _null_cell(c: dict) -> str:
    null = c.get("null")
    if not null:
        return f"<span class='na'>none: {html.escape(c.get('null_reason') or '')}</span>"
    rest = {k: v for k, v in null.items() if k != "what"}
    return f"{html.escape(null['what'])}" + (f"<br>{html.escape(format_value(rest))}" if rest else "")


def _test_cell(c: dict) -> str:
    parts = []
    if c.get("test"):
        parts.append(html.escape(c["test"]))
    if c.get("p") is not None:
        parts.append(f"p = {format_value(c['p'])}")
    if c.get("ci"):
        parts.append(f"95% CI [{format_value(c['ci'][0])}, {format_value(c['ci'][1])}]")
    return "<br>".join(parts) or "<span class='na'>-</span>"


def _claims(claims: list[dict], has_baseline: bool) -> str:
    head = ("<tr><th>claim</th><th>source</th><th>criterion</th><th>measured</th><th>null</th><th>test</th>"
            "<th>verdict</th>" + ("<th>random-init baseline</th>" if has_baseline else "") + "</tr>")
    rows = []
    for c in claims:
        verdict = _verdict(c)
        claim = html.escape(c["claim"])
        if c.get("expected"):
            claim += f"<br><small>write-up: {html.escape(str(c['expected']))}</small>"
        if c.get("by_construction"):
            claim += f"<br><small class='na'>true by construction here, not counted: " \
                     f"{html.escape(c['by_construction'])}</small>"
        if c.get("note"):
            claim += f"<br><small>{html.escape(c['note'])}</small>"
        measured = c.get("measured")
        row = (f"<tr><td>{claim}</td><td>{html.escape(c.get('source', 'write-up'))}</td>"
               f"<td>{html.escape(c.get('criterion') or c.get('expected') or '')}</td>"
               f"<td>{html.escape(format_value(measured))}</td><td>{_null_cell(c)}</td><td>{_test_cell(c)}</td>"
               f"<td class='{_VERDICT_CLASS[verdict]}'>{verdict}</td>")
        if has_baseline:
            base = c.get("baseline") or {}
            row += (f"<td>{html.escape(format_value(base.get('measured')))}<br>"
                    f"<span class='{_VERDICT_CLASS.get(base.get('verdict'), 'na')}'>"
                    f"{html.escape(str(base.get('verdict') or 'n/a'))}</span></td>")
        rows.append(row + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _tally_text(claims: list[dict]) -> str:
    t = tally([{**c, "verdict": _verdict(c)} for c in claims])
    text = ", ".join(f"{t[v]} {v}" for v in VERDICTS if t[v])
    if t["by construction"]:
        text += f" ({t['by construction']} true by construction, not counted)"
    return text or "no claims"


def _scalars(results: dict) -> dict:
    return {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool)) or
            (isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (int, float, str)) for x in v))}


def write_report(folder: Path, doc: dict, figures: list[tuple[str, str]], *, seconds=None) -> Path:
    """Write ``report.html``: claims table (criterion, null, test, verdict, baseline), figures (embedded), key
    numbers, the resolved configuration and the model.

    Args:
        seconds: compute time, a number or ``{"study": s, "baseline": s}``.
    """
    folder = Path(folder)
    if isinstance(seconds, (int, float)):
        seconds = {"study": seconds}
    timing = " · ".join(f"{k} computed in {v:.1f} s" for k, v in (seconds or {}).items())
    baseline = doc.get("baseline") or {}
    has_baseline = "results" in baseline
    if has_baseline:
        base_text = (f"The same study was run on a seeded random-init copy of the model "
                     f"({html.escape(str((baseline.get('model') or {}).get('name', 'random-init')))}): its "
                     "values sit beside each claim and as grey dashed curves in the per-layer figures.")
    else:
        base_text = f"Random-init baseline: {html.escape(str(baseline.get('skipped', 'not run')))}."
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(doc['study'])} — "
             f"{html.escape(doc['model']['name'])}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(doc['study'])} on {html.escape(doc['model']['name'])}</h1>",
             f"<p>lamina {html.escape(doc['lamina_version'])}" + (f" · {timing}" if timing else "")
             + " · numbers in <a href='results.json'>results.json</a></p>",
             "<h2>Claims tested on this model</h2>",
             f"<p><b>{html.escape(_tally_text(doc['claims']))}.</b> Each verdict applies its criterion to the "
             "measured value against the null: <i>holds</i> (effect seen and beyond the null), <i>does not "
             "hold</i> (the estimate contradicts the claim), <i>inconclusive</i> (effect seen but within the "
             "null's spread, or underpowered), <i>not applicable</i>.</p>",
             f"<p id='baseline'>{base_text}</p>",
             _claims(doc["claims"], has_baseline), "<h2>Figures</h2>"]
    for file, caption in figures:
        data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)} (<a href='{html.escape(file)}'>{html.escape(file)}</a>)"
                     "</figcaption></figure>")
    parts += ["<h2>Key numbers</h2>", _table(_scalars(doc["results"]))]
    if has_baseline:
        parts += ["<h2>Key numbers of the random-init baseline</h2>", _table(_scalars(baseline["results"]))]
    parts += ["<h2>Configuration (resolved)</h2>", _table(doc["config"]),
              "<h2>Model</h2>", _table(doc["model"]), "</body></html>"]
    out = folder / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def _reports(root: Path):
    """Every complete report under ``root`` (temporary folders of runs in progress are skipped)."""
    for report in sorted(root.glob("**/report.html")):
        if any(part.startswith(".") for part in report.relative_to(root).parts):
            continue
        yield report


def write_index(root: Path) -> Path:
    """``root/index.html`` linking every ``report.html`` found under ``root``."""
    root = Path(root)
    rows = []
    for report in _reports(root):
        results = report.parent / "results.json"
        try:
            doc = json.loads(results.read_text(encoding="utf-8"))
            claims, model = doc.get("claims", []), doc["model"]
            t = tally([{**c, "verdict": _verdict(c)} for c in claims])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        link = html.escape(str(report.relative_to(root)))
        base = doc.get("baseline") or {}
        base_cell = f"<a href='{link}#baseline'>random-init</a>" if "results" in base else \
            f"<span class='na'>{html.escape(str(base.get('skipped', 'none')))}</span>"
        cells = "".join(f"<td class='{_VERDICT_CLASS[v]}'>{t[v]}</td>" for v in VERDICTS)
        rows.append(f"<tr><td><a href='{link}'>{html.escape(doc['study'])}</a></td>"
                    f"<td>{html.escape(model['name'])}</td><td>{model.get('n_layers')}</td>{cells}"
                    f"<td>{t['by construction']}</td><td>{base_cell}</td></tr>")
    heads = "".join(f"<th>{v}</th>" for v in VERDICTS)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lamina reports</title><style>{_STYLE}"
            "</style></head><body><h1>lamina reports</h1><p>Claims per verdict (claims true by construction on "
            "the model are shown in each report but not counted).</p><table><tr><th>study</th><th>model</th>"
            f"<th>blocks</th>{heads}<th>by construction</th><th>baseline</th></tr>{''.join(rows)}</table>"
            "</body></html>")
    out = root / "index.html"
    atomic_write_text(out, page)
    return out.resolve()
