"""Every numba kernel against its numpy twin in cpullm.reference."""

from __future__ import annotations

import numpy as np
import pytest

from cpullm import quants, reference
from cpullm.gguf import GGMLType
from cpullm.kernels import ops
from cpullm.kernels.matmul import dequant_row, matmul
from cpullm.kernels.quant import interleave8, quantize_rows_q8
from cpullm.kernels.tables import half_tables

LUT = half_tables()
ALL_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
             GGMLType.Q4_1]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_half_tables_match_numpy():
    bits = np.arange(65536, dtype=np.uint16)
    f16 = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(LUT[0], f16)
    np.testing.assert_array_equal(LUT[1], quants.dequantize(bits.view(np.uint8), GGMLType.BF16))


@pytest.mark.parametrize("T", [1, 3])
def test_quantize_rows_q8_bit_exact(T):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((T, 128)) * rng.uniform(0.01, 100, (T, 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[-1, 40] = 1e4  # an outlier
    q = np.zeros((4, 256), np.int8)
    d = np.zeros((4, 8), np.float32)
    s = np.zeros((4, 8), np.float32)
    quantize_rows_q8(x, T, 128, q, d, s)
    rq, rd, rs = reference.q8_activations(x)
    np.testing.assert_array_equal(q[:T, :128], rq)
    np.testing.assert_array_equal(d[:T, :4], rd)
    np.testing.assert_allclose(s[:T, :4], rs, rtol=1e-6)
    assert (q[T:] == 0).all(), "rows past T must not be touched"


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
# T = 1: decode tiles; T > 1: 8-token tiles, the last group partial
@pytest.mark.parametrize("T", [1, 2, 5, 8, 11, 19])
@pytest.mark.parametrize("rows", [50, 3, 130])  # groups of 4 rows plus a tail, tail only
def test_matmul_matches_twin(qtype, T, rows):
    rng = np.random.default_rng(int(qtype) * 10 + T + rows)
    cols = 96
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    pad = 64  # the weight sits at an offset inside a larger buffer, like in a file
    data = np.concatenate([np.zeros(pad, np.uint8), raw.reshape(-1), np.zeros(7, np.uint8)])
    x = rng.standard_normal((T, cols)).astype(np.float32)
    xq = np.zeros((T, cols), np.int8)
    xd = np.zeros((T, cols // 32), np.float32)
    xs = np.zeros((T, cols // 32), np.float32)
    quantize_rows_q8(x, T, cols, xq, xd, xs)
    T8 = (T + 7) // 8 * 8
    xi = np.full(T8 * cols, 99, np.int8)  # garbage that interleave8 must overwrite
    xdi = np.full(T8 * cols // 32, np.nan, np.float32)
    xsi = np.full(T8 * cols // 32, np.nan, np.float32)
    interleave8(xq, xd, xs, T, cols, xi, xdi, xsi)
    out = np.full((T + 1, rows), -7.0, np.float32)  # a row past T must stay untouched
    matmul(data, pad, int(qtype), rows, cols, T, xq, xd, xs, xi, xdi, xsi, x, LUT, out)
    assert (out[T] == -7.0).all()
    out = out[:T]
    wdq = quants.dequantize(raw, qtype, cols).astype(np.float64)
    ref = reference.linear(wdq, qtype, x.astype(np.float32))
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequant_row_matches_quants(qtype):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    data = np.concatenate([np.zeros(32, np.uint8), raw.reshape(-1)])
    out = np.zeros(64, np.float32)
    for r in range(6):
        dequant_row(data, 32, int(qtype), 64, r, LUT, out)
        np.testing.assert_allclose(out, quants.dequantize(raw[r], qtype, 64), rtol=1e-6,
                                   atol=1e-7)


def test_rmsnorm_matches_twin():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 64)).astype(np.float32) * 5
    w = rng.standard_normal(64).astype(np.float32)
    out = np.zeros_like(x)
    ops.rmsnorm(x, 2, w, 1e-5, out)
    ref = reference.rmsnorm(x[:2].astype(np.float64), w, 1e-5)
    assert rel_err(out[:2], ref) < 1e-6
    assert (out[2] == 0).all()


@pytest.mark.parametrize("rope_dim", [16, 8])
def test_rope_matches_twin(rope_dim):
    rng = np.random.default_rng(5)
    T, H, hd = 4, 3, 16
    x = rng.standard_normal((T, H * hd)).astype(np.float32)
    inv_freq = 10000.0 ** (-np.arange(rope_dim // 2) * 2.0 / rope_dim)
    y = x.copy()
    ops.rope(y, T, H, hd, rope_dim, 7, inv_freq)
    ref = reference.rope(x.astype(np.float64), np.arange(7, 7 + T, dtype=np.float64), hd,
                         rope_dim, 10000.0)
    assert rel_err(y, ref) < 1e-6
    if rope_dim < hd:  # dimensions past rope_dim are untouched
        xh, yh = x.reshape(T, H, hd), y.reshape(T, H, hd)
        np.testing.assert_array_equal(xh[..., rope_dim:], yh[..., rope_dim:])


@pytest.mark.parametrize("window", [0, 3])
def test_attention_matches_twin(window):
    rng = np.random.default_rng(6)
    L, H, KV, hd, ctx = 2, 4, 2, 8, 16
    pos0, T = 5, 4
    kc = np.zeros((L, KV, ctx, hd), np.float32)
    vc = np.zeros((L, KV, ctx, hd), np.float32)
    S = pos0 + T
    k = rng.standard_normal((S, KV * hd)).astype(np.float32)
    v = rng.standard_normal((S, KV * hd)).astype(np.float32)
    dummy = np.zeros((1, 1, 1, 1), np.float32)
    ops.store_kv(k, v, S, 1, 0, KV, hd, kc, vc, dummy, dummy)
    q = rng.standard_normal((T, H * hd)).astype(np.float32)
    out = np.zeros((T, H * hd), np.float32)
    att = np.zeros((H, ctx), np.float32)
    ops.attention(q, T, 1, pos0, H, KV, hd, window, kc, vc, dummy, dummy, att, out, LUT)
    positions = np.arange(pos0, pos0 + T)
    ref = reference.attention(q.astype(np.float64), k.astype(np.float64),
                              v.astype(np.float64), positions, np.arange(S), H, KV, hd, window)
    assert rel_err(out, ref) < 1e-5


def test_swiglu_matches_twin():
    rng = np.random.default_rng(7)
    g = rng.standard_normal((2, 40)).astype(np.float32) * 4
    u = rng.standard_normal((2, 40)).astype(np.float32)
    ref = reference.swiglu(g.astype(np.float64), u)
    ops.swiglu(g, u, 2, 40)
    assert rel_err(g, ref) < 1e-6


def test_f32_to_f16_bit_exact_with_numpy():
    import numba as nb

    from cpullm.kernels.half import f32_to_f16

    @nb.njit
    def convert(x, out):
        for i in range(x.shape[0]):
            out[i] = f32_to_f16(x[i])

    rng = np.random.default_rng(8)
    x = rng.standard_normal(50000) * 10.0 ** rng.uniform(-10, 6, 50000)
    special = [0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.98e-8, 5.96e-8, 6.1e-5,
               6.103515625e-05, -3.3, np.inf, -np.inf, 2049.0, 2051.0, 0.1]
    x = np.concatenate([x, special]).astype(np.float32)
    out = np.zeros(len(x), np.uint16)
    convert(x, out)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("vnni", [True, False], ids=["vnni", "portable"])
@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1],
                         ids=lambda t: t.name)
def test_tile_intrinsic_both_code_paths(monkeypatch, qtype, vnni):
    """The decode tile (8 rows, one token at a time) and the 8-token prefill tile, with
    vpdpbusd and with the portable widened multiply (CPUs without VNNI), agree with the
    numpy twin and with each other bit for bit; compiled fresh, outside the cache."""
    import numba

    from cpullm.kernels import simd

    if vnni and not simd._vnni():
        pytest.skip("this CPU has no VNNI")
    monkeypatch.setattr(simd, "_USE_VNNI", vnni)
    tile = simd.make_tile(int(qtype), 8)
    tile8 = simd.make_tile8(int(qtype), 4)

    @numba.njit
    def run(data, rb, nblk, xq, xd, xs, xi, xdi, xsi, lut, out, out8):
        for t in range(xq.shape[0]):
            tile(data, 0, rb, nblk, xq[t], xd[t], xs[t], lut, out[t], 0)
        for r in range(0, out.shape[1], 4):
            tile8(data, r * rb, rb, nblk, xi, 0, xdi, xsi, 0, lut, out8, r, out8.shape[1],
                  xq.shape[0])

    rng = np.random.default_rng(7)
    rows, cols, T = 8, 128, 8
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = quants.quantize(w, qtype)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    xq = np.zeros((T, cols), np.int8)
    xd = np.zeros((T, cols // 32), np.float32)
    xs = np.zeros((T, cols // 32), np.float32)
    quantize_rows_q8(x, T, cols, xq, xd, xs)
    xi = np.zeros(T * cols, np.int8)
    xdi = np.zeros(T * cols // 32, np.float32)
    xsi = np.zeros(T * cols // 32, np.float32)
    interleave8(xq, xd, xs, T, cols, xi, xdi, xsi)
    out = np.zeros((T, rows), np.float32)
    out8 = np.zeros((T, rows), np.float32)
    run(raw.reshape(-1), raw.shape[1] if raw.ndim == 2 else raw.nbytes // rows, cols // 32,
        xq, xd, xs, xi, xdi, xsi, LUT, out, out8)
    ref = reference.linear(quants.dequantize(raw, qtype, cols).astype(np.float64), qtype, x)
    assert rel_err(out, ref) < 1e-5
    np.testing.assert_array_equal(out8, out)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_vdot_vaxpy(dtype):
    import numba

    from cpullm.kernels.simd import vaxpy, vdot

    @numba.njit
    def run(q, k, lut, out):
        s = vdot(q, 16, k, 32, 64, lut)
        vaxpy(out, 16, np.float32(0.5), k, 32, 64, lut)
        return s

    rng = np.random.default_rng(1)
    q = rng.standard_normal(96).astype(np.float32)
    kf = rng.standard_normal(128).astype(np.float32)
    k = kf.astype(np.float16).view(np.uint16) if dtype == np.uint16 else kf
    kv = kf.astype(np.float16).astype(np.float32) if dtype == np.uint16 else kf
    out = np.ones(96, np.float32)
    s = run(q, k, LUT, out)
    np.testing.assert_allclose(s, q[16:80] @ kv[32:96], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[16:80], 1 + 0.5 * kv[32:96], rtol=1e-6)
    assert (out[:16] == 1).all() and (out[80:] == 1).all()


@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("hd", [32, 64])
def test_attention_cache_types_match_twin(kv, hd):
    """store_kv + attention over every cache type equal the twin fed the values the
    cache holds (f16-rounded, or q8_0 blocks: the activation quantizer's rule)."""
    rng = np.random.default_rng(9)
    L, H, KV, ctx, pos0, T = 2, 4, 2, 24, 9, 3
    S = pos0 + T
    k = rng.standard_normal((S, KV * hd)).astype(np.float32)
    v = rng.standard_normal((S, KV * hd)).astype(np.float32)
    dt = {"f32": np.float32, "f16": np.uint16, "q8_0": np.int8}[kv]
    kc, vc = np.zeros((L, KV, ctx, hd), dt), np.zeros((L, KV, ctx, hd), dt)
    sc = (L, KV, ctx, hd // 32) if kv == "q8_0" else (1, 1, 1, 1)
    ks, vs = np.zeros(sc, np.float32), np.zeros(sc, np.float32)
    ops.store_kv(k, v, S, 1, 0, KV, hd, kc, vc, ks, vs)
    q = rng.standard_normal((T, H * hd)).astype(np.float32)
    out = np.zeros((T, H * hd), np.float32)
    att = np.zeros((H, ctx), np.float32)
    ops.attention(q, T, 1, pos0, H, KV, hd, 0, kc, vc, ks, vs, att, out, LUT)

    def held(x):
        if kv == "f16":
            return x.astype(np.float16).astype(np.float64)
        if kv == "q8_0":
            return reference.dequant_q8_activations(x)
        return x.astype(np.float64)

    ref = reference.attention(q.astype(np.float64), held(k), held(v), np.arange(pos0, S),
                              np.arange(S), H, KV, hd)
    assert rel_err(out, ref) < 1e-5
    if kv == "q8_0":  # the stored blocks are the activation quantizer's, bit for bit
        rq, rd, _ = reference.q8_activations(k)
        np.testing.assert_array_equal(kc[1, :, :S].transpose(1, 0, 2).reshape(S, -1), rq)
