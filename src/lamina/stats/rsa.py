"""Representational similarity analysis and label-block selection of similarity matrices."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ..errors import LaminaError
from .similarity import correlation_matrix, cosine_similarity_matrix

__all__ = ["rdm", "compare_rdms", "kendall_tau_a", "category_selectivity", "label_blocks", "label_product_mask",
           "upper_triangle"]


def upper_triangle(S, k: int = 1) -> np.ndarray:
    """Values above the diagonal of (..., n, n), shape (..., n(n-1)/2) for k = 1."""
    S = np.asarray(S)
    i, j = np.triu_indices(S.shape[-1], k)
    return S[..., i, j]


def rdm(X, metric: str = "correlation") -> np.ndarray:
    """Representational dissimilarity matrix of the rows of ``X`` (n, d) -> (n, n).

    ``"correlation"``: 1 - Pearson r; ``"cosine"``: 1 - cosine; ``"euclidean"``: distance.
    """
    X = np.asarray(X, dtype=np.float64)
    if metric == "correlation":
        return 1.0 - correlation_matrix(X)
    if metric == "cosine":
        return 1.0 - cosine_similarity_matrix(X)
    if metric == "euclidean":
        from scipy.spatial.distance import cdist

        return cdist(X, X)
    raise LaminaError(f"metric={metric!r} is not valid; use 'correlation', 'cosine' or 'euclidean'")


def kendall_tau_a(x, y) -> float:
    """Kendall's tau-a: (concordant - discordant) / (n(n-1)/2); ties count as neither (the RSA convention)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = x.size
    if n < 2:
        raise LaminaError("tau-a needs at least 2 values")
    total = 0.0
    for start in range(0, n, 2048):  # blocks keep memory at 2048 x n
        sx = np.sign(x[start:start + 2048, None] - x[None, :])
        sy = np.sign(y[start:start + 2048, None] - y[None, :])
        total += float(np.sum(sx * sy))
    return total / (n * (n - 1))  # every unordered pair was counted twice


def compare_rdms(A, B, method: str = "spearman") -> tuple[float, float]:
    """Compare two (n, n) RDMs/similarity matrices over their upper triangles.

    Args:
        method: ``"spearman"``, ``"pearson"`` (scipy, with p) or ``"kendall_a"`` (tau-a; p from scipy's
            tau-b test).

    Returns:
        (statistic, p-value).
    """
    a = upper_triangle(A)
    b = upper_triangle(B)
    if method == "spearman":
        res = sps.spearmanr(a, b)
        return float(res.statistic), float(res.pvalue)
    if method == "pearson":
        res = sps.pearsonr(a, b)
        return float(res.statistic), float(res.pvalue)
    if method == "kendall_a":
        return kendall_tau_a(a, b), float(sps.kendalltau(a, b).pvalue)
    raise LaminaError(f"method={method!r} is not valid; use 'spearman', 'pearson' or 'kendall_a'")


def category_selectivity(S, labels) -> float:
    """Mean within-category similarity over mean across-category similarity (off-diagonal entries only)."""
    S = np.asarray(S, dtype=np.float64)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    within = S[same & off]
    across = S[~same]
    if within.size == 0 or across.size == 0:
        raise LaminaError("selectivity needs at least two categories with two members each")
    return float(within.mean() / across.mean())


def label_product_mask(labels) -> np.ndarray:
    """The Q/K/V trick: the outer product of labels (Q=1, K=2, V=3 give 1, 4, 9 within and 2, 3, 6 across),
    upper triangle only (0 elsewhere)."""
    labels = np.asarray(labels)
    return np.triu(np.outer(labels, labels), 1)


def label_blocks(S, labels, names: dict | None = None) -> dict[str, np.ndarray]:
    """Split the upper-triangle values of a similarity matrix by the labels of their row and column.

    Args:
        S: (m, m) similarity matrix.
        labels: (m,) label per row/column (any hashable values).
        names: optional label -> display name (e.g. {1: "Q", 2: "K", 3: "V"}).

    Returns:
        ``{"QQ": values, "KK": ..., "QK": ...}``: for every unordered pair of labels, the values S[i, j],
        i < j, whose labels are that pair (the label order of first appearance decides the name order).
    """
    S = np.asarray(S)
    labels = np.asarray(labels)
    order = list(dict.fromkeys(labels.tolist()))
    names = names or {}
    i, j = np.triu_indices(len(labels), 1)
    li, lj = labels[i], labels[j]
    vals = S[i, j]
    out = {}
    for a_pos, a in enumerate(order):
        for b in order[a_pos:]:
            sel = ((li == a) & (lj == b)) | ((li == b) & (lj == a))
            out[f"{names.get(a, a)}{names.get(b, b)}"] = vals[sel]
    return out
