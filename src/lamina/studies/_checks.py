"""Range checks for study settings (``--set key=value``): each raises one-line :class:`LaminaError` naming the
setting, the allowed range and the value given.

Used by the studies' ``Config.__post_init__`` (ranges known without a model) and ``Config.check_model`` (ranges
that depend on the model: layers, vocabulary), which the runner calls after loading and before computing.
"""

from __future__ import annotations

import math
import numbers

from ..errors import LaminaError

__all__ = ["at_least", "between", "finite", "bins", "trim_z", "seed", "layer", "layer_of", "choice"]


def _number(name: str, value, kind: str = "number"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LaminaError(f"{name} must be a {kind} (got {value!r})")
    if isinstance(value, float) and math.isnan(value):
        raise LaminaError(f"{name} must be a {kind}, not nan")
    return value


def finite(name: str, value) -> None:
    """A finite number (not nan or +-inf)."""
    if not math.isfinite(_number(name, value)):
        raise LaminaError(f"{name} must be finite (got {value!r})")


def at_least(name: str, value, minimum, *, integer: bool = True) -> None:
    """A number >= ``minimum`` (a whole number unless ``integer=False``; then also finite)."""
    _number(name, value, "whole number" if integer else "number")
    if integer and not isinstance(value, numbers.Integral):
        raise LaminaError(f"{name} must be a whole number (got {value!r})")
    if not integer:
        finite(name, value)
    if value < minimum:
        raise LaminaError(f"{name} must be >= {minimum} (got {value!r})")


def between(name: str, value, low, high, *, low_open: bool = True, high_open: bool = True) -> None:
    """A number in an interval, e.g. ``between("alpha", a, 0, 1)`` for (0, 1)."""
    _number(name, value)
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise LaminaError(f"{name} must be in {interval} (got {value!r})")


def bins(name: str, value) -> None:
    """Histogram bins per axis: a whole number >= 2 (one bin makes every MI zero) or a numpy bin rule."""
    from ..stats.mi import BIN_RULES, MAX_BINS

    if isinstance(value, str):
        if value not in BIN_RULES:
            raise LaminaError(f"{name}={value!r} is not a bin rule; use a whole number >= 2 or one of "
                              f"{', '.join(BIN_RULES)}")
        return
    at_least(name, value, 2)
    if value > MAX_BINS:
        raise LaminaError(f"{name} must be <= {MAX_BINS} (got {value})")


def trim_z(name: str, value) -> None:
    """An outlier threshold in standard deviations: positive and finite, or None (no trimming)."""
    if value is None:
        return
    _number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise LaminaError(f"{name} must be a positive finite number of standard deviations, or none to keep "
                          f"everything (got {value!r})")


def seed(name: str, value) -> None:
    """A random seed: a whole number in 0..2**32-1 (what numpy's generators accept everywhere)."""
    at_least(name, value, 0)
    if value >= 2**32:
        raise LaminaError(f"{name} must be < 2**32 (got {value})")


def layer(name: str, value) -> None:
    """A layer setting before the model is known: None (the protocol's default) or >= 0."""
    if value is not None:
        at_least(name, value, 0)


def layer_of(name: str, value, count: int, model_name: str, what: str = "blocks") -> None:
    """A layer setting against the model: None or in ``0..count-1`` (``what`` says what is counted)."""
    if value is not None and not 0 <= value < count:
        raise LaminaError(f"{name}={value} does not exist: {model_name} has {what} 0..{count - 1}; "
                          f"choose one of them (or none for the protocol's default)")


def choice(name: str, value, options) -> None:
    """One of a fixed set of words."""
    if value not in options:
        raise LaminaError(f"{name} must be one of {', '.join(map(str, options))} (got {value!r})")
