"""Compiled (numba) kernels behind :func:`lamina.stats.pairwise_mutual_information`.

Binning replicates ``np.histogram2d`` exactly: edges are ``np.linspace(lo, hi, B + 1)`` over the kept values
(``lo == hi`` widens the range by 0.5 each way, as numpy does), and a value's bin is
``searchsorted(edges, v, side="right") - 1`` with the top edge folded into the last bin. Dropped (trimmed)
dimensions get the extra code ``B``, so one (B+1) x (B+1) table counts a pair in a single branch-free pass;
its last row and column are ignored.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["bin_vectors", "pair_mi", "clogc_table"]


@njit(cache=True, inline="always")
def _edge(k, n_bins, lo, hi, step, delta):
    # np.linspace(lo, hi, n_bins + 1)[k], operation for operation.
    if k == n_bins:
        return hi
    if step == 0.0:
        return (k / n_bins) * delta + lo
    return k * step + lo


@njit(cache=True, inline="always")
def _bin_of(v, n_bins, lo, hi, step, delta):
    if step != 0.0:
        g = int((v - lo) / step)
    else:
        g = 0
    if g < 0:
        g = 0
    if g > n_bins - 1:
        g = n_bins - 1
    while g > 0 and v < _edge(g, n_bins, lo, hi, step, delta):
        g -= 1
    while g < n_bins - 1 and v >= _edge(g + 1, n_bins, lo, hi, step, delta):
        g += 1
    return g


@njit(cache=True, inline="always")
def _range_of(x, keep, use_keep):
    lo = np.inf
    hi = -np.inf
    for k in range(x.shape[0]):
        if use_keep and not keep[k]:
            continue
        v = x[k]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    if lo == hi:
        lo -= 0.5
        hi += 0.5
    return lo, hi


@njit(cache=True, parallel=True)
def bin_vectors(X, keep, use_keep, n_bins, codes, imin, imax, own):
    """Bin every row of ``X`` (shape (m, d)) over its own kept values.

    Writes ``codes`` (m, d): bin index, or ``n_bins`` for dropped dimensions; ``imin``/``imax`` (m,): the first
    kept dimension holding the row's minimum / maximum (-1 if nothing is kept); ``own`` (m, n_bins): the
    row's bin counts.
    """
    m, d = X.shape
    for r in prange(m):
        x = X[r]
        kr = keep[r]
        lo = np.inf
        hi = -np.inf
        a = -1
        b = -1
        for k in range(d):
            if use_keep and not kr[k]:
                continue
            v = x[k]
            if v < lo:
                lo = v
                a = k
            if v > hi:
                hi = v
                b = k
        imin[r] = a
        imax[r] = b
        for i in range(n_bins):
            own[r, i] = 0
        if a < 0:
            for k in range(d):
                codes[r, k] = n_bins
            continue
        if lo == hi:
            lo -= 0.5
            hi += 0.5
        delta = hi - lo
        step = delta / n_bins
        for k in range(d):
            if use_keep and not kr[k]:
                codes[r, k] = n_bins
            else:
                code = _bin_of(x[k], n_bins, lo, hi, step, delta)
                codes[r, k] = code
                own[r, code] += 1


@njit(cache=True, parallel=True)
def zscore_keep(X, trim_z, keep):
    """keep[r, k] = |z| <= trim_z with z = (X[r, k] - mean) / std over the row (ddof=0, two-pass like
    numpy); a constant row keeps everything (z = 0)."""
    m, d = X.shape
    for r in prange(m):
        x = X[r]
        mean = 0.0
        for k in range(d):
            mean += x[k]
        mean /= d
        ss = 0.0
        for k in range(d):
            dev = x[k] - mean
            ss += dev * dev
        std = np.sqrt(ss / d)
        for k in range(d):
            if std > 0:
                keep[r, k] = abs((x[k] - mean) / std) <= trim_z
            else:
                keep[r, k] = True


@njit(cache=True)
def clogc_table(d):
    """``c * ln(c)`` for c = 0..d (0 ln 0 = 0)."""
    out = np.zeros(d + 1)
    for c in range(2, d + 1):
        out[c] = c * math.log(c)
    return out


@njit(cache=True, inline="always")
def _mi_from_table(table, n_bins, clogc, rowsum, colsum):
    w = n_bins + 1
    total = 0
    s_joint = 0.0
    nz_joint = 0
    for i in range(n_bins):
        rowsum[i] = 0
        colsum[i] = 0
    for i in range(n_bins):
        for j in range(n_bins):
            c = table[i * w + j]
            table[i * w + j] = 0
            if c > 0:
                rowsum[i] += c
                colsum[j] += c
                s_joint += clogc[c]
                nz_joint += 1
    for i in range(w):  # the dropped row and column
        table[i * w + n_bins] = 0
        table[n_bins * w + i] = 0
    s_x = 0.0
    s_y = 0.0
    nz_x = 0
    nz_y = 0
    for i in range(n_bins):
        total += rowsum[i]
        if rowsum[i] > 0:
            s_x += clogc[rowsum[i]]
            nz_x += 1
        if colsum[i] > 0:
            s_y += clogc[colsum[i]]
            nz_y += 1
    if total == 0:
        return 0.0, 0.0
    mi = clogc[total] / total - (s_x + s_y - s_joint) / total
    if mi < 0.0:  # rounding below an exact zero
        mi = 0.0
    # Miller-Madow: each entropy gains (nonzero bins - 1) / (2N).
    mm = ((nz_x - 1) + (nz_y - 1) - (nz_joint - 1)) / (2.0 * total)
    return mi, mm


@njit(cache=True)
def _slow_pair(x, y, kx, ky, use_keep, n_bins, table):
    """Re-bin a pair over the dimensions both keep (exact histogram2d semantics)."""
    d = x.shape[0]
    both = np.empty(d, dtype=np.bool_)
    for k in range(d):
        both[k] = (kx[k] and ky[k]) if use_keep else True
    w = n_bins + 1
    for t in range(w * w):
        table[t] = 0
    n_kept = 0
    for k in range(d):
        if both[k]:
            n_kept += 1
    if n_kept == 0:
        return
    lox, hix = _range_of(x, both, True)
    loy, hiy = _range_of(y, both, True)
    dx = hix - lox
    dy = hiy - loy
    sx = dx / n_bins
    sy = dy / n_bins
    for k in range(d):
        if both[k]:
            bx = _bin_of(x[k], n_bins, lox, hix, sx, dx)
            by = _bin_of(y[k], n_bins, loy, hiy, sy, dy)
            table[bx * w + by] += 1


@njit(cache=True, parallel=True)
def pair_mi(X, keep, use_keep, codes, imin, imax, own, n_bins, n_rows, pa, pb, clogc, out, out_mm, want_mm, chunk):
    """MI (nats) of every pair (pa[p], pb[p]) within every group of ``n_rows`` rows of ``X``.

    ``X``/``keep``/``codes`` have shape (n_groups * n_rows, d); ``own`` (n_groups * n_rows, n_bins) holds each
    row's bin counts over its own kept values. Results go to ``out[g, a, b]`` and ``out[g, b, a]`` (and the
    Miller-Madow term to ``out_mm``).

    Fast path: one counting pass into a (B+1) x (B+1) table; the marginals are the rows' own counts minus
    the dimensions the partner drops (the table's last column / row), and only the joint cells need
    ``c ln c`` look-ups.
    """
    n_pairs = pa.shape[0]
    n_groups = X.shape[0] // n_rows
    total = n_groups * n_pairs
    n_chunks = (total + chunk - 1) // chunk
    d = X.shape[1]
    w = n_bins + 1
    ww = w * w
    for c in prange(n_chunks):
        table = np.zeros(ww, dtype=np.int32)
        joint = np.empty(d, dtype=np.uint16)
        rowsum = np.zeros(n_bins, dtype=np.int64)
        colsum = np.zeros(n_bins, dtype=np.int64)
        stop = min(total, (c + 1) * chunk)
        for t in range(c * chunk, stop):
            g = t // n_pairs
            p = t - g * n_pairs
            a = pa[p]
            b = pb[p]
            ra = g * n_rows + a
            rb = g * n_rows + b
            fast = True
            if use_keep:
                ia = imin[ra]
                xa = imax[ra]
                ib = imin[rb]
                xb = imax[rb]
                if ia < 0 or ib < 0:
                    fast = False
                elif not (keep[rb, ia] and keep[rb, xa] and keep[ra, ib] and keep[ra, xb]):
                    fast = False
            if fast:
                ca = codes[ra]
                cb = codes[rb]
                for k in range(d):
                    joint[k] = ca[k] * w + cb[k]
                for k in range(d):
                    table[joint[k]] += 1
                s_joint = 0.0
                nz_joint = 0
                for i in range(n_bins):
                    for j in range(n_bins):
                        cij = table[i * w + j]
                        s_joint += clogc[cij]
                        nz_joint += cij > 0
                n_tot = 0
                s_x = 0.0
                s_y = 0.0
                nz_x = 0
                nz_y = 0
                for i in range(n_bins):
                    cx = own[ra, i] - table[i * w + n_bins]
                    cy = own[rb, i] - table[n_bins * w + i]
                    n_tot += cx
                    s_x += clogc[cx]
                    s_y += clogc[cy]
                    nz_x += cx > 0
                    nz_y += cy > 0
                for k in range(ww):
                    table[k] = 0
                if n_tot == 0:
                    mi = 0.0
                    mm = 0.0
                else:
                    mi = clogc[n_tot] / n_tot - (s_x + s_y - s_joint) / n_tot
                    if mi < 0.0:  # rounding below an exact zero
                        mi = 0.0
                    mm = ((nz_x - 1) + (nz_y - 1) - (nz_joint - 1)) / (2.0 * n_tot)
            else:
                _slow_pair(X[ra], X[rb], keep[ra], keep[rb], use_keep, n_bins, table)
                mi, mm = _mi_from_table(table, n_bins, clogc, rowsum, colsum)
            out[g, a, b] = mi  # upper triangle only; the caller mirrors it
            if want_mm:
                out_mm[g, a, b] = mm
