"""Claims: what a study tests, by which rule, against which null, and the verdict.

A claim is a plain JSON-able record (so ``results.json`` keeps all of it) made and validated by :func:`Claim`:

- ``claim``: the finding in words; ``source``: ``"write-up"`` (the published study states it) or ``"lamina"`` (a
  check or an expectation lamina adds where the write-up states none); ``expected``: what the write-up reported;
- ``criterion``: the exact rule applied, in words (shown in the report);
- ``measured``: the measured values at full precision (the report rounds them for people);
- ``null``: the value under the null model or chance with its spread (``{"what": ..., "mean": ..., "sd": ...}``),
  or ``null_reason``: why no null applies (an exact identity, a protocol check);
- ``test``, ``p``, ``ci``: the test used and its p-value and/or a confidence interval;
- ``verdict``: one of :data:`VERDICTS` (see :func:`decide`);
- ``by_construction``: a reason when the claim is true by construction on this architecture; such claims are
  shown but not counted in the totals;
- ``baseline``: filled by the runner with the same claim's measured values and verdict on the seeded
  random-init copy of the model (the null model of the architecture), when that run was made.
"""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["VERDICTS", "Claim", "decide", "tally", "format_value"]

#: The four verdicts, in the order the report lists them.
VERDICTS = ("holds", "does not hold", "inconclusive", "not applicable")
_SOURCES = ("write-up", "lamina")


def Claim(claim: str, *, source: str, criterion: str, measured: dict, verdict: str,  # noqa: N802 - a record
          null: dict | None = None, null_reason: str | None = None, test: str | None = None,
          p: float | None = None, ci=None, expected: str | None = None, by_construction: str | None = None,
          note: str | None = None) -> dict:
    """Build and validate one claim record.

    Args:
        claim: the finding in words.
        source: ``"write-up"`` or ``"lamina"``.
        criterion: the exact rule that decides the verdict.
        measured: name -> value (numbers at full precision, or short strings).
        verdict: one of :data:`VERDICTS`, usually from :func:`decide`.
        null: the null model's value and spread; needs a ``"what"`` key saying what the null is.
        null_reason: required when ``null`` is None: why no null applies.
        test: the name of the statistical test, if any.
        p: its p-value.
        ci: ``(lo, hi)`` confidence interval of the headline measured value.
        expected: what the write-up reported.
        by_construction: the reason the claim cannot fail on this architecture (then it is not counted).
        note: anything else the reader should know.

    Returns:
        A JSON-able dict with every field (``counted`` says whether it enters the totals).

    Raises:
        ValueError: an unknown verdict or source, a null without ``what``, or neither null nor null_reason.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS} (got {verdict!r})")
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES} (got {source!r})")
    if not criterion:
        raise ValueError("a claim needs its criterion: the exact rule that decides the verdict")
    if null is None and not null_reason:
        raise ValueError(f"claim {claim!r}: give a null (value under the null model) or a null_reason")
    if null is not None and "what" not in null:
        raise ValueError(f"claim {claim!r}: the null needs a 'what' saying what the null model is")
    if not isinstance(measured, dict):
        raise ValueError(f"claim {claim!r}: measured must be a dict name -> value")
    if ci is not None:
        ci = [float(ci[0]), float(ci[1])]
    return {
        "claim": claim,
        "source": source,
        "expected": expected,
        "criterion": criterion,
        "measured": measured,
        "null": null,
        "null_reason": null_reason,
        "test": test,
        "p": None if p is None else float(p),
        "ci": ci,
        "verdict": verdict,
        "by_construction": by_construction,
        "counted": by_construction is None and verdict != "not applicable",
        "note": note,
        "baseline": None,
    }


def decide(effect: bool | None, significant: bool | None = True, *, applicable: bool = True) -> str:
    """The verdict from the two questions every claim asks.

    Args:
        effect: does the point estimate show what the claim says (direction and size)? None: it cannot be
            computed here (too few items, a degenerate input).
        significant: is it distinguishable from the null (``p < alpha`` or outside the null's band)? None is
            treated as not shown.
        applicable: False when the claim does not apply to this model (e.g. a position-embedding claim on a
            rotary model).

    Returns:
        ``"not applicable"``; ``"inconclusive"`` when the effect cannot be computed, or is seen but not
        distinguishable from the null; ``"does not hold"`` when the estimate contradicts the claim;
        ``"holds"`` when the effect is seen and beats the null.
    """
    if not applicable:
        return "not applicable"
    if effect is None:
        return "inconclusive"
    if not bool(effect):
        return "does not hold"
    return "holds" if significant else "inconclusive"


def tally(claims: list[dict]) -> dict[str, int]:
    """Counts per verdict over the counted claims (by-construction and n.a. claims excluded), plus
    ``"by construction"``: how many were shown but not counted."""
    counts = Counter(c.get("verdict") for c in claims if c.get("counted", True) and c.get("verdict") in VERDICTS)
    out = {v: counts.get(v, 0) for v in VERDICTS}
    out["not applicable"] = sum(1 for c in claims if c.get("verdict") == "not applicable")
    out["by construction"] = sum(1 for c in claims if c.get("by_construction"))
    return out


def format_value(value, digits: int = 3) -> str:
    """A number or a small structure rounded for people (``0.3675428`` -> ``0.368``; ``1.2e-07``)."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits, len(str(int(abs(value)))))}g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(v, digits) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return "; ".join(f"{k} {format_value(v, digits)}" for k, v in value.items())
    try:  # numpy scalars
        return format_value(value.item(), digits)
    except AttributeError:
        return str(value)
