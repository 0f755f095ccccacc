"""The histogram-MI bias of a set of vectors: their MI after destroying every dependence between them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LaminaError
from .mi import (_as_real, _check_finite, _check_kept, _check_range, _pairwise_numba, check_mi_options,
                 pairwise_mutual_information, resolve_bins, trim_mask)

__all__ = ["MIBias", "mutual_information_bias"]

#: Values permuted per kernel call (~32 MB of float64, plus their int32 permutation and trim mask).
_CHUNK_VALUES = 4_000_000


@dataclass(frozen=True)
class MIBias:
    """Histogram-MI bias baseline of a set of vectors: MI after independently permuting each vector's dimensions.

    Attributes:
        mean: (..., n, n) mean over draws (the diagonal is each vector's entropy, which permuting keeps).
        sd: (..., n, n) standard deviation over draws (ddof=1).
        n_draws: number of draws.
    """

    mean: np.ndarray
    sd: np.ndarray
    n_draws: int

    def corrected(self, mi) -> np.ndarray:
        """Bias-corrected MI: ``mi - mean`` (shape (..., n, n); ~0 for independent vectors)."""
        return np.asarray(mi, dtype=np.float64) - self.mean


def mutual_information_bias(X, *, bins=15, trim_z: float | None = None, n_draws: int = 5, seed=0,
                            estimator: str = "histogram", base: float = 2.0,
                            correction: str | None = None) -> MIBias:
    """The MI that independence alone produces for these very vectors (the estimator's bias), pair by pair.

    Permuting each vector's dimensions independently keeps its values (so its histogram, bins and entropy)
    and destroys any dependence between vectors. The trim mask is computed on the unpermuted vectors and
    moves with their values, and the bin count is resolved once from the unpermuted ``X``, so every setting
    equals the observed call's.

    Args:
        X: (n, d) or (..., n, d): exactly what :func:`pairwise_mutual_information` takes.
        bins, trim_z, estimator, base, correction: as in :func:`pairwise_mutual_information` (use the same).
        n_draws: independent permutations of every vector (>= 2).
        seed: seed of the permutations.

    Returns:
        :class:`MIBias` with ``mean`` and ``sd`` of shape (..., n, n). Corrected MI = observed - mean.
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 2:
        raise LaminaError(f"n_draws must be an integer >= 2 (the sd needs two draws; got {n_draws!r})")
    check_mi_options(estimator, correction, base)
    if type(X).__module__.startswith("torch") and not X.is_complex():
        X = X.detach().to("cpu").double().numpy()
    Xn = _as_real(X)
    if Xn.ndim < 2 or Xn.shape[-1] < 2:
        raise LaminaError(f"X must have shape (..., n, d) with d >= 2; got shape {Xn.shape}")
    _check_finite(Xn)
    lead, n, d = Xn.shape[:-2], Xn.shape[-2], Xn.shape[-1]
    flat = np.ascontiguousarray(Xn.reshape(-1, d))
    _check_range(flat, trim_z if estimator == "histogram" else None, n, lead)
    if estimator == "histogram":
        n_bins = resolve_bins(Xn, bins, trim_z)  # once, from the unpermuted vectors, as the observed call does
        keep = trim_mask(flat, trim_z)  # per vector, before permuting: the mask moves with the values
        if trim_z is not None:
            _check_kept(keep, n, lead, trim_z)
    rng = np.random.default_rng(seed)
    m = flat.shape[0]
    draws = np.empty((n_draws, m // n, n, n))
    per_call = max(1, _CHUNK_VALUES // (m * d))  # draws batched into one kernel call
    for start in range(0, n_draws, per_call):
        count = min(per_call, n_draws - start)
        # One independent permutation of every vector in every draw of the batch (draw-major rows).
        idx = rng.permuted(np.tile(np.arange(d, dtype=np.int32), (count * m, 1)), axis=1).reshape(count, m, d)
        Xp = np.take_along_axis(flat[None], idx, axis=2).reshape(count * m, d)
        if estimator == "ksg":
            mi = pairwise_mutual_information(Xp.reshape(-1, n, d), estimator="ksg", base=base)
        else:
            kp = np.take_along_axis(keep[None], idx, axis=2).reshape(count * m, d)
            nats, mm = _pairwise_numba(Xp, kp, trim_z is not None, n_bins, n, correction is not None)
            mi = (nats + mm) / math.log(base)
        draws[start:start + count] = mi.reshape(count, m // n, n, n)
    shape = (*lead, n, n)
    return MIBias(mean=draws.mean(axis=0).reshape(shape), sd=draws.std(axis=0, ddof=1).reshape(shape),
                  n_draws=n_draws)
