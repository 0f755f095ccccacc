"""Compile lamina's numba kernels once, into numba's on-disk cache (``python -m lamina._warmup``).

``make install`` runs this, so the first ``lamina demo`` does not spend ~10 s compiling (the histogram MI
kernels alone take ~7 s). Every kernel is called on tiny inputs through its public entry point, in each
variant a study uses (with and without trimming, Miller-Madow, KSG, the Kendall Mantel test, 1-D k-means).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["compile_kernels"]


def compile_kernels() -> float:
    """Run every compiled kernel once on tiny inputs; returns the seconds it took."""
    from .stats import mantel_test, pairwise_mutual_information
    from .stats._ksg import pairwise_ksg
    from .studies._clusters_1d import best_silhouette

    started = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(2, 3, 40))
    for trim_z in (None, 4.0):
        pairwise_mutual_information(X, bins=5, trim_z=trim_z)
        pairwise_mutual_information(X, bins=5, trim_z=trim_z, correction="miller-madow")
    pairwise_ksg(X[0])
    A = np.abs(np.subtract.outer(np.arange(6.0), np.arange(6.0)))
    mantel_test(A, A ** 2, method="kendall", n_permutations=9)
    best_silhouette(X[0, 0])
    return time.perf_counter() - started


if __name__ == "__main__":  # pragma: no cover - run by make install
    print(f"lamina: compiled its numba kernels in {compile_kernels():.1f} s")
