"""The GPU path of pairwise histogram MI: one-hot codes and one matrix product per group of rows.

Joint counts for all pairs of a group come from ``O @ O.T`` where ``O`` (n*(B+1), d) is the one-hot encoding
of every row's bin codes (dropped dimensions use the extra code B, whose row/column is ignored). Counts are
exact in float32 up to 2**24 samples. Pairs whose kept min/max changes with the partner's trimming are
re-binned exactly on the CPU.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pairwise_mi_torch"]


def pairwise_mi_torch(X, flat: np.ndarray, keep: np.ndarray, use_keep: bool, n_bins: int, n: int):
    import torch

    from ._mi_kernels import bin_vectors, clogc_table, slow_pairs_mi

    device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    m, d = flat.shape
    if d >= 2**24:
        raise ValueError("the torch MI path counts in float32 and needs d < 2**24")
    codes = np.empty((m, d), dtype=np.int32)
    imin = np.empty(m, dtype=np.int64)
    imax = np.empty(m, dtype=np.int64)
    bin_vectors(flat, keep, use_keep, n_bins, codes, imin, imax, np.empty((m, n_bins), dtype=np.int64))
    w = n_bins + 1
    groups = m // n
    out = np.zeros((groups, n, n))
    out_mm = np.zeros((groups, n, n))
    codes_t = torch.from_numpy(codes).to(device)
    for g in range(groups):
        c = codes_t[g * n:(g + 1) * n]  # (n, d)
        onehot = torch.zeros((n, w, d), dtype=torch.float32, device=device)
        onehot.scatter_(1, c.long().unsqueeze(1), 1.0)
        onehot = onehot.reshape(n * w, d)
        joint = (onehot @ onehot.T).reshape(n, w, n, w).permute(0, 2, 1, 3)[:, :, :n_bins, :n_bins]
        joint = joint.double()  # exact integer counts
        rows = joint.sum(dim=3)
        cols = joint.sum(dim=2)
        total = rows.sum(dim=2)

        def slogs(t):
            return torch.special.xlogy(t, t)

        s_joint = slogs(joint).sum(dim=(2, 3))
        s_x = slogs(rows).sum(dim=2)
        s_y = slogs(cols).sum(dim=2)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        mi = torch.where(total > 0, torch.log(safe) - (s_x + s_y - s_joint) / safe, torch.zeros_like(total))
        nz = ((rows > 0).sum(2) - 1) + ((cols > 0).sum(2) - 1) - ((joint > 0).sum((2, 3)) - 1)
        mm = torch.where(total > 0, nz / (2.0 * safe), torch.zeros_like(total))
        out[g] = mi.clamp(min=0.0).cpu().numpy()
        out_mm[g] = mm.cpu().numpy()
    if use_keep:
        rows_a, rows_b = [], []
        base = np.arange(groups)[:, None] * n
        for a, b in zip(*np.triu_indices(n)):
            ra, rb = base[:, 0] + a, base[:, 0] + b
            need = (imin[ra] < 0) | (imin[rb] < 0)
            ok = ~need
            ia, xa, ib, xb = imin[ra], imax[ra], imin[rb], imax[rb]
            need[ok] |= ~(keep[rb[ok], ia[ok]] & keep[rb[ok], xa[ok]] & keep[ra[ok], ib[ok]] & keep[ra[ok], xb[ok]])
            rows_a.extend(ra[need].tolist())
            rows_b.extend(rb[need].tolist())
        if rows_a:
            ra = np.array(rows_a, dtype=np.int64)
            rb = np.array(rows_b, dtype=np.int64)
            mi_fix = np.empty(len(ra))
            mm_fix = np.empty(len(ra))
            slow_pairs_mi(flat, keep, True, n_bins, ra, rb, clogc_table(d), mi_fix, mm_fix)
            g_idx, a_idx, b_idx = ra // n, ra % n, rb % n
            out[g_idx, a_idx, b_idx] = out[g_idx, b_idx, a_idx] = mi_fix
            out_mm[g_idx, a_idx, b_idx] = out_mm[g_idx, b_idx, a_idx] = mm_fix
    return out, out_mm
