"""The torch MI backend against the numba CPU kernel: same numbers, same bins, any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina import LaminaError
from lamina.stats import naive_mutual_information, pairwise_mutual_information
from lamina.stats._mi_kernels import bin_vectors, zscore_keep
from lamina.stats._mi_torch import _bin, plan_blocks

EXACT = 1e-9  # the bound; observed <= ~1e-14 (only the order of float64 sums differs)


def both(X, **kwargs):
    a = pairwise_mutual_information(X, backend="numba", **kwargs)
    b = pairwise_mutual_information(X, backend="torch", device="cpu", **kwargs)
    return a, b


@pytest.fixture
def stack():
    """An L x n x d stack with an odd width, a dependent pair, a constant vector, ties and an outlier block."""
    rng = np.random.default_rng(0)
    X = rng.standard_t(3, size=(3, 13, 401))
    X[0, 1] = 0.5 * X[0, 0] + 0.1 * rng.normal(size=401)
    X[1, 2] = 3.0  # constant: z = 0 everywhere, range widened by 0.5 each way
    X[2, 3] = np.round(X[2, 3])  # heavy ties, values on bin edges
    X[2, 4, :50] = 40.0  # an outlier block that trimming removes
    X[1, 5] = np.repeat([0.0, 1.0], [200, 201])  # two values only
    return X


@pytest.mark.parametrize("trim_z", [None, 4.0, 2.0, 1.0])
@pytest.mark.parametrize("bins", [15, 7, 1])
def test_torch_equals_numba_on_a_stack(stack, trim_z, bins):
    a, b = both(stack, bins=bins, trim_z=trim_z, correction="miller-madow")
    assert a.shape == b.shape == (3, 13, 13)
    np.testing.assert_allclose(b, a, atol=EXACT, rtol=0)
    np.testing.assert_array_equal(b, np.swapaxes(b, -1, -2))  # mirrored exactly, like the CPU result


# Untrimmed, the kernel walks the most bins (~40 s on 2 cores): `slow`; the trimmed case runs by default.
@pytest.mark.parametrize("trim_z", [pytest.param(None, marks=pytest.mark.slow), 2.0])
def test_most_bins(stack, trim_z):
    # B = 255, the largest: codes fill uint8, joint tables of 65025 cells (one group: B**2 makes it costly).
    a, b = both(stack[2], bins=255, trim_z=trim_z, correction="miller-madow")
    np.testing.assert_allclose(b, a, atol=EXACT, rtol=0)


@pytest.mark.parametrize("max_bytes", [1, 400_000, 5_000_000, 10_000_000])
def test_chunking_does_not_change_the_result(stack, max_bytes):
    stack = stack[:, :8] if max_bytes == 1 else stack  # one pair per product and per re-binned chunk: slow
    groups, n, d = stack.shape
    batch, rows, _ = plan_blocks(groups, n, d, 15, max_bytes)
    if max_bytes == 1:
        assert (batch, rows) == (1, 1)  # one pair of rows at a time: the smallest blocks there are
    if max_bytes == 400_000:
        assert batch == 1 and 1 < rows < n  # several blocks per group, diagonal and off-diagonal
    if max_bytes == 5_000_000:
        assert batch == 2 and rows == n  # batches of 2 groups, the last one short
    if max_bytes == 10_000_000:
        assert batch == groups and rows == n  # all groups in one batched product
    ref = pairwise_mutual_information(stack, trim_z=2.0, backend="numba")
    got = pairwise_mutual_information(stack, trim_z=2.0, backend="torch", device="cpu", max_bytes=max_bytes)
    np.testing.assert_allclose(got, ref, atol=EXACT, rtol=0)


def test_large_groups_are_cut_into_blocks():
    # n above the block minimum: square blocks of at most ceil(n / 4) rows even when everything would fit.
    _, rows, _ = plan_blocks(1, 300, 64, 15, 1 << 30)
    assert rows == 75
    rng = np.random.default_rng(3)
    X = rng.standard_t(4, size=(300, 64))
    a, b = both(X, bins=9, trim_z=3.0)
    np.testing.assert_allclose(b, a, atol=EXACT, rtol=0)


def test_pair_rebinned_with_its_own_edges():
    # y drops (by trimming) the dimension that holds x's kept maximum: x's edges change for that pair only.
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    y = rng.normal(size=300)
    y[int(np.argmax(x))] = 50.0
    mi = pairwise_mutual_information(np.stack([x, y]), bins=10, trim_z=4, backend="torch", device="cpu")
    assert abs(mi[0, 1] - naive_mutual_information(x, y, bins=10, trim_z=4)) < EXACT
    # With x's own edges (its kept range, which includes the dimension y drops) the value differs: the check
    # can fail.
    both_kept = y != 50.0
    h, _, _ = np.histogram2d(x[both_kept], y[both_kept], bins=[np.histogram_bin_edges(x, 10),
                                                                np.histogram_bin_edges(y[both_kept], 10)])
    p = h / h.sum()
    ent = lambda q: -np.sum(q[q > 0] * np.log2(q[q > 0]))  # noqa: E731
    own_edges = ent(p.sum(1)) + ent(p.sum(0)) - ent(p.ravel())
    assert abs(own_edges - mi[0, 1]) > 1e-3


def numba_bins(X, keep, n_bins):
    m, d = X.shape
    codes = np.empty((m, d), dtype=np.int32)
    imin, imax = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    bin_vectors(X, keep, True, n_bins, codes, imin, imax, np.empty((m, n_bins), dtype=np.int64))
    return codes, imin, imax


def test_bin_assignment_is_identical_on_edges_and_ties():
    rng = np.random.default_rng(7)
    rows = []
    for n_bins in (15,):
        lo, hi = -1.3, 2.9
        step = (hi - lo) / n_bins
        edges = np.arange(n_bins + 1) * step + lo  # the kernel's edges, operation for operation
        near = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
        near = np.clip(near, lo, hi)
        rows.append(rng.permutation(np.concatenate([near, rng.uniform(lo, hi, 200 - near.size)])))
    rows.append(np.round(rng.normal(size=200), 1))  # ties
    rows.append(np.full(200, 7.25))  # constant
    rows.append(np.r_[0.0, np.full(199, 5e-324)])  # a range so small that (hi - lo) / B underflows to 0
    rows.append(rng.standard_t(2, size=200) * 1e12)
    X = np.ascontiguousarray(np.stack(rows))
    keep = np.empty(X.shape, dtype=bool)
    zscore_keep(X, 1.5, keep)
    keep[0] = keep[3] = True  # the edge row keeps its range; the underflow row everything
    codes = {}
    for n_bins in (15, 2, 255):
        codes[n_bins], imin, imax = numba_bins(X, keep, n_bins)
        t_codes, t_imin, t_imax = _bin(torch.from_numpy(X), torch.from_numpy(keep), n_bins)
        np.testing.assert_array_equal(t_codes.numpy(), codes[n_bins])
        np.testing.assert_array_equal(t_imin.numpy(), imin)
        np.testing.assert_array_equal(t_imax.numpy(), imax)
    # The cases are what they claim: every value of the edge row sits on or next to an edge of its 15 bins
    # and they fill all 15; the underflow row takes the (k / B) * delta branch and splits in two bins;
    # trimming dropped values (code B).
    assert np.array_equal(np.unique(codes[15][0]), np.arange(15)) and len(np.unique(codes[15][3])) == 2
    assert (codes[15] == 15).sum() == (~keep).sum() > 0


def test_torch_tensor_input_and_auto_backend():
    rng = np.random.default_rng(11)
    T = torch.from_numpy(rng.normal(size=(2, 6, 120))).to(torch.float32)
    ref = pairwise_mutual_information(T.double().numpy(), trim_z=3.0)
    got = pairwise_mutual_information(T, trim_z=3.0, backend="torch")  # a CPU tensor: computed on the CPU
    np.testing.assert_allclose(got, ref, atol=EXACT, rtol=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), d=st.integers(2, 60), bins=st.integers(1, 20),
       trim_z=st.sampled_from([None, 0.8, 1.5, 3.0]), discrete=st.booleans())
def test_torch_equals_numba_property(seed, n, d, bins, trim_z, discrete):
    rng = np.random.default_rng(seed)
    X = rng.standard_t(2, size=(2, n, d))
    if discrete:
        X = np.round(X)  # many ties and constant vectors
    try:
        a = pairwise_mutual_information(X, bins=bins, trim_z=trim_z, backend="numba", correction="miller-madow")
    except LaminaError:  # trimming left a pair without a shared dimension: both backends refuse alike
        with pytest.raises(LaminaError):
            pairwise_mutual_information(X, bins=bins, trim_z=trim_z, backend="torch", device="cpu")
        return
    b = pairwise_mutual_information(X, bins=bins, trim_z=trim_z, backend="torch", device="cpu",
                                    correction="miller-madow", max_bytes=int(rng.integers(1, 1 << 20)))
    np.testing.assert_allclose(b, a, atol=EXACT, rtol=0)


def test_device_mistakes_are_one_line_errors():
    X = np.random.default_rng(0).normal(size=(3, 20))
    with pytest.raises(LaminaError, match="not a torch device"):
        pairwise_mutual_information(X, backend="torch", device="tpu0")
    with pytest.raises(LaminaError, match="backend='torch' only"):
        pairwise_mutual_information(X, backend="numba", device="cpu")
    with pytest.raises(LaminaError, match="max_bytes must be positive"):
        pairwise_mutual_information(X, backend="torch", device="cpu", max_bytes=0)
    with pytest.raises(LaminaError, match="meta"):
        pairwise_mutual_information(X, backend="torch", device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(LaminaError, match="not available"):
            pairwise_mutual_information(X, backend="torch", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_numba(stack):  # pragma: no cover - runs only where a GPU is present
    for trim_z in (None, 2.0):
        ref = pairwise_mutual_information(stack, trim_z=trim_z, backend="numba", correction="miller-madow")
        got = pairwise_mutual_information(torch.from_numpy(stack).cuda(), trim_z=trim_z,
                                          correction="miller-madow")  # auto: a CUDA tensor uses torch
        np.testing.assert_allclose(got, ref, atol=EXACT, rtol=0)


def test_auto_backend_on_the_cpu_is_the_numba_kernel():
    X = np.random.default_rng(2).normal(size=(4, 50))
    a = pairwise_mutual_information(X, device="cpu")  # auto + a CPU device: the CPU kernel, bit for bit
    np.testing.assert_array_equal(a, pairwise_mutual_information(X, backend="numba"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_memory_stays_near_the_budget():  # pragma: no cover - runs only where a GPU is present
    rng = np.random.default_rng(4)
    X = torch.from_numpy(rng.standard_t(5, size=(4, 400, 1024))).cuda()
    budget = 64 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    got = pairwise_mutual_information(X, trim_z=4.0, max_bytes=budget)
    peak = torch.cuda.max_memory_allocated() - base
    # 2x: the per-cell and per-value byte counts in _mi_torch are estimates of the temporaries' sizes.
    assert peak <= 2 * budget, peak
    ref = pairwise_mutual_information(X.cpu().numpy(), trim_z=4.0)
    np.testing.assert_allclose(got, ref, atol=EXACT, rtol=0)


def test_tf32_switch_for_cuda_products_is_restored():
    # The CUDA-only branch that lets the 0/1 products use TF32 (exact for them) must leave the global as it was.
    from lamina.stats._mi_torch import _exact_fast_matmul

    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    with _exact_fast_matmul(torch.device("cuda")):
        assert getattr(matmul, name) in ("tf32", True)
    assert getattr(matmul, name) == before
