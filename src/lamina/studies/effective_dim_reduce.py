"""effective-dim's compute path: the PCA spectrum of every hidden state of one text copy from streaming reducers.

With fewer rows than the width (1000 tokens at width 2560) the rows themselves are kept (float32: smaller than
one covariance) and each spectrum comes from the n x n centred Gram matrix. Otherwise one forward pass per copy
feeds, at every residual site, a :class:`~lamina.capture.reduce.Covariance` (float64,
width x width: bounded in the text length), each row's norm (one float per token and layer: what the
attention-sink rule needs) and the rows of the first few positions of each window (where a shuffled copy puts
its second attention sink). After the pass:

- the layer-0 spectrum comes from the covariance of every token (before sinks are dropped);
- sinks (a norm above ``SINK_RATIO`` times the layer's median at some layer) among the kept early rows are
  taken out of the covariance exactly (the co-moment of the remaining rows, from the pooled one and the
  removed rows: float64, see :func:`remove_rows`);
- a sink anywhere else (not seen on the bundled model) costs a second pass over the copy with those
  positions left out of the selection.

The numbers equal the all-in-RAM computation (``capture`` + numpy on float64 rows) up to float64 summation
order (tests/test_study_reducers_paths.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture import select
from ..capture.reduce import Covariance, KeepRows
from ..capture.reduced import capture_reduced
from ..capture.run import residual_sites
from .kept_rows import capture_rows

__all__ = ["SINK_RATIO", "EARLY_POSITIONS", "copy_spectra", "row_norm", "remove_rows", "spectrum_from_comoment"]

#: An attention sink's norm is ~100x the median token's; ordinary tokens stay within ~2x: 10x separates them.
SINK_RATIO = 10.0
#: Rows kept at positions below this in each window (after the skipped first one): a second sink sits at
#: position 1 of a shuffled copy on the bundled model; 8 positions x width floats per window and layer.
EARLY_POSITIONS = 8
#: Use the covariance even with fewer rows than the width (the benchmark's ``--method covariance``, tests).
ALWAYS_COVARIANCE = False


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """(n, 1) Euclidean norm of every row, in float64 (a ``KeepRows`` transform)."""
    return torch.linalg.vector_norm(x.to(torch.float64), dim=1, keepdim=True)


def _from_second(t) -> list[int]:
    return list(range(1, len(t.ids)))


_SKIP_FIRST = select.where(_from_second, key="effective-dim:from-position-1")


def _excluding(skip_first: bool, dropped: dict[int, set[int]]):
    """Positions of every window except the first token (if skipped) and the ``dropped`` positions per window."""
    def fn(t) -> list[int]:
        start = 1 if skip_first else 0
        out = dropped.get(t.index, set())
        return [p for p in range(start, len(t.ids)) if p not in out]

    key = "effective-dim:excluding:" + ";".join(f"{w}:{sorted(p)}" for w, p in sorted(dropped.items()))
    return select.where(fn, key=f"{key}:from-{1 if skip_first else 0}")


def spectrum_from_comoment(m2: torch.Tensor, n: int) -> np.ndarray:
    """Explained-variance ratios from a centred co-moment ``sum (x - mean)(x - mean)^T`` (width, width) of n
    rows: largest first, length min(n, width) (``effective_dim.spectrum`` on the rows themselves)."""
    # torch's LAPACK on torch's threads, not scipy's: OpenBLAS's threads keep spinning after each call and the
    # torch operations that follow (the next layer's co-moment) ran ~10x slower on 2 cores (9.4 s -> 5.1 s).
    eig = torch.linalg.eigvalsh(m2).flip(0).clamp_min(0)[:min(n, m2.shape[0])]
    total = eig.sum()
    return (eig / total if total > 0 else eig).cpu().numpy()


def remove_rows(m2: torch.Tensor, mean: torch.Tensor, n: int, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The centred co-moment of n rows without some of them.

    With the pooled co-moment ``M`` and mean ``mu`` of all n rows and the k removed ``rows`` (mean ``mu_s``,
    co-moment ``M_s``), the remaining n - k rows have ``M - M_s - (n - k) k / n * d d^T`` with
    ``d = mu_rest - mu_s`` (the parallel-variance identity, exact in real arithmetic; in float64 the error is
    ~1e-16 of the removed rows' squared norm).

    Args:
        m2: (width, width) float64 pooled co-moment (modified in place and returned).
        mean: (width,) float64 mean of all rows.
        n: number of rows.
        rows: (k, width) rows to remove.

    Returns:
        (co-moment of the remaining rows, n - k).
    """
    x = rows.to(m2.device, torch.float64)
    k = x.shape[0]
    if k == 0:
        return m2, n
    mu_s = x.mean(0)
    c = x - mu_s
    rest = n - k
    mu_rest = (n * mean - k * mu_s) / rest
    d = mu_rest - mu_s
    m2.sub_(c.T @ c)
    m2.addr_(d, d, alpha=-rest * k / n)
    return m2, rest


