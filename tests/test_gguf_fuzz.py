"""Byte-mutation fuzzing of GGUFFile (RELIABILITY.md "Model files").

A mutated file must either open, with every tensor's bytes inside the file and readable, or
raise GGUFError; any other exception fails the test, and a crash (a signal from a bad mmap
read) kills pytest, which fails CI. Bounded and derandomized so CI is reproducible.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinymodel import make_small_gguf

from cpullm.errors import GGUFError
from cpullm.gguf import GGUFFile


def _base_file(path: Path) -> bytes:
    """A small valid file: every value kind, every tensor type, 1-D to 3-D shapes."""
    extra = {"general.alignment": 32, "a.str": "héllo"}
    return make_small_gguf(path, seed=7, extra=extra).read_bytes()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def base(workdir) -> bytes:
    data = _base_file(workdir / "base.gguf")
    GGUFFile(workdir / "base.gguf")  # the unmutated file opens
    return data


_counter = itertools.count()


def _check(data: bytes, workdir: Path) -> None:
    """Open ``data``: GGUFError or a file whose every tensor view is inside the mapping."""
    path = workdir / f"m{next(_counter)}.gguf"  # a fresh file: never truncate a live mapping
    path.write_bytes(data)
    try:
        f = GGUFFile(path)
    except GGUFError:
        return
    finally:
        path.unlink()
    size = len(data)
    assert f.file_size == size
    assert f.data_offset % f.alignment == 0
    for t in f.tensors.values():
        assert t.nbytes > 0
        assert f.data_offset <= t.offset and t.offset + t.nbytes <= size, t
        assert (t.offset - f.data_offset) % f.alignment == 0, t
        raw = f.raw(t.name)
        assert raw.nbytes == t.nbytes
        assert np.shares_memory(raw, f.data)
        assert raw.tobytes() == data[t.offset : t.offset + t.nbytes]
        arr = f.array(t.name)
        assert arr.nbytes == t.nbytes
        int(raw.sum(dtype=np.uint64))  # touch every byte through numpy too
    spans = sorted((t.offset, t.offset + t.nbytes) for t in f.tensors.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    for v in f.metadata.values():
        if isinstance(v, np.ndarray):
            v.tobytes()


_INTERESTING = [
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    12,
    13,
    31,
    32,
    33,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 32,
    2**64 - 1,
]

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, 2**20), st.sampled_from(_INTERESTING[:15])),
    st.tuples(st.just("u64"), st.integers(0, 2**20), st.sampled_from(_INTERESTING)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 16)),
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in mutations:
        if not buf:
            break
        pos %= len(buf)
        if op == "flip":
            buf[pos] ^= 1 << arg
        elif op == "byte":
            buf[pos] = arg
        elif op in ("u32", "u64"):
            fmt = "<I" if op == "u32" else "<Q"
            pos = min(pos, max(len(buf) - struct.calcsize(fmt), 0))
            if len(buf) >= struct.calcsize(fmt):
                struct.pack_into(fmt, buf, pos, arg)
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = arg
        elif op == "delete":
            del buf[pos : pos + arg]
    return bytes(buf)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_file_opens_or_raises_gguf_error(base, workdir, mutations):
    _check(_mutate(base, mutations), workdir)


def test_every_single_byte_overwrite(base, workdir):
    """Deterministic sweep: every byte of the header and tensor table set to 0x00, 0xFF and
    flipped in its top bit (plus the first bytes of the data section)."""
    f = GGUFFile(workdir / "base.gguf")
    end = min(len(base), f.data_offset + 64)
    for pos in range(end):
        for new in {0x00, 0xFF, base[pos] ^ 0x80}:
            if new != base[pos]:
                mutated = bytearray(base)
                mutated[pos] = new
                _check(bytes(mutated), workdir)
