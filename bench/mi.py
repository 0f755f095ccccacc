"""Benchmark: lamina's pairwise histogram MI vs a naive np.histogram2d loop, same data, same run.

The naive loop is timed on a sample of pairs and extrapolated (said in the output). Not a test.
"""

from __future__ import annotations

import time

import numpy as np

from lamina.stats import naive_mutual_information, pairwise_mutual_information

CASES = [
    ("(a) coffee-mi part 2: 7 x 1600 x 48 layers, trim 4", (48, 7, 1600), 4.0),
    ("(b) punctuation: 250 x 1024 x 25 layers, trim 5", (25, 250, 1024), 5.0),
    ("(c) 2000 x 768 x 1 layer, no trim", (1, 2000, 768), None),
]


def main() -> None:
    import numba

    rng = np.random.default_rng(0)
    pairwise_mutual_information(rng.normal(size=(2, 3, 50)), trim_z=4)  # compile outside the timings
    print(f"numba threads: {numba.get_num_threads()}")
    for label, shape, trim in CASES:
        X = rng.standard_t(5, size=shape)
        groups, n, _ = shape
        n_pairs = groups * n * (n + 1) // 2
        start = time.perf_counter()
        mi = pairwise_mutual_information(X, bins=15, trim_z=trim)
        fast = time.perf_counter() - start
        sample = min(n_pairs, 300)
        idx = [(rng.integers(groups), *sorted(rng.integers(n, size=2))) for _ in range(sample)]
        start = time.perf_counter()
        ref = [naive_mutual_information(X[g, a], X[g, b], bins=15, trim_z=trim) for g, a, b in idx]
        naive = (time.perf_counter() - start) / sample
        err = max(abs(mi[g, a, b] - r) for (g, a, b), r in zip(idx, ref))
        print(f"{label}\n  lamina: {n_pairs} pairs in {fast:.3f} s = {n_pairs / fast:,.0f} pairs/s\n"
              f"  naive : {1 / naive:,.0f} pairs/s (timed on {sample} sampled pairs, extrapolated: "
              f"{naive * n_pairs:.1f} s)\n  ratio : {naive * n_pairs / fast:,.0f}x   max |diff| on the sample: "
              f"{err:.1e}")


if __name__ == "__main__":
    main()
