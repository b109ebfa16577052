"""Element-wise and attention kernels of the llama block.

All take whole C-contiguous buffers plus an explicit token count ``T`` so each is
compiled once.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from cpullm.kernels.half import kv_axpy, kv_copy_row, kv_dot, kv_read, kv_write_row


@nb.njit(cache=True)
def rmsnorm(x, T, w, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w   for t < T.  x, out (B, n); w (n,)."""
    n = w.shape[0]
    for t in range(T):
        ss = 0.0  # float64 accumulation
        for i in range(n):
            ss += np.float64(x[t, i]) * x[t, i]
        scale = np.float32(1.0 / math.sqrt(ss / n + eps))
        for i in range(n):
            out[t, i] = x[t, i] * scale * w[i]


@nb.njit(cache=True)
def rope(x, T, n_heads, head_dim, rope_dim, pos0, inv_freq):
    """Rotate adjacent pairs (GGUF llama convention) in place.

    x (B, n_heads*head_dim); token t sits at position pos0 + t; inv_freq (rope_dim/2,)
    float64. Pair i of each head: (x[2i], x[2i+1]) turned by angle pos * inv_freq[i];
    dimensions past rope_dim are left alone."""
    half = rope_dim // 2
    for t in range(T):
        pos = pos0 + t
        for i in range(half):
            ang = pos * inv_freq[i]
            c = np.float32(math.cos(ang))
            s = np.float32(math.sin(ang))
            for h in range(n_heads):
                j = h * head_dim + 2 * i
                a = x[t, j]
                b = x[t, j + 1]
                x[t, j] = a * c - b * s
                x[t, j + 1] = a * s + b * c


@nb.njit(cache=True)
def store_kv(k, v, T, layer, pos0, n_kv, head_dim, kc, vc, ks, vs):
    """Copy T new keys/values (B, n_kv*head_dim) into the cache.

    Position p lives in slot p % C (C = kc.shape[2], the cache capacity): a plain cache
    when positions stay below C, a rolling buffer for sliding-window models.
    kc, vc: float32, uint16 f16 bits, or int8 q8_0 blocks with scales ks, vs
    (L, n_kv, C, head_dim/32); see kernels.half."""
    C = kc.shape[2]
    for t in range(T):
        slot = (pos0 + t) % C
        for h in range(n_kv):
            kv_write_row(kc, ks, layer, h, slot, k, t, h * head_dim, head_dim)
            kv_write_row(vc, vs, layer, h, slot, v, t, h * head_dim, head_dim)


@nb.njit(cache=True, parallel=True)
def shift_kv(kc, vc, ks, vs, n_keep, n_discard, n_past, rope_dim, inv_freq, lut):
    """Drop cache positions n_keep .. n_keep+n_discard-1 and close the gap.

    Positions n_keep+n_discard .. n_past-1 move down by n_discard (slots == positions:
    only for caches that never wrapped) and their keys are turned back by n_discard
    positions of RoPE, so they read as if computed at their new positions.
    kc, vc (L, n_kv, C, head_dim) with scales ks, vs (q8_0 only); inv_freq (rope_dim/2,).

    Example, n_keep 2, n_discard 3, n_past 8: positions [a b c d e f g h] become
    [a b f g h], f g h now at positions 2 3 4."""
    L, n_kv, C, hd = kc.shape
    half = rope_dim // 2
    cs = np.empty((half, 2), dtype=np.float32)
    for i in range(half):
        ang = -n_discard * inv_freq[i]
        cs[i, 0] = math.cos(ang)
        cs[i, 1] = math.sin(ang)
    for lh in nb.prange(L * n_kv):
        layer = lh // n_kv
        h = lh % n_kv
        row = np.empty((1, hd), dtype=np.float32)
        for src in range(n_keep + n_discard, n_past):
            dst = src - n_discard
            kv_copy_row(vc, vs, layer, h, src, dst, hd)
            for i in range(hd):
                row[0, i] = kv_read(kc, ks, layer, h, src, i, lut)
            for i in range(half):
                a = row[0, 2 * i]
                b = row[0, 2 * i + 1]
                row[0, 2 * i] = a * cs[i, 0] - b * cs[i, 1]
                row[0, 2 * i + 1] = a * cs[i, 1] + b * cs[i, 0]
            kv_write_row(kc, ks, layer, h, dst, row, 0, 0, hd)


@nb.njit(cache=True, parallel=True)
def attention(q, T, layer, pos0, n_heads, n_kv, head_dim, window, kc, vc, ks, vs, att, out,
              lut):
    """Causal attention with grouped-query heads over the cache.

    q (B, n_heads*head_dim); kc, vc (L, n_kv, C, head_dim) (+ scales ks, vs for q8_0);
    att (n_heads, C) scratch; out (B, n_heads*head_dim). Query t at position p = pos0 + t
    sees keys at positions max(0, p - window + 1) .. p (window 0: all), position j read
    from slot j % C; never more than the C most recent positions (the caller sizes C so
    that none is lost). Rows are read 16 lanes at a time where the type allows
    (kernels.half.kv_dot / kv_axpy)."""
    C = kc.shape[2]
    group = n_heads // n_kv
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for h in nb.prange(n_heads):
        kh = h // group
        ho = h * head_dim
        for t in range(T):
            p = pos0 + t
            start = max(0, p - C + 1)
            if window > 0 and p - window + 1 > start:
                start = p - window + 1
            mx = np.float32(-np.inf)
            for j in range(start, p + 1):
                slot = j % C
                s = kv_dot(q, t, ho, kc, ks, layer, kh, slot, head_dim, lut) * scale
                att[h, slot] = s
                if s > mx:
                    mx = s
            tot = np.float32(0.0)
            for j in range(start, p + 1):
                slot = j % C
                e = np.float32(math.exp(att[h, slot] - mx))
                att[h, slot] = e
                tot += e
            inv = np.float32(1.0) / tot
            for i in range(head_dim):
                out[t, ho + i] = 0.0
            for j in range(start, p + 1):
                slot = j % C
                kv_axpy(out, t, ho, att[h, slot] * inv, vc, vs, layer, kh, slot, head_dim, lut)


@nb.njit(cache=True)
def swiglu(g, u, T, n):
    """g[t] = silu(g[t]) * u[t] in place, for t < T, first n columns."""
    for t in range(T):
        for i in range(n):
            a = g[t, i]
            g[t, i] = a / (np.float32(1.0) + np.float32(math.exp(-a))) * u[t, i]


@nb.njit(cache=True)
def add_into(x, y, T, n):
    """x[:T, :n] += y[:T, :n]."""
    for t in range(T):
        for i in range(n):
            x[t, i] += y[t, i]
