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
