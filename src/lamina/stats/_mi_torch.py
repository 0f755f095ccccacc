"""Pairwise histogram MI in torch (``backend="torch"``): the numba kernel's numbers on any torch device.

Same definition, same trimming, same per-pair edges and the same bin of every value as
:mod:`lamina.stats._mi_kernels`, reproduced operation for operation:

* The trim mask comes from the caller (the CPU z-score kernel), so a value on the threshold is treated alike.
* Per row: ``lo``/``hi`` = min/max over the kept values (``lo == hi`` widened by 0.5 each way),
  ``step = (hi - lo) / B`` and the interior edges ``k * step + lo`` (``(k / B) * delta + lo`` when ``step``
  underflows to 0), in float64, as separate operations (no fused multiply-add). A value's bin is the number of
  interior edges ``<=`` it (``torch.searchsorted(..., right=True)``): the edges are non-decreasing, so this is
  the one bin where the CPU kernel's search stops, whatever its starting guess.
* Joint counts of all pairs of a block of rows come from ONE matrix product of one-hot matrices (a row's
  ``B x d`` indicator, zero in the dimensions it drops). The counts are integers below ``2**24``, exact in
  float32 (on CUDA the product may use TF32, which is exact for 0/1 inputs and accumulates in float32).
* ``c ln c`` is read from the CPU kernel's own table by count, so every term is the same float64 number;
  only the order of the sums differs (~1e-15 relative).
* A pair whose partner drops the dimension holding a row's kept minimum or maximum (first index, as on the
  CPU) has other edges for that pair: it is re-binned over the dimensions both keep, with per-pair edges, and
  counted with one scatter (``bincount``) per chunk of such pairs.

Memory: the working set on the device -- one batch of groups' values (float64), masks and codes, the one-hot
blocks, the joint tables and their float64 temporaries -- is sized to stay within ``max_bytes``
(:data:`DEFAULT_MAX_BYTES` unless given) by the block sizes below; at least one group's rows (10 bytes per
value) and one pair of rows are always processed, so a budget below that is exceeded. The results are
gathered on the host.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ..errors import LaminaError

__all__ = ["pairwise_mi_torch", "plan_blocks", "resolve_device", "DEFAULT_MAX_BYTES"]

#: Device working-set budget of one call (bytes), unless ``max_bytes`` is given.
DEFAULT_MAX_BYTES = 1 << 30

# Bytes per (pair, joint cell) of a block product: the float32 product, its int64 counts, the float64 c ln c
# terms and a comparison mask, with slack for the marginal sums.
_CELL_BYTES = 32
# Bytes per (row, value) held for a batch of groups: float64 value, keep mask, uint8 code.
_ROW_VALUE_BYTES = 10
# Bytes per (row, value) while binning: masked float64 copies, int64 search results.
_BIN_VALUE_BYTES = 40
# Bytes per (slow pair, value): both rows' float64 values, masks, int64 codes and scatter indices.
_SLOW_VALUE_BYTES = 64


def resolve_device(device, X=None):
    """The torch device for the torch backend: ``device`` if given (checked), else ``X``'s device for a tensor,
    else CUDA when available, else the CPU."""
    import torch

    if device is None:
        if isinstance(X, torch.Tensor):
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LaminaError(f"device {str(device)!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise LaminaError("device 'meta' holds no values, so MI cannot be computed there; use 'cpu' or 'cuda'")
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise LaminaError(f"device {str(device)!r} is not available on this machine (torch {torch.__version__}); "
                          "use device='cpu' or the numba backend")
    if dev.type == "mps":
        raise LaminaError("the torch MI backend needs float64, which MPS lacks; use device='cpu' or the numba "
                          "backend")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise LaminaError(f"device {str(device)!r} does not exist: this machine has {count} {dev.type} "
                          f"device(s); use {dev.type}:0..{count - 1}")
    return dev


@contextlib.contextmanager
def _exact_fast_matmul(device):
    """On CUDA, let float32 products use TF32 (exact for the 0/1 one-hot inputs); restored afterwards."""
    import torch

    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, fast = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    previous = getattr(matmul, name)
    setattr(matmul, name, fast)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def _edges(lo, hi, n_bins: int):
    """Interior edges (..., B - 1) of ``np.linspace(lo, hi, B + 1)`` as the CPU kernel computes them."""
    import torch

    flat = lo == hi
    lo = torch.where(flat, lo - 0.5, lo)
    hi = torch.where(flat, hi + 0.5, hi)
    delta = hi - lo
    step = delta / n_bins
    k = torch.arange(1, n_bins, dtype=torch.float64, device=lo.device)
    by_step = (k * step.unsqueeze(-1)) + lo.unsqueeze(-1)
    by_fraction = ((k / n_bins) * delta.unsqueeze(-1)) + lo.unsqueeze(-1)
    return torch.where((step == 0).unsqueeze(-1), by_fraction, by_step).contiguous()


def _bin(x, kept, n_bins: int):
    """Bin codes (..., d) of ``x`` over the values ``kept`` marks; dropped values get code ``n_bins``.

    Returns:
        (codes int64, imin, imax): the first kept index of the minimum / maximum (-1 if nothing is kept).
    """
    import torch

    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    low = torch.where(kept, x, inf)
    lo, imin = low.min(dim=-1)
    del low
    high = torch.where(kept, x, -inf)
    hi, imax = high.max(dim=-1)
    del high
    some = kept.any(dim=-1)
    lo = torch.where(some, lo, torch.zeros_like(lo))  # nothing kept: any finite range (every code is dropped)
    hi = torch.where(some, hi, torch.ones_like(hi))
    if n_bins == 1:
        codes = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    else:
        codes = torch.searchsorted(_edges(lo, hi, n_bins), x.contiguous(), right=True)
    codes = torch.where(kept, codes, n_bins)
    minus = torch.full_like(imin, -1)
    return codes, torch.where(some, imin, minus), torch.where(some, imax, minus)


def _entropies(joint, clogc, want_mm: bool, ix: int, iy: int):
    """MI (nats) and the Miller-Madow term from joint counts, as the CPU kernel computes them.

    Args:
        joint: counts as float32 (integers below 2**24, so exact, and so are their sums); axis ``ix`` holds
            the first vector's bins, axis ``iy`` (> ix) the second's.
        clogc: (d + 1,) float64 ``c ln c`` table of the CPU kernel, read by count.

    Returns:
        ``(mi, mm)`` over the remaining axes (``mm`` None unless wanted).
    """
    import torch

    s_joint = torch.take(clogc, joint.long()).sum(dim=(ix, iy))
    rows = joint.sum(dim=iy).long()  # the first vector's bin counts over the values both keep
    cols = joint.sum(dim=ix).long()
    s_x = torch.take(clogc, rows).sum(dim=ix)
    s_y = torch.take(clogc, cols).sum(dim=iy - 1)
    total = rows.sum(dim=ix)
    safe = torch.where(total > 0, total, torch.ones_like(total)).to(torch.float64)
    mi = torch.take(clogc, total) / safe - (s_x + s_y - s_joint) / safe
    mi = torch.where(total > 0, mi.clamp(min=0.0), torch.zeros_like(mi))  # clamp: rounding below an exact zero
    if not want_mm:
        return mi, None
    nz = ((torch.count_nonzero(rows, dim=ix) - 1) + (torch.count_nonzero(cols, dim=iy - 1) - 1)
          - (torch.count_nonzero(joint, dim=(ix, iy)) - 1))
    mm = torch.where(total > 0, nz / (2.0 * safe), torch.zeros_like(mi))
    return mi, mm


def _one_hot(codes, n_bins: int):
    """(G, r, d) codes -> (G, r * B, d) float32 indicators (a dropped value, code B, is all zero)."""
    import torch

    levels = torch.arange(n_bins, dtype=codes.dtype, device=codes.device).view(1, 1, n_bins, 1)
    hot = (codes.unsqueeze(2) == levels).to(torch.float32)
    return hot.reshape(codes.shape[0], -1, codes.shape[-1])


#: Rows per block when a whole group fits: below n, so diagonal blocks (computed whole) waste less than the
#: full square; not below this, so each product stays large enough to run at full speed.
_MIN_BLOCK_ROWS = 64


def plan_blocks(groups: int, n: int, d: int, n_bins: int, budget: int) -> tuple[int, int, int]:
    """How a call is cut to fit ``budget`` bytes of device memory.

    Returns:
        ``(groups_per_batch, rows_per_block, rows_per_binning_chunk)``: several groups share one batched
        product only when each group fits whole; otherwise one group at a time in square blocks of rows, with
        blocks (a, b), a <= b, of the upper triangle.
    """
    row_bytes = d * _ROW_VALUE_BYTES
    hot_bytes = 2 * n_bins * d * 5  # one-hot (bool + float32) of a row, in two blocks
    cell_bytes = n_bins * n_bins * _CELL_BYTES  # the joint table of a pair
    bin_rows = max(1, budget // max(1, d * _BIN_VALUE_BYTES))
    if n <= _MIN_BLOCK_ROWS:
        per_group = n * (row_bytes + hot_bytes) + n * n * cell_bytes
        if per_group <= budget:
            return min(groups, budget // per_group), n, bin_rows
    room = max(1, budget - n * row_bytes)
    # r**2 * cell_bytes + r * hot_bytes <= room
    r = int((-hot_bytes + math.sqrt(hot_bytes * hot_bytes + 4.0 * cell_bytes * room)) / (2.0 * cell_bytes))
    r = min(r, max(_MIN_BLOCK_ROWS, -(-n // 4)))
    return 1, max(1, min(n, r)), bin_rows


def _slow_pairs(xg, kg, pa, pb, n_bins, clogc, budget, d, want_mm):
    """Exact MI of the listed pairs (row indices into xg), each re-binned over the values both keep."""
    import torch

    chunk = max(1, budget // max(1, d * _SLOW_VALUE_BYTES + n_bins * n_bins * _CELL_BYTES))
    mis, mms = [], []
    for s in range(0, pa.numel(), chunk):
        a, b = pa[s:s + chunk], pb[s:s + chunk]
        both = kg[a] & kg[b]
        ca, _, _ = _bin(xg[a], both, n_bins)
        cb, _, _ = _bin(xg[b], both, n_bins)
        p = torch.arange(a.numel(), device=xg.device).unsqueeze(1)
        index = (p * (n_bins * n_bins) + ca * n_bins + cb)[both]
        joint = torch.bincount(index, minlength=a.numel() * n_bins * n_bins).view(-1, n_bins, n_bins).float()
        mi, mm = _entropies(joint, clogc, want_mm, 1, 2)
        mis.append(mi)
        mms.append(mm)
    return torch.cat(mis), (torch.cat(mms) if want_mm else None)


def pairwise_mi_torch(flat: np.ndarray, keep: np.ndarray, use_keep: bool, n_bins: int, n: int, *, device=None,
                      source=None, max_bytes: int | None = None, want_mm: bool = True):
    """MI (nats) of every pair of rows within every group of ``n`` rows, on a torch device.

    Args:
        flat: (groups * n, d) float64 values (validated by the caller).
        keep: (groups * n, d) trim mask from :func:`lamina.stats.trim_mask` (all True without trimming).
        use_keep: whether trimming is on (pairs are then checked for their own edges).
        n_bins: bins per axis B (1..255).
        n: rows per group.
        device: torch device (see :func:`resolve_device`).
        source: optional tensor holding the same values as ``flat`` (any float dtype, same shape once
            reshaped) already on ``device``, used instead of uploading ``flat``.
        max_bytes: device working-set budget (default :data:`DEFAULT_MAX_BYTES`).
        want_mm: also return the Miller-Madow term.

    Returns:
        ``(mi, mm)``: (groups, n, n) float64 arrays, symmetric; ``mm`` is 0.0 when not wanted.
    """
    import torch

    from ._mi_kernels import clogc_table

    device = resolve_device(device, source)
    budget = int(DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
    if budget < 1:
        raise LaminaError(f"max_bytes must be positive (got {max_bytes})")
    m, d = flat.shape
    if d >= 2**24:
        raise LaminaError(f"the torch MI backend counts in float32 and takes vectors of fewer than 2**24 values "
                          f"(got {d}); use backend='numba'")
    groups = m // n
    clogc = torch.from_numpy(clogc_table(d)).to(device)
    if source is not None:
        source = source.detach().reshape(m, d)
    out = np.zeros((groups, n, n))
    out_mm = np.zeros((groups, n, n)) if want_mm else None
    row_bytes = d * _ROW_VALUE_BYTES
    batch, r, bin_rows = plan_blocks(groups, n, d, n_bins, budget)
    with torch.no_grad(), _exact_fast_matmul(device):
        for g0 in range(0, groups, batch):
            g1 = min(groups, g0 + batch)
            gb = g1 - g0
            rows = slice(g0 * n, g1 * n)
            if source is not None:
                xg = source[rows].to(device=device, dtype=torch.float64)
            else:
                xg = torch.from_numpy(flat[rows]).to(device)
            kg = torch.from_numpy(keep[rows]).to(device)
            codes = torch.empty(xg.shape, dtype=torch.uint8, device=device)
            imin = torch.empty(xg.shape[0], dtype=torch.int64, device=device)
            imax = torch.empty_like(imin)
            for s in range(0, xg.shape[0], bin_rows):
                c, lo_at, hi_at = _bin(xg[s:s + bin_rows], kg[s:s + bin_rows], n_bins)
                codes[s:s + bin_rows] = c.to(torch.uint8)  # B <= 255 fits
                imin[s:s + bin_rows], imax[s:s + bin_rows] = lo_at, hi_at
                del c
            codes3, k3 = codes.view(gb, n, d), kg.view(gb, n, d)
            lo3, hi3 = imin.view(gb, n), imax.view(gb, n)
            slow = []
            for a0 in range(0, n, r):
                a1 = min(n, a0 + r)
                hot_a = _one_hot(codes3[:, a0:a1].long(), n_bins)
                for b0 in range(a0, n, r):
                    b1 = min(n, b0 + r)
                    hot_b = hot_a if b0 == a0 else _one_hot(codes3[:, b0:b1].long(), n_bins)
                    product = torch.bmm(hot_a, hot_b.transpose(1, 2))  # (gb, ra * B, rb * B)
                    joint = product.view(gb, a1 - a0, n_bins, b1 - b0, n_bins)  # [g, a, i, b, j]
                    mi, mm = _entropies(joint, clogc, want_mm, 2, 4)
                    del product, joint
                    out[g0:g1, a0:a1, b0:b1] = mi.cpu().numpy()
                    if want_mm:
                        out_mm[g0:g1, a0:a1, b0:b1] = mm.cpu().numpy()
                    if use_keep:
                        slow.append(_own_edges_wrong(k3, lo3, hi3, a0, a1, b0, b1))
            if slow:
                gs, pa, pb = (torch.cat(parts) for parts in zip(*slow))
                if gs.numel():
                    mi_s, mm_s = _slow_pairs(xg, kg, gs * n + pa, gs * n + pb, n_bins, clogc,
                                             max(1, budget - gb * n * row_bytes), d, want_mm)
                    at = (gs.cpu().numpy() + g0, pa.cpu().numpy(), pb.cpu().numpy())
                    out[at] = mi_s.cpu().numpy()
                    if want_mm:
                        out_mm[at] = mm_s.cpu().numpy()
            del xg, kg, codes
    return _mirror(out), (_mirror(out_mm) if want_mm else 0.0)


def _own_edges_wrong(k3, lo3, hi3, a0, a1, b0, b1):
    """Pairs (g, a, b), a <= b, of a block whose partner drops the dimension holding a row's kept minimum or
    maximum (first index, the CPU kernel's test) or where a row keeps nothing: their edges differ from the
    rows' own, so they are re-binned."""
    import torch

    def partner_keeps(k_part, at):  # [g, i, j]: row j of k_part keeps the dimension at[g, i]
        idx = at.clamp(min=0).unsqueeze(1).expand(-1, k_part.shape[1], -1)
        return torch.gather(k_part, 2, idx).transpose(1, 2)

    la, ha, lb, hb = lo3[:, a0:a1], hi3[:, a0:a1], lo3[:, b0:b1], hi3[:, b0:b1]
    b_keeps = partner_keeps(k3[:, b0:b1], la) & partner_keeps(k3[:, b0:b1], ha)  # (g, ra, rb)
    a_keeps = (partner_keeps(k3[:, a0:a1], lb) & partner_keeps(k3[:, a0:a1], hb)).transpose(1, 2)
    nothing = (la < 0).unsqueeze(2) | (lb < 0).unsqueeze(1)
    wrong = nothing | ~(b_keeps & a_keeps)
    a_idx = torch.arange(a0, a1, device=k3.device).unsqueeze(1)
    b_idx = torch.arange(b0, b1, device=k3.device).unsqueeze(0)
    wrong &= (a_idx <= b_idx).unsqueeze(0)
    g, a, b = torch.nonzero(wrong, as_tuple=True)
    return g, a + a0, b + b0


def _mirror(upper: np.ndarray) -> np.ndarray:
    """Symmetric (..., n, n) from the upper triangle (diagonal included) of ``upper``."""
    full = np.triu(upper)
    full = full + np.swapaxes(np.triu(upper, 1), -1, -2)
    return full
