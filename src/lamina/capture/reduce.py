"""Online reducers: statistics of captured rows, updated batch by batch on the model's device.

A reducer consumes each batch's selected rows at one site (or the concatenation of several sites) where the
model computed them, keeps only its state, and gives the statistic at the end. Every reducer has
``update(x, rows)``, ``merge(other)``, ``state_dict()`` / ``load_state_dict()`` (tensors only, so states go to
safetensors), ``spec()`` (its settings, for cache keys) and ``fresh()`` (an empty copy with the same settings).

Precision. Sums are kept in float64 (``precision="float64"``, the default everywhere float64 exists: CPU,
CUDA). ``precision="float32c"`` computes each batch's increment in float32 and adds it to a float32 sum with
an error-compensation term (Knuth's TwoSum), for devices where float64 is slow (consumer GPUs: 1/32-1/64 rate)
or missing (MPS, where ``"auto"`` picks it). Moments and co-moments are accumulated about a shift (the first
batch's mean), so the variance of a feature with a large offset is not lost to cancellation.

Merging. ``a.merge(b)`` gives the state one pass over a's rows then b's rows would give: bit for bit for
counts, histograms, top-k and kept rows; up to float64 rounding of the sums for moments and covariance (the
additions happen in another order). A resumed run replays the same additions in the same order, so it is
bit-identical to an uninterrupted one (``lamina.capture.store``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import LaminaError

__all__ = ["Reducer", "Moments", "Covariance", "Histogram", "TopK", "KeepRows", "Gram", "PRECISIONS"]

PRECISIONS = ("auto", "float64", "float32c")
#: On the CPU, updates run over row chunks of about this many values: a 1 MB float64 temporary stays in cache
#: (3-6x faster than one batch-sized temporary, measured at widths 3072 and 8192).
CPU_CHUNK_VALUES = 1 << 17


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise LaminaError(f"precision={precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "float32c" if device.type == "mps" else "float64"
    return precision


def _array_digest(a) -> dict:
    a = np.ascontiguousarray(np.asarray(a))
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def _row_chunks(x: torch.Tensor, minimum: int = 1):
    """Row ranges to process ``x`` in: cache-sized chunks on the CPU, the whole batch elsewhere."""
    n = x.shape[0]
    step = n if x.device.type != "cpu" else max(minimum, CPU_CHUNK_VALUES // max(1, x.shape[1]))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


class _OneThread:
    """Run cache-sized CPU chunks on one thread: spread over threads, ops this small cost more in
    synchronisation than they save (a Moments update took 0.58 s of CPU on 2 threads, 0.025 s on one, on a
    loaded 2-core machine). Other devices are left alone."""

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"

    def __enter__(self):
        if self.cpu:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.cpu:
            torch.set_num_threads(self.threads)
        return False


def _as_matrix(x) -> torch.Tensor:
    """One (n, width) tensor from a tensor or a tuple of tensors (several sites, concatenated by feature)."""
    if isinstance(x, (tuple, list)):
        x = torch.cat([t.reshape(t.shape[0], -1) for t in x], dim=-1)
    if x.ndim != 2:
        raise LaminaError(f"a reducer takes rows of shape (n, width); got {tuple(x.shape)}")
    return x


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b where b > 0, else 0 (a constant feature correlates 0 with everything)."""
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


class Reducer:
    """Base class: an online statistic over the rows of a capture (see the module docstring).

    Subclasses set ``self._settings`` (constructor keyword arguments) so :meth:`fresh` and :meth:`spec` work.
    ``row_state`` is True for reducers whose state grows with the rows (kept rows): the store writes those per
    chunk instead of whole at every checkpoint.
    """

    row_state = False
    _settings: dict

    def bind(self, n_rows: int, device: torch.device) -> None:
        """Called by the capture before the first batch: the number of rows and the model's device."""

    def update(self, x, rows: slice) -> None:
        """Add one batch: ``x`` of shape (n, width) (or a tuple of such, one per site) for global rows ``rows``."""
        raise NotImplementedError

    def merge(self, other: "Reducer") -> "Reducer":
        """Fold ``other`` (same settings, other rows) into this reducer; returns self."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor], device=None) -> None:
        raise NotImplementedError

    def finite(self) -> bool:
        """False if a NaN or an infinity reached the state."""
        return all(bool(torch.isfinite(t).all()) for t in self.state_dict().values() if t.is_floating_point())

    def fresh(self) -> "Reducer":
        """An empty reducer with the same settings."""
        return type(self)(**self._settings)

    def spec(self) -> dict:
        """Name and settings (arrays by digest), for cache keys and provenance."""
        out = {"type": type(self).__name__}
        for key, value in self._settings.items():
            if isinstance(value, (np.ndarray, torch.Tensor, list, tuple)) and key not in ("device",):
                value = _array_digest(value.cpu().numpy() if isinstance(value, torch.Tensor) else value)
            elif callable(value):
                value = _callable_name(value)
            elif isinstance(value, torch.dtype):
                value = str(value)
            out[key] = value
        return out

    def _check_merge(self, other: "Reducer") -> None:
        if type(other) is not type(self) or other.spec() != self.spec():
            raise LaminaError(f"cannot merge {other.spec()} into {self.spec()}: the settings differ")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}=...' for k in self._settings)})"


def _callable_name(fn) -> str:
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    if "<lambda>" in name or "<locals>" in name:
        return f"unnamed:{id(fn)}"  # not reproducible across processes: the store refuses it
    return name


from .reduce_moments import Covariance, Moments  # noqa: E402  (re-exported: the reducers by kind)
from .reduce_rows import Gram, Histogram, KeepRows, TopK  # noqa: E402
