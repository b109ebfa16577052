"""Element-wise and attention kernels of the llama block.

All take whole C-contiguous buffers plus an explicit token count ``T`` so each is
compiled once.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


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
    """Copy T new keys/values (B, n_kv*head_dim) into the cache at positions pos0.."""
    for t in range(T):
        for h in range(n_kv):
            for i in range(head_dim):
                kc[layer, h, pos0 + t, i] = k[t, h * head_dim + i]
                vc[layer, h, pos0 + t, i] = v[t, h * head_dim + i]


@nb.njit(cache=True, parallel=True)
def attention(q, T, layer, pos0, n_heads, n_kv, head_dim, window, kc, vc, att, out):
    """Causal attention with grouped-query heads over the cache.

    q (B, n_heads*head_dim); kc, vc (L, n_kv, ctx, head_dim); att (n_heads, ctx) scratch;
    out (B, n_heads*head_dim). Query t at position p = pos0 + t sees keys at positions
    max(0, p - window + 1) .. p (window 0: all)."""
    group = n_heads // n_kv
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for h in nb.prange(n_heads):
        kh = h // group
        for t in range(T):
            p = pos0 + t
            start = 0
            if window > 0 and p - window + 1 > 0:
                start = p - window + 1
            mx = np.float32(-np.inf)
            for j in range(start, p + 1):
                s = np.float32(0.0)
                for i in range(head_dim):
                    s += q[t, h * head_dim + i] * kc[layer, kh, j, i]
                s *= scale
                att[h, j] = s
                if s > mx:
                    mx = s
            tot = np.float32(0.0)
            for j in range(start, p + 1):
                e = np.float32(math.exp(att[h, j] - mx))
                att[h, j] = e
                tot += e
            inv = np.float32(1.0) / tot
            for i in range(head_dim):
                out[t, h * head_dim + i] = 0.0
            for j in range(start, p + 1):
                w = att[h, j] * inv
                for i in range(head_dim):
                    out[t, h * head_dim + i] += w * vc[layer, kh, j, i]


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
