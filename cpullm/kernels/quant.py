"""int8 block quantization of activations (the x side of every quantized matmul).

For each row of ``x`` and each block of 32 values: ``d = max|x| / 127``,
``q = round_half_away(x / d)``, ``s = d * sum(q)`` (the block sum, which Q4_1's
offset term needs). Scales stay float32 (ggml rounds them to f16; float32 is a
little more accurate and costs nothing here).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from cpullm.kernels.tables import QK


@nb.njit(cache=True, parallel=True, fastmath=False)
def quantize_rows_q8(x, T, n, q, d, s):
    """x[:T, :n] f32 -> q[:T, :n] int8, d[:T, :n/32] f32 scales, s[:T, :n/32] f32 block sums."""
    nb_ = n // QK
    for t in nb.prange(T):
        for b in range(nb_):
            amax = np.float32(0.0)
            for j in range(QK):
                a = abs(x[t, b * QK + j])
                if a > amax:
                    amax = a
            dd = amax / np.float32(127.0)
            inv = np.float32(1.0) / dd if dd != 0 else np.float32(0.0)
            isum = 0
            for j in range(QK):
                v = x[t, b * QK + j] * inv
                qi = int(v + np.float32(0.5)) if v >= 0 else -int(np.float32(0.5) - v)
                q[t, b * QK + j] = qi
                isum += qi
            d[t, b] = dd
            s[t, b] = dd * np.float32(isum)


@nb.njit(cache=True, parallel=True)
def interleave8(q, d, s, T, n, qi, di, si):
    """Activations of 8 tokens side by side, for the 8-token tiles (simd.make_tile8).

    q[:T, :n] i8, d, s[:T, :n/32] f32 -> for token group g (tokens 8g..8g+7), block b,
    4-byte group G, token t, byte k (tokens past T are zeros):
        qi[((g*nblk + b)*8 + G)*32 + t*4 + k] = q[8g+t, 32b + 4G + k]     qi (>=8*ceil(T/8)*n,)
        di[(g*nblk + b)*8 + t] = d[8g+t, b], si likewise                  di, si (>=ceil(T/8)*n/4,)
    """
    nblk = n // QK
    ng = (T + 7) // 8
    for gb in nb.prange(ng * nblk):
        g = gb // nblk
        b = gb - g * nblk
        base = gb * 256
        for t in range(8):
            tok = 8 * g + t
            if tok < T:
                for G in range(8):
                    for k in range(4):
                        qi[base + G * 32 + t * 4 + k] = q[tok, b * QK + 4 * G + k]
                di[gb * 8 + t] = d[tok, b]
                si[gb * 8 + t] = s[tok, b]
            else:
                for G in range(8):
                    for k in range(4):
                        qi[base + G * 32 + t * 4 + k] = 0
                di[gb * 8 + t] = 0.0
                si[gb * 8 + t] = 0.0
