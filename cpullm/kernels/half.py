"""Half-precision KV cache support: numba has no float16 type on the CPU, so an f16
cache is stored as uint16 bit patterns, written with :func:`f32_to_f16` (round to
nearest even, bit-exact with numpy's ``astype(np.float16)``) and read through the f16
lookup table. ``kv_get`` / ``kv_put`` pick the right access at compile time, so the same
kernel source serves float32 and f16 caches.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload


@nb.njit(cache=True, inline="always")
def f32_to_f16(v):
    """IEEE binary16 bits (as int) of float v, round to nearest even."""
    sign = 0x8000 if math.copysign(1.0, v) < 0 else 0
    a = abs(np.float64(v))
    if a != a:
        return 0x7E00 | sign
    if a >= 65520.0:  # rounds past the largest half (65504)
        return 0x7C00 | sign
    if a < 6.103515625e-05:  # subnormal: units of 2^-24, ties to even
        return sign | int(round(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2^e, m in [0.5, 1)
    q = int(round(m * 2048.0))  # 11 significant bits, ties to even
    if q == 2048:
        q = 1024
        e += 1
    return sign | ((e + 14) << 10) | (q - 1024)


def kv_get(v, lut):
    """Cache element as float32: v itself, or lut[0, v] for f16 bits."""


@overload(kv_get, inline="always")
def _kv_get(v, lut):
    if isinstance(v, types.Integer):
        return lambda v, lut: lut[0, v]
    return lambda v, lut: v


def kv_put(a, idx, val):
    """a[idx] = val, converting to f16 bits when a is a uint16 cache."""


@overload(kv_put, inline="always")
def _kv_put(a, idx, val):
    if isinstance(a.dtype, types.Integer):

        def impl(a, idx, val):
            a[idx] = f32_to_f16(val)

        return impl

    def impl_f(a, idx, val):
        a[idx] = val

    return impl_f


# ---- q8_0 KV cache: int8 values, one float32 scale per 32 values of a cache row ----------
# Every cache access below takes the scales array ``ks`` (L, n_kv, C, head_dim/32); f32 and
# f16 caches get a dummy (1, 1, 1, 1) array that is never read.


def _is_q8(a) -> bool:
    return isinstance(a.dtype, types.Integer) and a.dtype.signed


def kv_write_row(kc, ks, layer, h, slot, src, t, off, n):
    """Cache row (layer, h, slot) = src[t, off:off+n], converted to the cache's type."""


@overload(kv_write_row)  # not IR-inlined: numba warns on its loops; LLVM inlines it
def _kv_write_row(kc, ks, layer, h, slot, src, t, off, n):
    if _is_q8(kc):

        def impl_q8(kc, ks, layer, h, slot, src, t, off, n):
            for b in range(n // 32):
                amax = np.float32(0.0)
                for j in range(32):
                    a = abs(src[t, off + b * 32 + j])
                    if a > amax:
                        amax = a
                d = amax / np.float32(127.0)
                inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
                ks[layer, h, slot, b] = d
                for j in range(32):
                    v = src[t, off + b * 32 + j] * inv
                    kc[layer, h, slot, b * 32 + j] = (int(v + np.float32(0.5)) if v >= 0
                                                      else -int(np.float32(0.5) - v))

        return impl_q8

    def impl(kc, ks, layer, h, slot, src, t, off, n):
        for i in range(n):
            kv_put(kc, (layer, h, slot, i), src[t, off + i])

    return impl


def kv_read(kc, ks, layer, h, slot, i, lut):
    """Cache element (layer, h, slot, i) as float32, whatever the cache type."""


@overload(kv_read, inline="always")
def _kv_read(kc, ks, layer, h, slot, i, lut):
    if _is_q8(kc):
        return lambda kc, ks, layer, h, slot, i, lut: (
            np.float32(kc[layer, h, slot, i]) * ks[layer, h, slot, i // 32])
    return lambda kc, ks, layer, h, slot, i, lut: kv_get(kc[layer, h, slot, i], lut)


def kv_copy_row(kc, ks, layer, h, src, dst, n):
    """Copy cache row ``src`` to ``dst`` as stored (no re-quantization)."""


@overload(kv_copy_row)
def _kv_copy_row(kc, ks, layer, h, src, dst, n):
    if _is_q8(kc):

        def impl_q8(kc, ks, layer, h, src, dst, n):
            for i in range(n):
                kc[layer, h, dst, i] = kc[layer, h, src, i]
            for b in range(n // 32):
                ks[layer, h, dst, b] = ks[layer, h, src, b]

        return impl_q8

    def impl(kc, ks, layer, h, src, dst, n):
        for i in range(n):
            kc[layer, h, dst, i] = kc[layer, h, src, i]

    return impl


def is_q8_cache(kc):
    """Compile-time constant: whether ``kc`` is a q8_0 cache (the vector paths skip it)."""


@overload(is_q8_cache, inline="always")
def _is_q8_cache(kc):
    flag = _is_q8(kc)
    return lambda kc: flag


def kv_dot(q, t, qo, kc, ks, layer, kh, slot, hd, lut):
    """sum_i q[t, qo+i] * K[layer, kh, slot, i] for i < hd, whatever the cache type."""


@overload(kv_dot, inline="always")
def _kv_dot(q, t, qo, kc, ks, layer, kh, slot, hd, lut):
    from cpullm.kernels.simd import vdot

    if _is_q8(kc):

        def impl_q8(q, t, qo, kc, ks, layer, kh, slot, hd, lut):
            s = np.float32(0.0)
            for b in range(hd // 32):
                bs = np.float32(0.0)
                for j in range(32):
                    bs += q[t, qo + b * 32 + j] * np.float32(kc[layer, kh, slot, b * 32 + j])
                s += bs * ks[layer, kh, slot, b]
            return s

        return impl_q8

    def impl(q, t, qo, kc, ks, layer, kh, slot, hd, lut):
        if hd % 16 == 0:  # 16-lane vector path over the contiguous cache row
            off = ((layer * kc.shape[1] + kh) * kc.shape[2] + slot) * hd
            return vdot(q, t * q.shape[1] + qo, kc, off, hd, lut)
        s = np.float32(0.0)
        for i in range(hd):
            s += q[t, qo + i] * kv_get(kc[layer, kh, slot, i], lut)
        return s

    return impl


def kv_axpy(out, t, oo, w, vc, vs, layer, kh, slot, hd, lut):
    """out[t, oo+i] += w * V[layer, kh, slot, i] for i < hd, whatever the cache type."""


@overload(kv_axpy, inline="always")
def _kv_axpy(out, t, oo, w, vc, vs, layer, kh, slot, hd, lut):
    from cpullm.kernels.simd import vaxpy

    if _is_q8(vc):

        def impl_q8(out, t, oo, w, vc, vs, layer, kh, slot, hd, lut):
            for b in range(hd // 32):
                wb = w * vs[layer, kh, slot, b]
                for j in range(32):
                    out[t, oo + b * 32 + j] += wb * np.float32(vc[layer, kh, slot, b * 32 + j])

        return impl_q8

    def impl(out, t, oo, w, vc, vs, layer, kh, slot, hd, lut):
        if hd % 16 == 0:
            off = ((layer * vc.shape[1] + kh) * vc.shape[2] + slot) * hd
            vaxpy(out, t * out.shape[1] + oo, w, vc, off, hd, lut)
        else:
            for i in range(hd):
                out[t, oo + i] += w * kv_get(vc[layer, kh, slot, i], lut)

    return impl
