"""Compiled (numba) kernel behind the Kendall Mantel test in :mod:`lamina.stats.nulls`."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["kendall_numerators"]


@njit(cache=True)  # serial: faster than threads for the typical few thousand orderings
def kendall_numerators(order_a, block_end, ranks, n_ranks, out):
    """Kendall numerator ``sum_{k<l} sign(a_k - a_l) sign(c_k - c_l)`` for many vectors ``c``, O(m log m) each.

    Args:
        order_a: (m,) indices sorting ``a`` ascending.
        block_end: (m,) for position t of that order, the end (exclusive) of its block of tied ``a`` values.
        ranks: (N, m) dense 1-based ranks of each ``c`` (ties share a rank), in the original index order.
        n_ranks: the largest rank.
        out: (N,) receives the numerators.

    Walking the items in ascending ``a``, one tied block at a time, a Fenwick tree over the ranks of ``c``
    of the items already passed (all with smaller ``a``) counts how many have smaller and larger ``c``.
    """
    n_vectors, m = ranks.shape
    for p in range(n_vectors):
        tree = np.zeros(n_ranks + 1, dtype=np.int64)
        total = 0
        placed = 0
        t = 0
        while t < m:
            end = block_end[t]
            for s in range(t, end):
                r = ranks[p, order_a[s]]
                below = 0  # passed items with rank < r
                i = r - 1
                while i > 0:
                    below += tree[i]
                    i -= i & (-i)
                upto = 0  # passed items with rank <= r
                i = r
                while i > 0:
                    upto += tree[i]
                    i -= i & (-i)
                total += below - (placed - upto)
            for s in range(t, end):
                i = ranks[p, order_a[s]]
                while i <= n_ranks:
                    tree[i] += 1
                    i += i & (-i)
                placed += 1
            t = end
        out[p] = total
