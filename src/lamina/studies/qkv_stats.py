"""Statistics of the qkv-similarity study: similarity blocks of Q|K|V neuron matrices, the width of a
neuron-similarity distribution and across-sentence variances, vectorised over bootstrap resamples of the
sentences (given as a (B, n) count matrix, see :func:`lamina.studies.resampling.bootstrap_counts`)."""

from __future__ import annotations

import numpy as np

__all__ = ["shuffle_values", "block_stats", "block_measures", "neuron_width", "part_variance", "noise_floor"]


def shuffle_values(X: np.ndarray, rng) -> np.ndarray:
    """The protocol's shuffled baseline: every activation value of X permuted at random (same shape)."""
    return rng.permutation(X.ravel()).reshape(X.shape)


def block_stats(S: np.ndarray, bounds, parts=("Q", "K", "V"), extreme: float = 0.7) -> dict[str, dict[str, float]]:
    """Mean |similarity| and the share of |similarity| > ``extreme`` in every block of a symmetric matrix whose
    rows/columns are the parts in order (part i spans ``bounds[i]:bounds[i + 1]``); within-part blocks count
    each pair i < j once (the diagonal is left out), cross blocks every pair. Equals the same summaries of
    :func:`lamina.stats.label_blocks`."""
    A = np.abs(S)
    out = {}
    for i, a in enumerate(parts):
        for j in range(i, len(parts)):
            blk = A[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]]
            ext = blk > extreme
            if i == j:
                pairs = blk.shape[0] * (blk.shape[0] - 1) / 2
                mean_abs = (blk.sum() - np.trace(blk)) / 2 / pairs
                share = (ext.sum() - np.trace(ext)) / 2 / pairs
            else:
                mean_abs, share = blk.mean(), ext.mean()
            out[a + parts[j]] = {"mean_abs": float(mean_abs), "extreme_fraction": float(share)}
    return out


def neuron_width(X: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray | float:
    """Std of the cosine similarities between all pairs of columns (neurons) of X over its rows (sentences),
    without forming the (m, m) matrix: sums of cosines and squared cosines come from (n, n) row products.

    Args:
        X: (n, m) activations. counts: (B, n) bootstrap counts of the rows (None: X itself).

    Returns:
        The width (a float), or (B,) widths of the resamples.
    """
    X = np.asarray(X, dtype=np.float64)
    m = X.shape[1]
    pairs = m * (m - 1) / 2
    if counts is None:  # the data itself: the (n, n) Gram matrix of the unit columns
        norms = np.linalg.norm(X, axis=0)
        U = X / np.where(norms > 0, norms, 1.0)
        nonzero = int(np.count_nonzero(norms))
        mean = (np.sum(U.sum(axis=1) ** 2) - nonzero) / 2 / pairs
        return float(np.sqrt(max((np.sum((U @ U.T) ** 2) - nonzero) / 2 / pairs - mean**2, 0.0)))
    C = np.asarray(counts, dtype=np.float64)
    d2 = C @ (X * X)  # (B, m) squared column norms over the resampled rows
    inv = np.where(d2 > 0, 1 / np.where(d2 > 0, d2, 1), 0.0)  # a zero column has cosine 0 with all
    nonzero = (d2 > 0).sum(axis=1)  # the diagonal cosines (1 each)
    s1 = (C * ((X @ np.sqrt(inv).T).T) ** 2).sum(axis=1)  # sum over all (k, l) of cos_kl
    n = X.shape[0]
    iu, ju = np.triu_indices(n)
    if iu.size * X.shape[1] <= 4_000_000:  # products of row pairs fit in ~32 MB: one matrix product
        # (n(n+1)/2, B) row-pair products weighted by 1 / |column|^2, in float32 (halves the cost; the sums
        # below are float64)
        gram = ((X[iu] * X[ju]).astype(np.float32) @ inv.T.astype(np.float32)).astype(np.float64)
        weight = C[:, iu] * C[:, ju] * np.where(iu == ju, 1.0, 2.0)
        s2 = (weight * gram.T**2).sum(axis=1)  # sum over (k, l) of cos_kl^2 = |U U^T|_F^2
    else:
        s2 = np.array([np.sum(c[:, None] * c[None, :] * ((X * w) @ X.T) ** 2) for c, w in zip(C, inv)])
    mean = (s1 - nonzero) / 2 / pairs
    return np.sqrt(np.maximum((s2 - nonzero) / 2 / pairs - mean**2, 0))


def part_variance(parts: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Across-sentence variance (ddof 1) averaged over each part's neurons, then over the parts, per bootstrap
    resample: ``parts`` are (n, w_p) arrays, ``counts`` (B, n) -> (B,)."""
    C = np.asarray(counts, dtype=np.float64)
    n = C[0].sum()
    out = []
    for A in parts:
        s1, s2 = C @ A, C @ (A * A)
        out.append(((s2 - s1**2 / n) / (n - 1)).mean(axis=1))
    return np.mean(out, axis=0)


def _unit_columns(X: np.ndarray) -> np.ndarray:
    norms = np.sqrt((X * X).sum(axis=0))
    return X / np.where(norms > 0, norms, 1)  # a zero column has similarity 0 with everything


def block_measures(X: np.ndarray, bounds, parts=("Q", "K", "V"), extreme: float = 0.7,
                   dtype=np.float64) -> dict[str, dict]:
    """:func:`block_stats` of the column cosine (``"cos"``) and column correlation (``"corr"``) matrices of X
    (n_rows, n_columns), computed in ``dtype`` (float32 halves the cost of bootstrap resamples)."""
    X = np.asarray(X, dtype=dtype)
    out = {}
    for name, Y in (("cos", X), ("corr", X - X.mean(axis=0))):
        U = _unit_columns(Y)
        out[name] = block_stats(U.T @ U, bounds, parts, extreme)
    return out


def noise_floor(X: np.ndarray, counts: np.ndarray, rng, n_columns: int = 256) -> np.ndarray:
    """Mean |cosine| and |correlation| between columns of shuffled data, resampled like the real rows.

    A bootstrap resample repeats sentences, which raises every |similarity| of pure noise; the floor a
    resample is compared with is therefore a shuffled copy of X resampled with the same counts. Shuffled
    columns are exchangeable, so ``n_columns`` of them estimate the floor of every block.

    Args:
        X: (n, m) activations. counts: (B, n) bootstrap counts. rng: the study's generator.
        n_columns: shuffled columns used (256 give ~32,600 pairs: the floor's own sd is then ~0.0005).

    Returns:
        (B, 2): the cosine and correlation floors of every resample.
    """
    X = np.asarray(X, dtype=np.float64)
    k = min(n_columns, X.shape[1])
    out = np.empty((len(counts), 2))
    for b, c in enumerate(counts):
        pool = rng.choice(X.size, size=X.shape[0] * k, replace=False)
        Y = np.repeat(X.ravel()[pool].reshape(X.shape[0], k), c, axis=0)
        for j, Z in enumerate((Y, Y - Y.mean(axis=0))):
            U = _unit_columns(Z)
            S = np.abs(U.T @ U)
            out[b, j] = (S.sum() - np.trace(S)) / (k * (k - 1))
    return out
