"""cpullm.quants against the oracle ``gguf.quants`` (bit for bit), plus hand-built layouts and
round-trip error bounds."""

from __future__ import annotations

import numpy as np
import pytest

from cpullm import quants
from cpullm.gguf.constants import BLOCK_LAYOUT, GGMLType

gguf = pytest.importorskip("gguf")
gq = pytest.importorskip("gguf.quants")

ALL_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
             GGMLType.Q4_1]
BLOCK_TYPES = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1]


def oracle_type(t: GGMLType):
    return gguf.GGMLQuantizationType[t.name]


def oracle_quantize(x: np.ndarray, t: GGMLType) -> np.ndarray:
    """gguf.quants.quantize as raw bytes (it returns float arrays for F32/F16)."""
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(gq.quantize(x, oracle_type(t))).view(np.uint8)


def oracle_dequantize(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(gq.dequantize(raw, oracle_type(t)), dtype=np.float32)


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    """Same shape, same NaN positions, identical bits everywhere else (so -0.0 != 0.0)."""
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert a.shape == b.shape
    na, nb = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(na, nb)
    ok = ~na
    np.testing.assert_array_equal(a.view(np.uint32)[ok], b.view(np.uint32)[ok])


def _cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float inputs whose rows are multiples of 32 (valid for every type)."""
    c: dict[str, np.ndarray] = {}
    c["normal_1d"] = rng.standard_normal(64).astype(np.float32)
    c["normal_2d"] = rng.standard_normal((7, 96)).astype(np.float32)
    c["normal_3d"] = rng.standard_normal((2, 3, 128)).astype(np.float32)
    c["large"] = (rng.standard_normal((4, 64)) * 1e4).astype(np.float32)
    c["huge"] = (rng.standard_normal((2, 64)) * 1e30).astype(np.float32)
    c["tiny"] = (rng.standard_normal((4, 64)) * 1e-6).astype(np.float32)
    c["subnormal_f16_scales"] = (rng.standard_normal((4, 64)) * 1e-9).astype(np.float32)
    c["negative"] = -np.abs(rng.standard_normal((3, 64))).astype(np.float32)
    c["positive"] = np.abs(rng.standard_normal((3, 64))).astype(np.float32) + 1.0
    z = rng.standard_normal((4, 128)).astype(np.float32)
    z[1] = 0.0
    z[2, 32:64] = 0.0
    z[3, 64:96] = -0.0
    c["zero_blocks"] = z
    o = rng.standard_normal((3, 128)).astype(np.float32)
    o[1, 77] = 500.0
    o[2, 5] = -1e5
    c["outlier"] = o
    c["constant"] = np.full((2, 64), 3.25, dtype=np.float32)
    # magnitude ties: Q4_0 must take the first max-|x| element (here the negative one)
    t = rng.uniform(-1, 1, (2, 32)).astype(np.float32)
    t[0, 3], t[0, 9] = -2.0, 2.0
    t[1, 3], t[1, 9] = 2.0, -2.0
    c["abs_ties"] = t
    # exact half steps for Q8_0 rounding (ties away from zero) and nearby floats
    h = (np.arange(-16, 16, dtype=np.float32) + np.float32(0.5))
    h[0] = 127.0  # d = 1 exactly
    c["half_steps"] = np.stack([h, np.nextafter(h, np.float32(0)), np.nextafter(h, np.inf)])
    c["float64_input"] = rng.standard_normal((3, 64)) * 3.0
    c["float16_input"] = rng.standard_normal((3, 64)).astype(np.float16)
    c["empty_rows"] = np.zeros((0, 64), dtype=np.float32)
    return c


CASES = _cases(np.random.default_rng(1234))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_and_dequantize_match_gguf(qtype: GGMLType, case: str) -> None:
    x = CASES[case]
    if case == "empty_rows" and qtype in BLOCK_TYPES:
        pytest.skip("gguf.quants cannot split zero rows; checked in test_empty")
    ours = quants.quantize(x, qtype)
    theirs = oracle_quantize(x, qtype)
    bs, ts = BLOCK_LAYOUT[qtype]
    assert ours.dtype == np.uint8
    assert ours.shape == (*x.shape[:-1], x.shape[-1] // bs * ts)
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))

    back = quants.dequantize(ours, qtype)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert_bits_equal(back, oracle_dequantize(ours, qtype))


def test_empty() -> None:
    for t in ALL_TYPES:
        bs, ts = BLOCK_LAYOUT[t]
        raw = quants.quantize(np.zeros((0, 64), np.float32), t)
        assert raw.shape == (0, 64 // bs * ts)
        assert quants.dequantize(raw, t).shape == (0, 64)
        assert quants.quantize(np.zeros((3, 0), np.float32), t).shape == (3, 0)


def _random_bytes(rng: np.random.Generator, t: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """Random raw bytes; for block types, f16 scales are finite half the time only."""
    bs, ts = BLOCK_LAYOUT[t]
    raw = rng.integers(0, 256, (*shape[:-1], shape[-1] // bs * ts), dtype=np.uint8)
    if t in BLOCK_TYPES:
        blocks = raw.reshape(-1, ts)
        scale_bytes = 4 if t == GGMLType.Q4_1 else 2
        finite = rng.standard_normal((blocks.shape[0], scale_bytes // 2)).astype(np.float16)
        fb = finite.view(np.uint8)
        keep = rng.random(blocks.shape[0]) < 0.5  # the other half stays random (NaN/inf too)
        blocks[keep, :scale_bytes] = fb[keep]
    return raw


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_random_bytes_match_gguf(qtype: GGMLType) -> None:
    rng = np.random.default_rng(int(qtype) + 7)
    for shape in [(32,), (5, 64), (2, 3, 256)]:
        raw = _random_bytes(rng, qtype, shape)
        ours = quants.dequantize(raw, qtype)
        assert ours.shape == shape
        assert_bits_equal(ours, oracle_dequantize(raw, qtype).reshape(shape))


def test_bf16_special_values_match_gguf() -> None:
    one = np.float32(1.0).view(np.uint32)
    bits = np.array(
        [
            0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF,  # NaNs
            0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF,  # inf, max finite -> rounds to inf
            0x00000000, 0x80000000, 0x00000001, 0x807FFFFF,  # zeros, subnormals
            one + 0x8000, one + 0x18000, one + 0x7FFF, one + 0x8001,  # ties and near ties
            0x3F7FFFFF, 0x477FE000, 0xC0490FDB,
        ]
        + [0] * 12,
        dtype=np.uint32,
    )
    x = bits.view(np.float32).reshape(1, 32)
    for t in (GGMLType.BF16, GGMLType.F16, GGMLType.F32):
        ours = quants.quantize(x, t)
        np.testing.assert_array_equal(ours, oracle_quantize(x, t).reshape(ours.shape))
        assert_bits_equal(quants.dequantize(ours, t), oracle_dequantize(ours, t))
    bf = quants.quantize(x, GGMLType.BF16).view(np.uint16)[0]
    assert bf[0] == 0x7FC0 and bf[2] == 0x7FC0 and bf[3] == 0xFFC1  # NaN stays NaN, quieted
    assert bf[13] == 0x3F80 and bf[14] == 0x3F82  # ties to even
    assert bf[7] == 0x7F80  # max float rounds to +inf


def test_hand_built_layouts() -> None:
    """Decode blocks built byte by byte from the layout description (independent of gguf)."""
    # Q8_0: d = 0.25, q = -16..15
    q = np.arange(-16, 16, dtype=np.int8)
    raw = np.concatenate([np.array([0.25], "<f2").view(np.uint8), q.view(np.uint8)])
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q8_0), q * np.float32(0.25))

    # Q4_0: d = 0.5, byte j = j | (15 - j) << 4
    j = np.arange(16, dtype=np.uint8)
    qs = j | ((15 - j) << 4)
    raw = np.concatenate([np.array([0.5], "<f2").view(np.uint8), qs])
    want = np.concatenate([(j.astype(np.float32) - 8) * 0.5, (15 - j.astype(np.float32) - 8) * 0.5])
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_0), want)

    # Q4_1: d = 2, m = -3
    raw = np.concatenate([np.array([2.0, -3.0], "<f2").view(np.uint8), qs])
    want = np.concatenate([j * 2.0 - 3.0, (15 - j) * 2.0 - 3.0]).astype(np.float32)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_1), want)

    # BF16 / F16 / F32: little-endian scalars
    np.testing.assert_array_equal(
        quants.dequantize(np.array([0x80, 0x3F, 0x00, 0xC0], np.uint8), GGMLType.BF16), [1, -2]
    )
    np.testing.assert_array_equal(quants.dequantize(bytes([0x00, 0x3C]), GGMLType.F16), [1.0])
    np.testing.assert_array_equal(
        quants.dequantize(np.array([0, 0, 0x80, 0xBF], np.uint8), GGMLType.F32), [-1.0]
    )

    # quantize side: the largest-magnitude value of a Q4_0 block encodes as nibble 0
    x = np.linspace(-1, 3, 32, dtype=np.float32)
    b = quants.quantize(x, GGMLType.Q4_0)
    assert np.frombuffer(b[:2].tobytes(), "<f2")[0] == np.float16(3 / -8)
    assert b[2 + 15] >> 4 == 0  # element 31 (= 3.0) is the high nibble of byte 15


def _block_view(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 32)


def test_round_trip_error_bounds() -> None:
    rng = np.random.default_rng(99)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    x[3, 10] = 40.0  # one outlier row
    xb = _block_view(x)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    f16_rel = 2.0**-11

    err = np.abs(_block_view(quants.dequantize(quants.quantize(x, GGMLType.Q8_0), GGMLType.Q8_0))
                 - xb)
    d = amax / 127
    assert np.all(err <= d * (0.5 + 127 * f16_rel) * (1 + 1e-5))
    assert np.all(err.max(axis=1) <= d[:, 0] * 0.6)

    err = np.abs(_block_view(quants.dequantize(quants.quantize(x, GGMLType.Q4_0), GGMLType.Q4_0))
                 - xb)
    d = amax / 8
    # nearest level, except the value of opposite sign near -max which clips to +7 d: <= 1 step
    assert np.all(err <= d * (1 + 8 * f16_rel) * (1 + 1e-5))

    err = np.abs(_block_view(quants.dequantize(quants.quantize(x, GGMLType.Q4_1), GGMLType.Q4_1))
                 - xb)
    lo = xb.min(axis=1, keepdims=True)
    d = (xb.max(axis=1, keepdims=True) - lo) / 15
    assert np.all(err <= d * (0.5 + 15 * f16_rel) * (1 + 1e-5) + np.abs(lo) * f16_rel)

    err = np.abs(quants.dequantize(quants.quantize(x, GGMLType.F16), GGMLType.F16) - x)
    assert np.all(err <= np.abs(x) * f16_rel)
    err = np.abs(quants.dequantize(quants.quantize(x, GGMLType.BF16), GGMLType.BF16) - x)
    assert np.all(err <= np.abs(x) * 2.0**-8)
    np.testing.assert_array_equal(
        quants.dequantize(quants.quantize(x, GGMLType.F32), GGMLType.F32), x
    )

    # zero blocks decode to exact zeros
    z = np.zeros((2, 64), np.float32)
    for t in ALL_TYPES:
        np.testing.assert_array_equal(quants.dequantize(quants.quantize(z, t), t), z)


def test_layout_helpers_and_rows() -> None:
    assert quants.byte_shape((3, 64), GGMLType.Q8_0) == (3, 68)
    assert quants.nbytes_for((3, 64), GGMLType.Q4_1) == 3 * 40
    assert quants.nbytes_for((5, 7), GGMLType.F16) == 70
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    raw = quants.quantize(x, GGMLType.Q4_0)
    flat = raw.ravel()
    rows = quants.dequantize_rows(flat, GGMLType.Q4_0, 64)
    assert rows.shape == (4, 64)
    np.testing.assert_array_equal(rows, quants.dequantize(raw, GGMLType.Q4_0))
    np.testing.assert_array_equal(quants.dequantize_rows(raw, GGMLType.Q4_0), rows)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_0, n=64), rows)
    # int type ids are accepted; output is a fresh array (not a view of raw)
    f = quants.quantize(x, 0)
    out = quants.dequantize(f, 0)
    assert not np.shares_memory(out, f)


def test_errors() -> None:
    x = np.zeros((2, 48), np.float32)
    for t in BLOCK_TYPES:
        with pytest.raises(ValueError, match="multiple"):
            quants.quantize(x, t)
        with pytest.raises(ValueError, match="blocks"):
            quants.dequantize(np.zeros((2, BLOCK_LAYOUT[t][1] + 1), np.uint8), t)
        with pytest.raises(ValueError, match="elements"):
            quants.dequantize(np.zeros((2, BLOCK_LAYOUT[t][1]), np.uint8), t, n=64)
    with pytest.raises(ValueError, match="blocks"):
        quants.dequantize(np.zeros(3, np.uint8), GGMLType.F32)
    with pytest.raises(ValueError, match="uint8"):
        quants.dequantize(np.zeros(4, np.float32), GGMLType.F32)
    with pytest.raises(ValueError, match="0-d"):
        quants.quantize(np.float32(1.0), GGMLType.F32)
    with pytest.raises(ValueError, match="rows"):
        quants.dequantize_rows(np.zeros(35, np.uint8), GGMLType.Q8_0, 32)
    for bad in (12, 99):  # Q4_K (known, unsupported), unknown id
        with pytest.raises(ValueError, match="unsupported"):
            quants.quantize(np.zeros(256, np.float32), bad)
        with pytest.raises(ValueError, match="unsupported"):
            quants.dequantize(np.zeros(256, np.uint8), bad)