def spectrum_of_rows(x: torch.Tensor) -> np.ndarray:
    """Explained-variance ratios of PCA on the rows of x (n, d) with n < d, from the n x n centred Gram matrix in
    float64 (``effective_dim.spectrum``; torch's eigensolver)."""
    c = x.to(torch.float64)
    c = c - c.mean(0)
    return spectrum_from_comoment(c @ c.T, x.shape[0])


def _from_rows(model, windows, sites, positions, pos, config) -> dict:
    """Fewer rows than the width: the rows themselves (float32, n x width per site, less than one covariance
    and an n x n eigenproblem instead of a width x width one)."""
    kept = capture_rows(model, windows, sites, positions=positions, add_special_tokens=False)
    rows = [kept[s] for s in sites]
    sink = np.zeros(pos.size, dtype=bool)
    if config.drop_sinks:
        norms = torch.stack([row_norm(x)[:, 0] for x in rows]).numpy()  # (L + 1, n)
        sink = (norms > SINK_RATIO * np.median(norms, axis=1, keepdims=True)).any(axis=0)
    keep = torch.as_tensor(~sink)
    spectra = np.stack([spectrum_of_rows(x[keep]) for x in rows])
    layer0 = spectrum_of_rows(rows[0]) if sink.any() else spectra[0]  # every token: the same in every copy
    return {"spectra": spectra, "layer0": layer0, "sinks": pos[sink].tolist(), "n_rows": int(keep.sum()),
            "width": int(rows[0].shape[1])}


def copy_spectra(model, windows: list[list[int]], config) -> dict:
    """The spectra of one copy (text or shuffle) split into ``windows`` of token ids.

    Returns:
        ``{"spectra": (L + 1, min(n, width)), "layer0": layer-0 spectrum of every token, "sinks": dropped
        positions (within their window), "n_rows": rows in the spectra, "width": width}``.
    """
    sites = residual_sites(model)
    positions = _SKIP_FIRST if config.skip_first else "all"
    lengths = [len(w) for w in windows]
    start = 1 if config.skip_first else 0
    pos = np.concatenate([np.arange(start, n) for n in lengths])
    win = np.concatenate([np.full(max(0, n - start), i) for i, n in enumerate(lengths)])
    if pos.size < model.d_model and not ALWAYS_COVARIANCE:
        return _from_rows(model, windows, sites, positions, pos, config)
    early = np.flatnonzero(pos < EARLY_POSITIONS)
    reducers = [Covariance(), KeepRows(transform=row_norm)]
    if config.drop_sinks:
        reducers.append(KeepRows(where=early))
    red = capture_reduced(model, windows, {s: reducers for s in sites}, positions=positions,
                          add_special_tokens=False, store=True)
    covs = [red[s][0] for s in sites]
    n = covs[0].n
    width = int(covs[0].mean().numel())
    sink = np.zeros(n, dtype=bool)
    if config.drop_sinks:
        norms = np.stack([red[s][1].rows()[:, 0].numpy() for s in sites])  # (L + 1, n)
        sink = (norms > SINK_RATIO * np.median(norms, axis=1, keepdims=True)).any(axis=0)
    dropped = np.flatnonzero(sink)
    out = {"sinks": pos[dropped].tolist(), "width": width}
    if dropped.size:  # every token, before the sinks are dropped: the same multiset in every copy
        out["layer0"] = spectrum_from_comoment(covs[0].covariance(ddof=0).mul_(n), n)
    if dropped.size and not np.isin(dropped, early).all():
        # A sink beyond the kept rows: a second pass that leaves the sinks out of the selection.
        skip: dict[int, set[int]] = {}
        for r in dropped:
            skip.setdefault(int(win[r]), set()).add(int(pos[r]))
        del red, covs
        again = capture_reduced(model, windows, {s: Covariance() for s in sites},
                                positions=_excluding(config.skip_first, skip), add_special_tokens=False, store=True)
        spectra = []
        for s in sites:
            cov = again[s]
            spectra.append(spectrum_from_comoment(cov.covariance(ddof=0).mul_(cov.n), cov.n))
        out.update(spectra=np.stack(spectra), n_rows=int(again[sites[0]].n))
        return out
    del covs
    local = np.searchsorted(early, dropped)  # the sinks' places among the kept early rows
    spectra, rest = [], n
    for s in sites:
        cov = red[s][0]
        m2 = cov.covariance(ddof=0).mul_(n)
        if dropped.size:
            m2, rest = remove_rows(m2, cov.mean(), n, red[s][2].rows()[torch.as_tensor(local)])
        spectra.append(spectrum_from_comoment(m2, rest))
        del m2
    out.update(spectra=np.stack(spectra), n_rows=int(rest))
    out.setdefault("layer0", out["spectra"][0])  # no sinks: the layer-0 spectrum is already every token's
    return out
