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

from cpullm.kernels.simd import f32_at, make_tile, make_tile8
from cpullm.kernels.tables import QK, T_BF16, T_F16, T_F32, T_Q4_0, T_Q4_1, T_Q8_0


@nb.njit(cache=True, inline="always")
def _f16(data, p, lut):
    return lut[0, np.int64(data[p]) | (np.int64(data[p + 1]) << 8)]


@nb.njit(cache=True, inline="always")
def _bsize(qtype):
    return 34 if qtype == T_Q8_0 else (18 if qtype == T_Q4_0 else 20)


ROWS_PER_ITER = 8

# decode: one intrinsic per (weight type, rows) tile shape, see simd.make_tile
_q40_r8 = make_tile(T_Q4_0, ROWS_PER_ITER)
_q41_r8 = make_tile(T_Q4_1, ROWS_PER_ITER)
_q80_r8 = make_tile(T_Q8_0, ROWS_PER_ITER)
_q40_r1 = make_tile(T_Q4_0, 1)
_q41_r1 = make_tile(T_Q4_1, 1)
_q80_r1 = make_tile(T_Q8_0, 1)
# prefill: R rows x 8 tokens, see simd.make_tile8
_q40_t8r4 = make_tile8(T_Q4_0, 4)
_q41_t8r4 = make_tile8(T_Q4_1, 4)
_q80_t8r4 = make_tile8(T_Q8_0, 4)
_q40_t8r1 = make_tile8(T_Q4_0, 1)
_q41_t8r1 = make_tile8(T_Q4_1, 1)
_q80_t8r1 = make_tile8(T_Q8_0, 1)


@nb.njit(cache=True, inline="always")
def _tile8(R, qtype, data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt):
    """R rows (4 or 1) x 8 tokens (the first nt stored) from interleaved activations."""
    if R == 4:
        if qtype == T_Q4_0:
            _q40_t8r4(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)
        elif qtype == T_Q4_1:
            _q41_t8r4(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)
        else:
            _q80_t8r4(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)
    else:
        if qtype == T_Q4_0:
            _q40_t8r1(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)
        elif qtype == T_Q4_1:
            _q41_t8r1(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)
        else:
            _q80_t8r1(data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt)


@nb.njit(cache=True, inline="always")
def _tile(R, qtype, data, p0, rb, nblk, x, xd, xs, lut, out, r):
    """out[r + i] = row i (at p0 + i*rb) . x, for i < R (ROWS_PER_ITER or 1)."""
    if R == ROWS_PER_ITER:
        if qtype == T_Q4_0:
            _q40_r8(data, p0, rb, nblk, x, xd, xs, lut, out, r)
        elif qtype == T_Q4_1:
            _q41_r8(data, p0, rb, nblk, x, xd, xs, lut, out, r)
        else:
            _q80_r8(data, p0, rb, nblk, x, xd, xs, lut, out, r)
    else:
        if qtype == T_Q4_0:
            _q40_r1(data, p0, rb, nblk, x, xd, xs, lut, out, r)
        elif qtype == T_Q4_1:
            _q41_r1(data, p0, rb, nblk, x, xd, xs, lut, out, r)
        else:
            _q80_r1(data, p0, rb, nblk, x, xd, xs, lut, out, r)


@nb.njit(cache=True, parallel=True)
def matvec(data, off, qtype, rows, cols, x, xd, xs, lut, out):
    """Decode (one token) product for Q8_0/Q4_0/Q4_1 weights: out[r] = sum_c W[r, c] x[c].

    x (>=cols,) i8 and xd, xs (>=cols/32,) f32 are one row of :func:`quantize_rows_q8`;
    out (>=rows,) f32. Each iteration takes ROWS_PER_ITER rows, so every activation
    block is loaded once for ROWS_PER_ITER weight rows; the sums stay in vector registers
    (see :func:`cpullm.kernels.simd.make_tile`); nothing is allocated."""
    nblk = cols // QK
    rb = nblk * _bsize(qtype)
    ng = rows // ROWS_PER_ITER
    for g in nb.prange(ng):
        r = g * ROWS_PER_ITER
        _tile(ROWS_PER_ITER, qtype, data, off + r * rb, rb, nblk, x, xd, xs, lut, out, r)
    for r in range(ng * ROWS_PER_ITER, rows):  # the last rows % ROWS_PER_ITER
        _tile(1, qtype, data, off + r * rb, rb, nblk, x, xd, xs, lut, out, r)


