"""Benchmark: lamina's pairwise histogram MI per backend and device, and a naive np.histogram2d loop, same data,
same run.

Prints pairs/s for the numba CPU kernel, the torch backend on the CPU and, when a CUDA device is present, the
torch backend on CUDA with its ratio to the CPU kernel (and its largest difference from it). The naive loop and
the torch backend on the CPU are timed on a part of each case and extrapolated (said in the output). Not a test.
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

#: The torch backend on the CPU does B**2 times the arithmetic of the CPU kernel (one-hot products): it is
#: timed on at most this many pairs of each case (whole groups, or the first rows of one group).
TORCH_CPU_PAIRS = 60_000


def _pairs(groups: int, n: int) -> int:
    return groups * n * (n + 1) // 2


def _part(X: np.ndarray, max_pairs: int) -> np.ndarray:
    """Whole groups of X up to max_pairs pairs, or the first rows of the first group."""
    groups, n, _ = X.shape
    per_group = _pairs(1, n)
    if per_group <= max_pairs:
        return X[:max(1, max_pairs // per_group)]
    rows = int((np.sqrt(8 * max_pairs + 1) - 1) / 2)
    return X[:1, :rows]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    import numba
    import torch

    rng = np.random.default_rng(0)
    warm = rng.normal(size=(2, 3, 50))
    pairwise_mutual_information(warm, trim_z=4)  # compile outside the timings
    pairwise_mutual_information(warm, trim_z=4, backend="torch", device="cpu")
    cuda = torch.cuda.is_available()
    print(f"numba threads: {numba.get_num_threads()}; torch {torch.__version__}, {torch.get_num_threads()} CPU "
          f"threads; CUDA: {torch.cuda.get_device_name(0) if cuda else 'none on this machine (not run)'}")
    for label, shape, trim in CASES:
        X = rng.standard_t(5, size=shape)
        groups, n, _ = shape
        n_pairs = _pairs(groups, n)
        mi, fast = _timed(lambda: pairwise_mutual_information(X, bins=15, trim_z=trim, backend="numba"))
        print(f"{label}\n  numba (cpu)  : {n_pairs} pairs in {fast:.3f} s = {n_pairs / fast:,.0f} pairs/s")

        part = _part(X, TORCH_CPU_PAIRS)
        part_pairs = _pairs(*part.shape[:2])
        got, t_cpu = _timed(lambda: pairwise_mutual_information(part, bins=15, trim_z=trim, backend="torch",
                                                                device="cpu"))
        ref = pairwise_mutual_information(part, bins=15, trim_z=trim, backend="numba")
        print(f"  torch (cpu)  : {part_pairs / t_cpu:,.0f} pairs/s (timed on {part.shape[0]} x {part.shape[1]} "
              f"rows, {part_pairs} pairs); {fast / n_pairs * part_pairs / t_cpu:.3g}x the CPU kernel; "
              f"max |diff| {np.abs(got - ref).max():.1e}")

        if cuda:
            Xc = torch.from_numpy(X).to("cuda", torch.float32)
            pairwise_mutual_information(Xc[:1, :8], bins=15, trim_z=trim)  # CUDA context and kernels
            torch.cuda.synchronize()
            got, t_gpu = _timed(lambda: pairwise_mutual_information(Xc, bins=15, trim_z=trim, backend="torch"))
            ref32 = pairwise_mutual_information(Xc.cpu().double().numpy(), bins=15, trim_z=trim, backend="numba")
            print(f"  torch (cuda) : {n_pairs / t_gpu:,.0f} pairs/s = {fast / t_gpu:.3g}x the CPU kernel; "
                  f"max |diff| {np.abs(got - ref32).max():.1e}")
        else:
            print("  torch (cuda) : no CUDA device here: not run")

        sample = min(n_pairs, 300)
        idx = [(rng.integers(groups), *sorted(rng.integers(n, size=2))) for _ in range(sample)]
        start = time.perf_counter()
        naive_ref = [naive_mutual_information(X[g, a], X[g, b], bins=15, trim_z=trim) for g, a, b in idx]
        naive = (time.perf_counter() - start) / sample
        err = max(abs(mi[g, a, b] - r) for (g, a, b), r in zip(idx, naive_ref))
        print(f"  naive        : {1 / naive:,.0f} pairs/s (timed on {sample} sampled pairs, extrapolated: "
              f"{naive * n_pairs:.1f} s)\n  ratio        : numba {naive * n_pairs / fast:,.0f}x naive; "
              f"max |diff| on the sample: {err:.1e}")


if __name__ == "__main__":
    main()
