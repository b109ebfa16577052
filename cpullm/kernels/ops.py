"""Element-wise and attention kernels of the llama block.

All take whole C-contiguous buffers plus an explicit token count ``T`` so each is
compiled once.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from cpullm.kernels.half import kv_get, kv_put
from cpullm.kernels.simd import vaxpy, vdot


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
def store_kv(k, v, T, layer, pos0, n_kv, head_dim, kc, vc):
    # kc, vc: float32, or uint16 holding f16 bits (see kernels.half)
    """Copy T new keys/values (B, n_kv*head_dim) into the cache.

    Position p lives in slot p % C (C = kc.shape[2], the cache capacity): a plain cache
    when positions stay below C, a rolling buffer for sliding-window models."""
    C = kc.shape[2]
    for t in range(T):
        slot = (pos0 + t) % C
        for h in range(n_kv):
            for i in range(head_dim):
                kv_put(kc, (layer, h, slot, i), k[t, h * head_dim + i])
                kv_put(vc, (layer, h, slot, i), v[t, h * head_dim + i])


@nb.njit(cache=True, parallel=True)
def shift_kv(kc, vc, n_keep, n_discard, n_past, rope_dim, inv_freq, lut):
    """Drop cache positions n_keep .. n_keep+n_discard-1 and close the gap.

    Positions n_keep+n_discard .. n_past-1 move down by n_discard (slots == positions:
    only for caches that never wrapped) and their keys are turned back by n_discard
    positions of RoPE, so they read as if computed at their new positions.
    kc, vc (L, n_kv, C, head_dim); inv_freq (rope_dim/2,) f64.

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
        for src in range(n_keep + n_discard, n_past):
            dst = src - n_discard
            for i in range(hd):
                vc[layer, h, dst, i] = vc[layer, h, src, i]
                kc[layer, h, dst, i] = kc[layer, h, src, i]
            for i in range(half):
                a = kv_get(kc[layer, h, dst, 2 * i], lut)
                b = kv_get(kc[layer, h, dst, 2 * i + 1], lut)
                kv_put(kc, (layer, h, dst, 2 * i), a * cs[i, 0] - b * cs[i, 1])
                kv_put(kc, (layer, h, dst, 2 * i + 1), a * cs[i, 1] + b * cs[i, 0])


@nb.njit(cache=True, parallel=True)
def attention(q, T, layer, pos0, n_heads, n_kv, head_dim, window, kc, vc, att, out, lut):
    """Causal attention with grouped-query heads over the cache.

    q (B, n_heads*head_dim); kc, vc (L, n_kv, C, head_dim); att (n_heads, C) scratch;
    out (B, n_heads*head_dim). Query t at position p = pos0 + t sees keys at positions
    max(0, p - window + 1) .. p (window 0: all), position j read from slot j % C; never
    more than the C most recent positions (the caller sizes C so that none is lost)."""
    C = kc.shape[2]
    group = n_heads // n_kv
    scale = np.float32(1.0 / math.sqrt(head_dim))
    # 16-lane dot / axpy over whole cache rows (see simd.vdot); buffers are C-contiguous
    vec = head_dim % 16 == 0
    qs = q.shape[1]
    os_ = out.shape[1]
    for h in nb.prange(n_heads):
        kh = h // group
        for t in range(T):
            p = pos0 + t
            start = max(0, p - C + 1)
            if window > 0 and p - window + 1 > start:
                start = p - window + 1
            mx = np.float32(-np.inf)
            for j in range(start, p + 1):
                slot = j % C
                if vec:
                    s = vdot(q, t * qs + h * head_dim, kc,
                             ((layer * n_kv + kh) * C + slot) * head_dim, head_dim, lut)
                else:
                    s = np.float32(0.0)
                    for i in range(head_dim):
                        s += q[t, h * head_dim + i] * kv_get(kc[layer, kh, slot, i], lut)
                s *= scale
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
                out[t, h * head_dim + i] = 0.0
            for j in range(start, p + 1):
                slot = j % C
                w = att[h, slot] * inv
                if vec:
                    vaxpy(out, t * os_ + h * head_dim, w, vc,
                          ((layer * n_kv + kh) * C + slot) * head_dim, head_dim, lut)
                else:
                    for i in range(head_dim):
                        out[t, h * head_dim + i] += w * kv_get(vc[layer, kh, slot, i], lut)


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