# weight rows per prefill work item: about this many bytes of weights, reused from cache
# for every group of 8 tokens
CHUNK_BYTES = 256 * 1024


@nb.njit(cache=True, parallel=True)
def matmul(data, off, qtype, rows, cols, T, xq, xd, xs, xi, xdi, xsi, xf, lut, out):
    """data (file,) u8; xq (>=T, >=cols) i8; xd, xs (>=T, >=cols/32) f32; xi, xdi, xsi: the
    same activations interleaved by :func:`cpullm.kernels.quant.interleave8` (read when
    T >= 2); xf (>=T, >=cols) f32; lut (2, 65536) f32; out (>=T, >=rows) f32.
    Writes out[:T, :rows].

    Buffers are passed whole (C-contiguous) with explicit T and sizes, so one
    compiled specialization serves every call. One token with a block weight type
    goes to :func:`matvec`. Several tokens: the rows are cut into chunks of about
    CHUNK_BYTES of weights (one per work item); within a chunk, 4-row x 8-token tiles
    (the last group of tokens padded) read each weight block once per 8 tokens from
    cache and each activation block once per 4 rows."""
    nblk = cols // QK
    if qtype == T_Q8_0 or qtype == T_Q4_0 or qtype == T_Q4_1:
        if T == 1:
            matvec(data, off, qtype, rows, cols, xq[0], xd[0], xs[0], lut, out[0])
            return
        rb = nblk * _bsize(qtype)
        rc = max(4, (CHUNK_BYTES // max(rb, 1)) // 4 * 4)
        rc = min(rc, max(4, (rows // 16) // 4 * 4))  # enough work items for the threads
        nch = (rows + rc - 1) // rc
        ost = out.shape[1]
        ng = (T + 7) // 8
        for ci in nb.prange(nch):
            r0 = ci * rc
            r1 = min(rows, r0 + rc)
            for g in range(ng):
                nt = min(8, T - 8 * g)
                r = r0
                while r + 4 <= r1:
                    _tile8(4, qtype, data, off + r * rb, rb, nblk, xi, g * nblk * 256, xdi,
                           xsi, g * nblk * 8, lut, out, 8 * g * ost + r, ost, nt)
                    r += 4
                while r < r1:
                    _tile8(1, qtype, data, off + r * rb, rb, nblk, xi, g * nblk * 256, xdi,
                           xsi, g * nblk * 8, lut, out, 8 * g * ost + r, ost, nt)
                    r += 1
    else:
        # float weights: F32 read in place, F16/BF16 through the lookup table
        esz = 4 if qtype == T_F32 else 2
        which = 1 if qtype == T_BF16 else 0
        for r in nb.prange(rows):
            p0 = off + r * cols * esz
            if qtype == T_F32:
                for t in range(T):
                    a = np.float32(0.0)
                    for c in range(cols):
                        a += f32_at(data, p0 + 4 * c) * xf[t, c]
                    out[t, r] = a
            else:
                for t in range(T):
                    out[t, r] = 0.0
                for c in range(cols):
                    p = p0 + 2 * c
                    wv = lut[which, np.int64(data[p]) | (np.int64(data[p + 1]) << 8)]
                    for t in range(T):
                        out[t, r] += wv * xf[t, c]


@nb.njit(cache=True)
def dequant_row(data, off, qtype, cols, row, lut, out):
    """Row ``row`` of a (rows, cols) weight matrix as float32 into out (cols,)."""
    if qtype == T_F32:
        p = off + row * cols * 4
        for c in range(cols):
            out[c] = f32_at(data, p + 4 * c)
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
