"""Numpy reference for ggml's tensor encodings: the executable spec of every block type cpullm
reads. Fast kernels (numba) are checked against this module; this module is checked, bit for
bit, against ``gguf.quants`` from the ``gguf`` Python package (which follows ggml's C
reference, ``ggml-quants.c``).

A row of ``n`` elements is stored as ``n // bs`` consecutive blocks of ``ts`` bytes each
(``BLOCK_LAYOUT[type] == (bs, ts)`` in :mod:`cpullm.gguf.constants`). Everything is
little-endian. ``d`` and ``m`` below are IEEE half floats (f16).

======  ==  ==  ===============================================================================
type    bs  ts  block layout and value of element ``j``
======  ==  ==  ===============================================================================
F32      1   4  IEEE binary32
F16      1   2  IEEE binary16
BF16     1   2  upper 16 bits of a binary32 (value = bits << 16)
Q8_0    32  34  ``d`` (2 B), ``qs`` 32 x int8 (32 B); ``x[j] = qs[j] * d``
Q4_0    32  18  ``d`` (2 B), ``qs`` 16 x uint8 (16 B); for ``j < 16``:
                ``x[j] = ((qs[j] & 0xF) - 8) * d``, ``x[j + 16] = ((qs[j] >> 4) - 8) * d``
Q4_1    32  20  ``d`` (2 B), ``m`` (2 B), ``qs`` 16 x uint8 (16 B); for ``j < 16``:
                ``x[j] = (qs[j] & 0xF) * d + m``, ``x[j + 16] = (qs[j] >> 4) * d + m``
======  ==  ==  ===============================================================================

Quantization (float -> blocks), done in float32 like ggml, per block of 32 values ``x``:

* Q8_0: ``d = max|x| / 127``; ``q = round_half_away_from_zero(x * (1/d))`` (``1/d`` taken as 0
  when ``d == 0``). ``q`` uses the float32 ``d``; only the stored ``d`` is rounded to f16.
* Q4_0: ``M`` = the element of largest magnitude (first one on ties), signed; ``d = M / -8``;
  ``q = min(15, trunc(x * (1/d) + 8.5))``. So ``M`` itself encodes as 0, i.e. ``-8 * d``.
* Q4_1: ``d = (max - min) / 15``; ``m = min``; ``q = min(15, trunc((x - min) * (1/d) + 0.5))``.
* BF16: round to nearest, ties to even, on the bits; a NaN is kept a (quiet) NaN.
* F16: numpy's cast from the input dtype (nearest even); F32: numpy's cast.

Dequantization multiplies in float32 and never fuses ``q * d + m`` into an FMA.

Quantizing non-finite values (NaN, inf) into Q8_0/Q4_0/Q4_1 is not specified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cpullm.gguf.constants import BLOCK_LAYOUT, GGMLType, row_nbytes, type_name

__all__ = [
    "SUPPORTED_TYPES",
    "byte_shape",
    "dequantize",
    "dequantize_rows",
    "nbytes_for",
    "quantize",
]

SUPPORTED_TYPES: tuple[GGMLType, ...] = (
    GGMLType.F32,
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q8_0,
    GGMLType.Q4_0,
    GGMLType.Q4_1,
)

_F16 = np.dtype("<f2")
_F32 = np.dtype("<f4")
_U16 = np.dtype("<u2")
_U32 = np.dtype("<u4")


def _as_type(qtype: GGMLType | int) -> GGMLType:
    """Validate ``qtype`` (a ``GGMLType`` or any int-like type id) and return it as ``GGMLType``."""
    try:
        t = GGMLType(int(qtype))
    except ValueError:
        raise ValueError(
            f"unsupported ggml type {type_name(int(qtype))} (id {int(qtype)}); cpullm.quants "
            f"supports {', '.join(t.name for t in SUPPORTED_TYPES)}"
        ) from None
    if t not in SUPPORTED_TYPES or t not in BLOCK_LAYOUT:
        raise ValueError(f"unsupported ggml type {t.name} in cpullm.quants")
    return t


def byte_shape(shape: Sequence[int], qtype: GGMLType | int) -> tuple[int, ...]:
    """Shape of the raw uint8 array holding a tensor of numpy ``shape`` (rows on the last axis).

    ``(..., n) -> (..., n // bs * ts)``; raises ValueError if ``n`` is not a multiple of the
    block size.
    """
    t = _as_type(qtype)
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("a 0-d shape has no rows to encode")
    return (*shape[:-1], row_nbytes(t, shape[-1]))


def nbytes_for(shape: Sequence[int], qtype: GGMLType | int) -> int:
    """Total bytes a tensor of numpy ``shape`` (rows on the last axis) takes as ``qtype``."""
    return math.prod(byte_shape(shape, qtype))


# --------------------------------------------------------------------------- helpers


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Round float32 ``v`` to the nearest integer, ties away from zero (C ``roundf``).

    Exact: ``a - floor(a)`` is exact in float32, unlike ``floor(a + 0.5)`` which rounds wrong
    for the float just below 0.5.
    """
    a = np.abs(v)
    f = np.floor(a)
    r = f + (a - f >= np.float32(0.5)).astype(np.float32)
    return np.copysign(r, v)


def _inverse(d: np.ndarray) -> np.ndarray:
    """``1 / d`` elementwise in float32, with 0 where ``d == 0`` (ggml's ``d ? 1/d : 0``)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(nb, 32) uint8 in [0, 15] -> (nb, 16): byte j = q[j] | q[j + 16] << 4."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(nb, 16) uint8 -> (nb, 32) uint8: elements 0..15 = low nibbles, 16..31 = high nibbles."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(nb, 1) float32 -> (nb, 2) uint8: little-endian f16 (nearest even; overflow -> inf)."""
    return np.ascontiguousarray(v.astype(_F16)).view(np.uint8)


def _f16_from(b: np.ndarray) -> np.ndarray:
    """(nb, 2) uint8 -> (nb, 1) float32."""
    return np.ascontiguousarray(b).view(_F16).astype(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bf16 bit patterns (ggml_compute_fp32_to_bf16)."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # a NaN keeps its sign and upper payload bits, and is forced quiet (bit 22 set)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    n = np.where(nan, (n & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), n)
    # round to nearest, ties to even; cannot overflow uint32 (max 0xFF7FFFFF + 0x8000)
    n = (n + (np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    return n.astype(np.uint16)


# --------------------------------------------------------------------------- per-type codecs
# quantizers: (nb, bs) float32 -> (nb, ts) uint8; dequantizers: (nb, ts) uint8 -> (nb, bs) f32


def _quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)  # (nb, 1)
    q = _round_half_away(x * _inverse(d))  # (nb, 32), integers in [-127, 127]
    qs = q.astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(d), qs], axis=1)  # (nb, 34)


def _dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    d = _f16_from(b[:, :2])  # (nb, 1)
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)  # (nb, 32)
    return q * d


