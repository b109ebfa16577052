"""Weight x activation products for every supported weight type.

A weight matrix is ``rows`` rows of ``cols`` elements, stored in ggml blocks at
byte ``off`` of the mapped file ``data`` (uint8). The activations come in two
forms: int8 blocks (``xq``, ``xd``, ``xs`` from :func:`quantize_rows_q8`) for the
quantized weight types, and float32 (``xf``) for F32/F16/BF16 weights.

    out[t, r] = sum_c W[r, c] * x[t, c]        t < T tokens, r < rows

Rows are spread over threads; every weight block is decoded once and used for all
T tokens, so prefill reads the weights once per call, not once per token.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from cpullm.kernels.tables import QK, T_BF16, T_F16, T_F32, T_Q4_0, T_Q4_1, T_Q8_0


@nb.njit(cache=True, inline="always")
def _f16(data, p, lut):
    return lut[0, np.int64(data[p]) | (np.int64(data[p + 1]) << 8)]


@nb.njit(cache=True, parallel=True)
def matmul(data, off, qtype, rows, cols, T, xq, xd, xs, xf, lut, out):
    """data (file,) u8; xq (>=T, >=cols) i8; xd, xs (>=T, >=cols/32) f32; xf (>=T, >=cols) f32;
    lut (2, 65536) f32; out (>=T, >=rows) f32.  Writes out[:T, :rows].

    Buffers are passed whole (C-contiguous) with explicit T and sizes, so one
    compiled specialization serves every call."""
    nblk = cols // QK
    if qtype == T_Q8_0:
        rb = nblk * 34
        for r in nb.prange(rows):
            acc = np.zeros(T, dtype=np.float32)
            for b in range(nblk):
                p = off + r * rb + b * 34
                dw = _f16(data, p, lut)
                for t in range(T):
                    isum = 0
                    for j in range(QK):
                        isum += np.int32(np.int8(data[p + 2 + j])) * np.int32(xq[t, b * QK + j])
                    acc[t] += dw * xd[t, b] * np.float32(isum)
            for t in range(T):
                out[t, r] = acc[t]
    elif qtype == T_Q4_0 or qtype == T_Q4_1:
        bsz = 18 if qtype == T_Q4_0 else 20
        qoff = bsz - 16
        rb = nblk * bsz
        for r in nb.prange(rows):
            acc = np.zeros(T, dtype=np.float32)
            for b in range(nblk):
                p = off + r * rb + b * bsz
                dw = _f16(data, p, lut)
                for t in range(T):
                    isum = 0
                    for j in range(16):
                        byte = np.int32(data[p + qoff + j])
                        isum += (byte & 15) * np.int32(xq[t, b * QK + j])
                        isum += (byte >> 4) * np.int32(xq[t, b * QK + 16 + j])
                    if qtype == T_Q4_0:
                        # sum (q-8)*x = sum q*x - 8*sum x; the block sum s = d*sum(x_q)
                        acc[t] += dw * (xd[t, b] * np.float32(isum) - np.float32(8.0) * xs[t, b])
                    else:
                        mw = lut[0, np.int64(data[p + 2]) | (np.int64(data[p + 3]) << 8)]
                        acc[t] += dw * xd[t, b] * np.float32(isum) + mw * xs[t, b]
            for t in range(T):
                out[t, r] = acc[t]
    else:
        # float weights: F32 read in place, F16/BF16 through the lookup table
        esz = 4 if qtype == T_F32 else 2
        which = 1 if qtype == T_BF16 else 0
        for r in nb.prange(rows):
            acc = np.zeros(T, dtype=np.float32)
            p0 = off + r * cols * esz
            if qtype == T_F32:
                w = data[p0 : p0 + cols * 4].view(np.float32)
                for t in range(T):
                    a = np.float32(0.0)
                    for c in range(cols):
                        a += w[c] * xf[t, c]
                    acc[t] = a
            else:
                for c in range(cols):
                    p = p0 + 2 * c
                    wv = lut[which, np.int64(data[p]) | (np.int64(data[p + 1]) << 8)]
                    for t in range(T):
                        acc[t] += wv * xf[t, c]
            for t in range(T):
                out[t, r] = acc[t]


@nb.njit(cache=True)
def dequant_row(data, off, qtype, cols, row, lut, out):
    """Row ``row`` of a (rows, cols) weight matrix as float32 into out (cols,)."""
    if qtype == T_F32:
        p = off + row * cols * 4
        w = data[p : p + cols * 4].view(np.float32)
        for c in range(cols):
            out[c] = w[c]
    elif qtype == T_F16 or qtype == T_BF16:
        which = 1 if qtype == T_BF16 else 0
        p = off + row * cols * 2
        for c in range(cols):
            out[c] = lut[which, np.int64(data[p + 2 * c]) | (np.int64(data[p + 2 * c + 1]) << 8)]
    elif qtype == T_Q8_0:
        p0 = off + row * (cols // QK) * 34
        for b in range(cols // QK):
            p = p0 + b * 34
            d = _f16(data, p, lut)
            for j in range(QK):
                out[b * QK + j] = d * np.float32(np.int8(data[p + 2 + j]))
    else:
        bsz = 18 if qtype == T_Q4_0 else 20
        p0 = off + row * (cols // QK) * bsz
        for b in range(cols // QK):
            p = p0 + b * bsz
            d = _f16(data, p, lut)
            m = np.float32(-8.0) * d
            if qtype == T_Q4_1:
                m = lut[0, np.int64(data[p + 2]) | (np.int64(data[p + 3]) << 8)]
            for j in range(16):
                byte = np.int32(data[p + bsz - 16 + j])
                out[b * QK + j] = d * np.float32(byte & 15) + m
                out[b * QK + 16 + j] = d * np.float32(byte >> 4) + m
