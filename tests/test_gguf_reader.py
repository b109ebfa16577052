"""GGUFFile: round trips (ours and the ``gguf`` package's, both ways), every truncated prefix,
and hand-crafted corrupt files, each rejected with a GGUFError that names the problem.

Implements the GGUF lines of RELIABILITY.md "Model files". Metadata checks that need the
tokenizer or config (token ids inside the vocabulary, scores/types lengths, required keys)
live with those layers, not here.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from tinymodel import make_small_gguf

from cpullm.errors import GGUFError
from cpullm.gguf import GGMLType, GGUFFile, GGUFWriter, ValueType, read_metadata, write_gguf
from cpullm.quants import quantize

ALL_TYPES = (
    GGMLType.F32,
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q8_0,
    GGMLType.Q4_0,
    GGMLType.Q4_1,
)
SHAPES = ((64,), (3, 64), (2, 2, 32))

ROUNDTRIP_META = {
    "general.architecture": "llama",
    "general.name": "tiny ✓ ünïcode",
    "t.u8": 200,
    "t.i8": -100,
    "t.u16": 60000,
    "t.i16": -30000,
    "t.u32": 4_000_000_000,
    "t.i32": -2_000_000_000,
    "t.u64": 2**64 - 1,
    "t.i64": -(2**63),
    "t.f32": 0.25,
    "t.f64": 1.0 / 3.0,
    "t.bool_true": True,
    "t.bool_false": False,
    "t.empty_string": "",
    "t.ints": np.array([1, -2, 3, 2**31 - 1], dtype=np.int32),
    "t.u64s": np.array([0, 2**64 - 1], dtype=np.uint64),
    "t.floats": np.array([0.5, -1.5, np.inf], dtype=np.float32),
    "t.f64s": np.array([1e300, -0.0], dtype=np.float64),
    "t.bools": np.array([True, False, True], dtype=np.bool_),
    "t.strings": ["a", "", "ü✓", "<|endoftext|>"],
    "t.empty_ints": np.array([], dtype=np.int32),
    "t.empty_strings": [],
    "t.nested": [[1, 2, 3], [4], []],
    "t.nested_strings": [["x", "y"], ["z"]],
}
ROUNDTRIP_TYPES = {
    "t.u8": ValueType.UINT8,
    "t.i8": ValueType.INT8,
    "t.u16": ValueType.UINT16,
    "t.i16": ValueType.INT16,
    "t.u32": ValueType.UINT32,
    "t.i32": ValueType.INT32,
    "t.u64": ValueType.UINT64,
    "t.i64": ValueType.INT64,
    "t.f32": ValueType.FLOAT32,
    "t.f64": ValueType.FLOAT64,
}


def _tensors(seed: int = 0) -> dict[str, tuple[GGMLType, tuple[int, ...], np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for qtype in ALL_TYPES:
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(np.float32)
            out[f"{qtype.name.lower()}.{len(shape)}d"] = (qtype, shape, quantize(x, qtype))
    return out


def _small_file(path: Path) -> Path:
    """A < 3 KB file with every value kind and every tensor type (for exhaustive prefixes)."""
    return make_small_gguf(path, seed=1)


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "roundtrip.gguf"
    tensors = _tensors()
    write_gguf(path, ROUNDTRIP_META, tensors, types=ROUNDTRIP_TYPES)
    return path, tensors


def _assert_value_equal(got, want, key: str) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    elif isinstance(want, list):
        assert len(got) == len(want), key
        for g, w in zip(got, want, strict=True):
            if isinstance(w, list) and w and isinstance(w[0], int):
                w = np.array(w, dtype=np.int32)
            elif isinstance(w, list) and not w:
                # the writer types an empty list as INT32
                assert len(g) == 0, key
                continue
            _assert_value_equal(g, w, key)
    elif isinstance(want, float):
        assert isinstance(got, float), key
        if ROUNDTRIP_TYPES.get(key) == ValueType.FLOAT64:
            assert got == want, key
        else:
            assert got == float(np.float32(want)), key
    else:
        assert type(got) is type(want), key
        assert got == want, key


# --------------------------------------------------------------------------- round trips


def test_roundtrip_metadata(roundtrip):
    path, _ = roundtrip
    f = GGUFFile(path)
    assert f.version == 3
    assert f.alignment == 32
    assert list(f.metadata) == list(ROUNDTRIP_META)
    for key, want in ROUNDTRIP_META.items():
        _assert_value_equal(f.metadata[key], want, key)
    assert read_metadata(path).keys() == f.metadata.keys()
    assert f.get("no.such.key", 5) == 5


def test_roundtrip_tensors(roundtrip):
    path, tensors = roundtrip
    f = GGUFFile(path)
    assert list(f.tensors) == list(tensors)
    prev_end = 0
    for name, (qtype, shape, raw) in tensors.items():
        t = f.info(name)
        assert t.name == name
        assert t.qtype == qtype
        assert t.shape == shape
        assert t.dims == tuple(reversed(shape))
        assert t.n_elements == int(np.prod(shape))
        assert t.nbytes == raw.nbytes
        assert t.offset % 32 == 0 and (t.offset - f.data_offset) % 32 == 0
        assert f.data_offset % 32 == 0
        assert t.offset >= prev_end
        prev_end = t.offset + t.nbytes
        assert bytes(f.data[t.offset : t.offset + t.nbytes]) == raw.tobytes()

        r = f.raw(name)
        assert r.dtype == np.uint8
        assert r.shape == (int(np.prod(shape[:-1])), raw.shape[-1])
        assert r.tobytes() == raw.tobytes()

        a = f.array(name)
        if qtype == GGMLType.F32:
            assert a.dtype == np.float32 and a.shape == shape
        elif qtype == GGMLType.F16:
            assert a.dtype == np.float16 and a.shape == shape
        elif qtype == GGMLType.BF16:
            assert a.dtype == np.uint16 and a.shape == shape
        else:
            assert a.dtype == np.uint8 and a.shape == r.shape
        assert a.tobytes() == raw.tobytes()
    assert prev_end == f.file_size  # the writer leaves no padding after the last tensor


def _mapping_of(arr: np.ndarray):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_views_are_zero_copy(roundtrip):
    path, tensors = roundtrip
    f = GGUFFile(path)
    assert isinstance(_mapping_of(f.data), mmap.mmap)
    for name in tensors:
        for view in (f.raw(name), f.array(name)):
            assert np.shares_memory(view, f.data)
            assert _mapping_of(view) is _mapping_of(f.data)
            assert not view.flags.writeable
    # numeric metadata arrays are views of the mapping too
    assert np.shares_memory(f.metadata["t.ints"], f.data)


def test_views_outlive_close(roundtrip):
    path, tensors = roundtrip
    name = next(iter(tensors))
    with GGUFFile(path) as f:
        view = f.raw(name)
    assert f.data is None
    assert view.tobytes() == tensors[name][2].tobytes()


def test_missing_tensor_names_it(roundtrip):
    f = GGUFFile(roundtrip[0])
    with pytest.raises(GGUFError, match="no tensor 'nope.weight'"):
        f.info("nope.weight")
    with pytest.raises(GGUFError, match="nope"):
        f.raw("nope")
    assert "GGUFFile(" in repr(f) and "18 tensors" in repr(f)


def test_custom_alignment(tmp_path):
    w = GGUFWriter(tmp_path / "a64.gguf", alignment=64)
    w.add("general.architecture", "llama")
    tensors = _tensors(3)
    for name, (qtype, shape, _) in tensors.items():
        w.add_tensor_info(name, shape, qtype)
    w.write_header()
    for name, (_, _, raw) in tensors.items():
        w.write_tensor_data(name, raw)
    f = GGUFFile(w.finish())
    assert f.alignment == 64 and f.data_offset % 64 == 0
    for name, (_, _, raw) in tensors.items():
        assert f.info(name).offset % 64 == 0
        assert f.raw(name).tobytes() == raw.tobytes()


def test_minimal_files(tmp_path):
    p = tmp_path / "empty_tables.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    f = GGUFFile(p)
    assert f.metadata == {} and f.tensors == {}
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 2, 0, 0))  # v2 has the same layout
    assert GGUFFile(p).version == 2


def test_gguf_package_reads_our_file(roundtrip):
    gguf = pytest.importorskip("gguf")
    path, tensors = roundtrip
    ours = GGUFFile(path)
    theirs = gguf.GGUFReader(path)
    assert [t.name for t in theirs.tensors] == list(tensors)
    for t in theirs.tensors:
        mine = ours.info(t.name)
        assert int(t.tensor_type) == int(mine.qtype)
        assert [int(d) for d in t.shape] == list(mine.dims)
        assert int(t.n_elements) == mine.n_elements
        assert int(t.n_bytes) == mine.nbytes
        assert int(t.data_offset) == mine.offset
        assert np.asarray(t.data).tobytes() == tensors[t.name][2].tobytes()
    # the oracle flattens nested arrays; compare everything else value by value
    for key, value in ours.metadata.items():
        field = theirs.fields[key]
        if key.startswith("t.nested"):
            continue
        got = field.contents()
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(np.array(got, dtype=value.dtype), value, err_msg=key)
        else:
            assert got == value, key
    assert theirs.alignment == ours.alignment


def test_we_read_gguf_package_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "theirs.gguf"
    tensors = _tensors(2)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_uint32("llama.block_count", 2)
    w.add_int64("t.i64", -5)
    w.add_float32("t.f32", 0.5)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.strs", ["a", "bb", ""])
    for name, (qtype, shape, raw) in tensors.items():
        if qtype == GGMLType.F32:
            w.add_tensor(name, raw.view(np.float32).reshape(shape))
        elif qtype == GGMLType.F16:
            w.add_tensor(name, raw.view(np.float16).reshape(shape))
        else:
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(int(qtype)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f = GGUFFile(path)
    theirs = gguf.GGUFReader(path)
    assert f.metadata["general.architecture"] == "llama"
    assert f.metadata["llama.block_count"] == 2
    assert f.metadata["t.i64"] == -5
    assert f.metadata["t.f32"] == 0.5
    assert f.metadata["t.f64"] == 0.1
    assert f.metadata["t.bool"] is True
    assert f.metadata["t.str"] == "héllo"
    assert list(f.metadata["t.ints"]) == [1, 2, 3]
    assert list(f.metadata["t.floats"]) == [0.5, 1.5]
    assert f.metadata["t.strs"] == ["a", "bb", ""]
    assert list(f.tensors) == [t.name for t in theirs.tensors] == list(tensors)
    for t in theirs.tensors:
        qtype, shape, raw = tensors[t.name]
        mine = f.info(t.name)
        assert mine.qtype == qtype and int(t.tensor_type) == int(qtype)
        assert mine.shape == shape
        assert list(mine.dims) == [int(d) for d in t.shape]
        assert mine.offset == int(t.data_offset)
        assert f.raw(t.name).tobytes() == raw.tobytes() == np.asarray(t.data).tobytes()


def test_big_vocabulary_is_fast(tmp_path):
    """Opening a file with a 50k-token vocabulary stays well under a second."""
    tokens = [f"tok{i}✓" for i in range(50_000)]
    merges = [f"a{i} b{i}" for i in range(50_000)]
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": np.ones(50_000, dtype=np.int32),
    }
    path = write_gguf(tmp_path / "vocab.gguf", meta, {})
    GGUFFile(path)  # warm the page cache
    t0 = time.perf_counter()
    f = GGUFFile(path)
    elapsed = time.perf_counter() - t0
    assert f.metadata["tokenizer.ggml.tokens"] == tokens
    assert f.metadata["tokenizer.ggml.merges"] == merges
    assert elapsed < 1.0, f"opening took {elapsed:.2f} s"


# --------------------------------------------------------------------------- truncation


def _assert_every_prefix_rejected(data: bytes, path: Path, lengths) -> None:
    path.write_bytes(data)
    with open(path, "r+b") as fh:
        for n in sorted(lengths, reverse=True):
            fh.truncate(n)
            fh.flush()
            with pytest.raises(GGUFError) as exc:
                GGUFFile(path)
            assert type(exc.value) is GGUFError, n
            msg = str(exc.value)
            assert "truncated" in msg or "empty" in msg or "not a GGUF file" in msg, (n, msg)


def test_every_prefix_of_small_file_rejected(tmp_path):
    data = _small_file(tmp_path / "small.gguf").read_bytes()
    assert len(data) < 3000
    GGUFFile(tmp_path / "small.gguf")  # the whole file is fine
    t0 = time.perf_counter()
    _assert_every_prefix_rejected(data, tmp_path / "prefix.gguf", range(len(data)))
    assert time.perf_counter() - t0 < 10


def test_sampled_prefixes_of_larger_file_rejected(roundtrip, tmp_path):
    data = roundtrip[0].read_bytes()
    f = GGUFFile(roundtrip[0])
    rng = np.random.default_rng(0)
    lengths = set(rng.integers(0, len(data), 300).tolist())
    # and every boundary: the header, tensor starts and ends, a byte either side
    for t in f.tensors.values():
        for edge in (t.offset, t.offset + t.nbytes):
            lengths.update(n for n in (edge - 1, edge, edge + 1) if 0 <= n < len(data))
    lengths.update(range(0, 64))
    lengths.update(range(f.data_offset - 40, f.data_offset + 2))
    _assert_every_prefix_rejected(data, tmp_path / "prefix.gguf", lengths)


# --------------------------------------------------------------------------- crafted files


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _u32kv(key: str, v: int) -> bytes:
    return _kv(key, ValueType.UINT32, struct.pack("<I", v))


def _info(name: str | bytes, dims, ttype: int = GGMLType.F32, offset: int = 0) -> bytes:
    return (
        _str(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )


def _build(
    kvs=(),
    infos=None,
    data: bytes = bytes(16),
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    align: int = 32,
) -> bytes:
    """Header, key/values and tensor infos, padded to ``align``, then ``data``; by default one
    F32 tensor 'w' of 4 elements at offset 0 and its 16 bytes."""
    if infos is None:
        infos = [_info("w", (4,))]
    head = magic + struct.pack("<I", version)
    head += struct.pack(
        "<QQ", len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    head += b"".join(kvs) + b"".join(infos)
    head += bytes(-len(head) % align)
    return head + data


def _array(etype: int, count: int, body: bytes = b"") -> bytes:
    return struct.pack("<IQ", etype, count) + body


BAD_FILES = {
    # header
    "bad magic": (_build(magic=b"GGML"), r"not a GGUF file \(magic b'GGML'"),
    "version 1": (_build(version=1), r"version 1 is not supported"),
    "version 4": (_build(version=4), r"version 4 is not supported"),
    "big-endian": (_build(version=3 << 24), r"big-endian"),
    "huge tensor count": (_build(n_tensors=2**40), r"tensor count 1099511627776 cannot fit"),
    "max tensor count": (_build(n_tensors=2**64 - 1), r"tensor count \d+ cannot fit"),
    "huge kv count": (_build(n_kv=2**40), r"metadata count 1099511627776 cannot fit"),
    "max kv count": (_build(n_kv=2**64 - 1), r"metadata count \d+ cannot fit"),
    # keys and values
    "huge key length": (
        _build([struct.pack("<Q", 2**62) + b"k"]),
        r"key of metadata entry 0 is \d+ bytes long",
    ),
    "huge string length": (
        _build([_kv("k", ValueType.STRING, struct.pack("<Q", 2**62) + b"abc")]),
        r"value of 'k' needs 4611686018427387904 bytes",
    ),
    "max string length": (
        _build([_kv("k", ValueType.STRING, struct.pack("<Q", 2**64 - 1))]),
        r"value of 'k' needs \d+ bytes",
    ),
    "huge int array": (
        _build([_kv("k", ValueType.ARRAY, _array(ValueType.INT32, 2**61, bytes(8)))]),
        r"array 'k' of 2305843009213693952 elements",
    ),
    "max u64 array": (
        _build([_kv("k", ValueType.ARRAY, _array(ValueType.UINT64, 2**64 - 1))]),
        r"array 'k' of 18446744073709551615 elements",
    ),
    "huge string array": (
        _build([_kv("k", ValueType.ARRAY, _array(ValueType.STRING, 2**60, _str("a")))]),
        r"array 'k' of 1152921504606846976 elements",
    ),
    "string array element past end": (
        _build(
            [
                _kv(
                    "k",
                    ValueType.ARRAY,
                    _array(ValueType.STRING, 2, _str("a") + struct.pack("<Q", 2**40)),
                )
            ]
        ),
        r"element 1 of 'k' needs 1099511627776 bytes",
    ),
    "huge nested array": (
        _build([_kv("k", ValueType.ARRAY, _array(ValueType.ARRAY, 2**60))]),
        r"array 'k' of 1152921504606846976 elements",
    ),
    "inner array too long": (
        _build(
            [_kv("k", ValueType.ARRAY, _array(ValueType.ARRAY, 1, _array(ValueType.INT8, 2**50)))]
        ),
        r"array 'k' of 1125899906842624 elements",
    ),
    "unknown value type": (
        _build([_kv("k", 13, bytes(8))]),
        r"metadata 'k' has unknown value type 13",
    ),
    "max value type": (
        _build([_kv("k", 2**32 - 1, bytes(8))]),
        r"metadata 'k' has unknown value type 4294967295",
    ),
    "unknown array element type": (
        _build([_kv("k", ValueType.ARRAY, _array(13, 1, bytes(8)))]),
        r"array 'k' has unknown value type 13",
    ),
    "arrays nested three deep": (
        _build(
            [
                _kv(
                    "k",
                    ValueType.ARRAY,
                    _array(
                        ValueType.ARRAY,
                        1,
                        _array(ValueType.ARRAY, 1, _array(ValueType.INT32, 1, bytes(4))),
                    ),
                )
            ]
        ),
        r"'k' nests arrays deeper than 2 levels",
    ),
    "array nesting bomb": (
        _build([_kv("k", ValueType.ARRAY, _array(ValueType.ARRAY, 1) * 10_000)]),
        r"'k' nests arrays deeper than 2 levels",
    ),
    "duplicate key": (
        _build([_u32kv("a.b", 1), _u32kv("a.b", 2)]),
        r"metadata key 'a.b' appears twice",
    ),
    "invalid UTF-8 key": (
        _build([_u32kv("x", 1).replace(b"x", b"\xff")]),
        r"key .* not valid UTF-8",
    ),
    "invalid UTF-8 value": (
        _build([_kv("k", ValueType.STRING, _str(b"ab\xc3"))]),
        r"value of 'k' is not valid UTF-8",
    ),
    "invalid UTF-8 array element": (
        _build(
            [
                _kv(
                    "k",
                    ValueType.ARRAY,
                    _array(ValueType.STRING, 2, _str("ok") + _str(b"\xed\xa0\x80")),
                )
            ]
        ),
        r"element 1 of 'k' is not valid UTF-8",
    ),
    "invalid UTF-8 tensor name": (
        _build(infos=[_info(b"w\xfe", (4,))]),
        r"tensor 0 is not valid UTF-8",
    ),
    # alignment
    "alignment 48": (
        _build([_u32kv("general.alignment", 48)]),
        r"general.alignment = 48 is not a power of two",
    ),
    "alignment 0": (
        _build([_u32kv("general.alignment", 0)]),
        r"general.alignment = 0 is not a power of two",
    ),
    "alignment 2**20": (
        _build([_u32kv("general.alignment", 2**20)]),
        r"general.alignment = 1048576 is not a power of two between 1 and 65536",
    ),
    "alignment 2**63": (
        _build([_kv("general.alignment", ValueType.UINT64, struct.pack("<Q", 2**63))]),
        r"general.alignment = 9223372036854775808",
    ),
    "alignment -32": (
        _build([_kv("general.alignment", ValueType.INT32, struct.pack("<i", -32))]),
        r"general.alignment = -32",
    ),
    "alignment string": (
        _build([_kv("general.alignment", ValueType.STRING, _str("32"))]),
        r"general.alignment must be an integer, got str '32'",
    ),
    "alignment float": (
        _build([_kv("general.alignment", ValueType.FLOAT32, struct.pack("<f", 32.0))]),
        r"general.alignment must be an integer, got float",
    ),
    "alignment bool": (
        _build([_kv("general.alignment", ValueType.BOOL, b"\x01")]),
        r"general.alignment must be an integer, got bool",
    ),
    "alignment array": (
        _build(
            [
                _kv(
                    "general.alignment",
                    ValueType.ARRAY,
                    _array(ValueType.UINT32, 1, struct.pack("<I", 32)),
                )
            ]
        ),
        r"general.alignment must be an integer, got ndarray",
    ),
    # tensor infos
    "huge tensor name": (
        _build(infos=[struct.pack("<Q", 2**40) + b"w"]),
        r"name of tensor 0 is \d+ bytes long",
    ),
    "n_dims 0": (
        _build(infos=[_info("w", ())]),
        r"tensor 'w' has 0 dimensions \(allowed: 1 to 4\)",
    ),
    "n_dims 5": (_build(infos=[_info("w", (4, 1, 1, 1, 1))]), r"tensor 'w' has 5 dimensions"),
    "n_dims max": (
        _build(infos=[_str("w") + struct.pack("<I", 2**32 - 1) + bytes(64)]),
        r"tensor 'w' has 4294967295 dimensions",
    ),
    "zero dim": (_build(infos=[_info("w", (4, 0))]), r"tensor 'w' has a zero dimension: \[4, 0\]"),
    "dim 2**63": (
        _build(infos=[_info("w", (4, 2**63))]),
        r"tensor 'w' has a dimension larger than int64",
    ),
    "dim 2**64-1": (
        _build(infos=[_info("w", (2**64 - 1,))]),
        r"tensor 'w' has a dimension larger than int64",
    ),
    # 2**32 * 2**32 wraps to 0 in uint64: a reader doing numpy arithmetic would accept 0 bytes
    "dims product wraps to 0": (
        _build(infos=[_info("w", (2**32, 2**32))]),
        r"tensor 'w' has 18446744073709551616 elements",
    ),
    "dims product overflows": (
        _build(infos=[_info("w", (2**62, 2**62, 3, 5))]),
        r"tensor 'w' has \d+ elements .* more than int64",
    ),
    "dims product past end": (
        _build(infos=[_info("w", (2**31, 2**31))]),
        r"tensor 'w' needs bytes 0\.\.\d+ of the data section",
    ),
    "Q4_K": (
        _build(infos=[_info("w", (256,), 12)]),
        r"tensor 'w' has type Q4_K, which cpullm does not support",
    ),
    "type 99": (_build(infos=[_info("w", (4,), 99)]), r"tensor 'w' has type unknown type 99"),
    "type max": (_build(infos=[_info("w", (4,), 2**32 - 1)]), r"unknown type 4294967295"),
    "Q8_0 row 48": (
        _build(infos=[_info("w", (48, 1), GGMLType.Q8_0)], data=bytes(64)),
        r"tensor 'w': row length 48 is not a multiple of the Q8_0 block size 32",
    ),
    "Q4_1 row 16": (
        _build(infos=[_info("w", (16,), GGMLType.Q4_1)]),
        r"row length 16 is not a multiple of the Q4_1 block size 32",
    ),
    "misaligned offset": (
        _build(infos=[_info("w", (4,), offset=4)], data=bytes(64)),
        r"tensor 'w': data offset 4 is not aligned to 32",
    ),
    "offset past end": (
        _build(infos=[_info("w", (4,), offset=32)]),
        r"tensor 'w' needs bytes 32\.\.48 of the data section, which has 16",
    ),
    "size past end": (
        _build(infos=[_info("w", (5,))]),
        r"tensor 'w' needs bytes 0\.\.20 of the data section, which has 16",
    ),
    "offset near 2**64": (
        _build(infos=[_info("w", (4,), offset=2**64 - 32)]),
        r"tensor 'w' needs bytes 18446744073709551584\.\.",
    ),
    "overlapping tensors": (
        _build(infos=[_info("a", (16,)), _info("b", (4,), offset=32)], data=bytes(64)),
        r"tensors 'a' and 'b' overlap",
    ),
    "same offset": (
        _build(infos=[_info("a", (4,)), _info("b", (4,))]),
        r"tensors 'a' and 'b' overlap",
    ),
    "duplicate tensor name": (
        _build(infos=[_info("w", (4,)), _info("w", (4,), offset=32)], data=bytes(64)),
        r"tensor 'w' appears twice",
    ),
    "data section missing": (
        _build(infos=[_info("w", (4,))], data=b"", align=1),
        r"data section, which has 0 bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_crafted_bad_file(case, tmp_path):
    data, match = BAD_FILES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=match) as exc:
        GGUFFile(path)
    assert type(exc.value) is GGUFError


def test_crafted_base_is_valid(tmp_path):
    """The template the bad files are cut from opens, so each case tests only its own defect."""
    path = tmp_path / "good.gguf"
    path.write_bytes(
        _build(
            [
                _u32kv("general.alignment", 64),
                _kv(
                    "k",
                    ValueType.ARRAY,
                    _array(ValueType.ARRAY, 1, _array(ValueType.INT32, 1, bytes(4))),
                ),
            ],
            infos=[_info("a", (4,)), _info("b", (32, 1), GGMLType.Q8_0, offset=64)],
            data=bytes(64 + 34),
            align=64,
        )
    )
    f = GGUFFile(path)
    assert f.alignment == 64
    assert f.info("b").offset == f.data_offset + 64 and f.raw("b").shape == (1, 34)
    assert [a.tolist() for a in f.metadata["k"]] == [[0]]
    path.write_bytes(_build())
    assert GGUFFile(path).array("w").tolist() == [0.0] * 4


def test_patched_valid_file(tmp_path):
    """Defects patched into a real writer's output with struct.pack_into."""
    path = tmp_path / "w.gguf"
    write_gguf(
        path,
        {"general.architecture": "llama"},
        {"w": (GGMLType.Q8_0, (2, 32), quantize(np.ones((2, 32), np.float32), GGMLType.Q8_0))},
    )
    good = bytearray(path.read_bytes())
    GGUFFile(path)
    # header: magic(4) version(4) n_tensors(8) n_kv(8); kv: key len(8) key, type(4), str
    klen = struct.unpack_from("<Q", good, 24)[0]
    vtype_at = 32 + klen
    vlen_at = vtype_at + 4
    vlen = struct.unpack_from("<Q", good, vlen_at)[0]
    info_at = vlen_at + 8 + vlen  # tensor name length
    dims_at = info_at + 8 + 1 + 4
    type_at = dims_at + 16
    off_at = type_at + 4
    patches = [
        (4, "<I", 7, r"version 7"),
        (8, "<Q", 2, r"tensor '' has 0 dimensions"),  # the 2nd info is read from padding
        (8, "<Q", 2**62, r"tensor count \d+ cannot fit"),
        (16, "<Q", 2**63, r"metadata count"),
        (24, "<Q", 2**63, r"key of metadata entry 0 is \d+ bytes long"),
        (vtype_at, "<I", 77, r"unknown value type 77"),
        (vlen_at, "<Q", 2**64 - 1, r"value of 'general.architecture' needs"),
        (info_at + 8 + 1, "<I", 9, r"9 dimensions"),
        (dims_at, "<Q", 0, r"zero dimension"),
        (dims_at, "<Q", 33, r"row length 33"),
        (dims_at + 8, "<Q", 3, r"needs bytes"),
        (type_at, "<I", 14, r"type Q6_K"),
        (off_at, "<Q", 1, r"not aligned"),
        (off_at, "<Q", 2**64 - 1, r"not aligned"),
    ]
    for at, fmt, value, match in patches:
        bad = bytearray(good)
        struct.pack_into(fmt, bad, at, value)
        path.write_bytes(bad)
        with pytest.raises(GGUFError, match=match):
            GGUFFile(path)


# --------------------------------------------------------------------------- paths


def test_empty_file(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="is empty"):
        GGUFFile(tmp_path / "e.gguf")


def test_directory(tmp_path):
    with pytest.raises(GGUFError, match="is a directory"):
        GGUFFile(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        GGUFFile(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="no such file"):
        read_metadata(str(tmp_path / "nope.gguf"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFFile(tmp_path / "pipe.gguf")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_file():
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFFile("/dev/zero")


def test_nul_in_path():
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile("model\0.gguf")


def test_path_through_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "f" / "model.gguf")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable(tmp_path):
    p = tmp_path / "locked.gguf"
    p.write_bytes(_build())
    p.chmod(0)
    try:
        with pytest.raises(GGUFError, match="permission denied"):
            GGUFFile(p)
    finally:
        p.chmod(0o600)


def test_not_a_gguf_text_file(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(p)