def _quantize_q4_0(x: np.ndarray) -> np.ndarray:
    imax = np.abs(x).argmax(axis=1)[:, None]  # first index of the largest magnitude
    big = np.take_along_axis(x, imax, axis=1)  # (nb, 1), signed
    d = big / np.float32(-8)
    t = np.trunc(x * _inverse(d) + np.float32(8.5))  # (nb, 32), in [0, 16] for finite x
    q = np.clip(t, 0, 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)  # (nb, 18)


def _dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    d = _f16_from(b[:, :2])  # (nb, 1)
    q = _unpack_nibbles(b[:, 2:]).astype(np.float32) - np.float32(8)  # (nb, 32)
    return q * d


def _quantize_q4_1(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=1, keepdims=True)  # (nb, 1)
    hi = x.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    t = np.trunc((x - lo) * _inverse(d) + np.float32(0.5))  # (nb, 32), in [0, 15] for finite x
    q = np.clip(t, 0, 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)  # (nb, 20)


def _dequantize_q4_1(b: np.ndarray) -> np.ndarray:
    d = _f16_from(b[:, 0:2])  # (nb, 1)
    m = _f16_from(b[:, 2:4])  # (nb, 1)
    q = _unpack_nibbles(b[:, 4:]).astype(np.float32)  # (nb, 32)
    return q * d + m  # two roundings, as ggml's reference (no FMA)


def _dequantize_f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(_F32).astype(np.float32)


def _dequantize_f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(_F16).astype(np.float32)


def _dequantize_bf16(b: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(b).view(_U16).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32)


_QUANTIZE_BLOCKS: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.Q8_0: _quantize_q8_0,
    GGMLType.Q4_0: _quantize_q4_0,
    GGMLType.Q4_1: _quantize_q4_1,
}

_DEQUANTIZE_BLOCKS: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.F32: _dequantize_f32,
    GGMLType.F16: _dequantize_f16,
    GGMLType.BF16: _dequantize_bf16,
    GGMLType.Q8_0: _dequantize_q8_0,
    GGMLType.Q4_0: _dequantize_q4_0,
    GGMLType.Q4_1: _dequantize_q4_1,
}


# --------------------------------------------------------------------------- public API


def quantize(x: np.ndarray, qtype: GGMLType | int) -> np.ndarray:
    """Encode float array ``x`` of shape ``(..., n)`` as ggml ``qtype``.

    Returns a new C-contiguous uint8 array of shape ``(..., n // bs * ts)``: each row's raw
    bytes exactly as ggml stores them (bit-exact with ``gguf.quants.quantize``). ``n`` must be
    a multiple of the block size ``bs``. Input is cast to float32 first, except for F16 which
    casts straight from the input dtype (as ``gguf.quants`` does).

    Raises ValueError for an unsupported type, a 0-d input, or a bad row length.
    """
    t = _as_type(qtype)
    x = np.asarray(x)
    out_shape = byte_shape(x.shape, t)
    # overflow to inf (f16 casts) and NaN/inf arithmetic are IEEE results, not errors
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if t == GGMLType.F32:
            enc = x.astype(_F32)
        elif t == GGMLType.F16:
            enc = x.astype(_F16)
        elif t == GGMLType.BF16:
            enc = _f32_to_bf16_bits(x.astype(np.float32)).astype(_U16)
        else:
            bs, _ = BLOCK_LAYOUT[t]
            blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, bs)  # (nb, bs)
            enc = _QUANTIZE_BLOCKS[t](blocks)  # (nb, ts)
    return np.ascontiguousarray(enc).view(np.uint8).reshape(out_shape)


def dequantize(raw: np.ndarray, qtype: GGMLType | int, n: int | None = None) -> np.ndarray:
    """Decode raw ggml bytes of shape ``(..., nbytes)`` to float32 of shape ``(..., n)``.

    ``raw`` is a uint8 array (or a bytes-like object, taken as one row) whose last axis holds
    whole blocks; ``n = nbytes // ts * bs``. If ``n`` is given it is checked against that.
    Bit-exact with ``gguf.quants.dequantize`` (NaN/inf scales propagate as IEEE arithmetic
    does). Returns a new array, never a view of ``raw``.

    Raises ValueError for an unsupported type, a non-uint8 array, a 0-d input, a byte length
    that is not a whole number of blocks, or a mismatching ``n``.
    """
    t = _as_type(qtype)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(
            f"dequantize expects raw uint8 bytes, got dtype {raw.dtype}; pass arr.view(np.uint8)"
        )
    if raw.ndim == 0:
        raise ValueError("dequantize expects an array of shape (..., nbytes), got a 0-d array")
    bs, ts = BLOCK_LAYOUT[t]
    nbytes = raw.shape[-1]
    if nbytes % ts:
        raise ValueError(
            f"{nbytes} bytes is not a whole number of {t.name} blocks ({ts} bytes per block)"
        )
    n_out = nbytes // ts * bs
    if n is not None and int(n) != n_out:
        raise ValueError(
            f"{nbytes} bytes of {t.name} hold {n_out} elements per row, not the {n} expected"
        )
    blocks = np.ascontiguousarray(raw).reshape(-1, ts)  # (nb, ts)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf scales propagate silently
        out = _DEQUANTIZE_BLOCKS[t](blocks)  # (nb, bs) float32, always a fresh array
    return out.reshape(*raw.shape[:-1], n_out)


def dequantize_rows(raw: np.ndarray, qtype: GGMLType | int, n: int | None = None) -> np.ndarray:
    """Decode a buffer of whole rows to a float32 matrix of shape ``(rows, n)``.

    With ``n`` (the row length in elements) ``raw`` may be any uint8 buffer of
    ``rows * row_nbytes(qtype, n)`` bytes, e.g. a tensor's flat data from a GGUF file. Without
    ``n``, ``raw`` must be 2-D ``(rows, nbytes)``.
    """
    t = _as_type(qtype)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    raw = np.asarray(raw)
    if n is None:
        if raw.ndim != 2:
            raise ValueError(f"dequantize_rows needs a 2-D array or n, got shape {raw.shape}")
        return dequantize(raw, t)
    rb = row_nbytes(t, int(n))
    if rb == 0 or raw.size % rb:
        raise ValueError(
            f"{raw.size} bytes is not a whole number of {t.name} rows of {n} elements ({rb} bytes)"
        )
    return dequantize(raw.reshape(-1, rb), t, int(n))
