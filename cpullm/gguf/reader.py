"""Validated, zero-copy GGUF reader.

The whole file is mapped once. Header, metadata and tensor infos are parsed with
every count, length and offset checked against the bytes actually present, in
Python ints (numpy integers wrap silently). Only after the whole table has been
proven consistent does anyone get a view of tensor data; the numba kernels read
those bytes without bounds checks, so this module is the safety boundary.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpullm.errors import GGUFError
from cpullm.gguf.constants import (
    BLOCK_LAYOUT,
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_ALIGNMENT,
    MAX_ARRAY_DEPTH,
    MAX_DIMS,
    SCALAR_DTYPES,
    SCALAR_FORMATS,
    SUPPORTED_VERSIONS,
    GGMLType,
    Keys,
    ValueType,
    type_name,
)

_MAX_KEY_LEN = 1 << 16
_MAX_NAME_LEN = 1 << 12
_INT64_MAX = (1 << 63) - 1  # ggml stores dims and element counts as int64
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's table entry. ``dims`` is ggml order (``dims[0]`` is contiguous);
    ``shape`` is numpy order (``shape[-1]`` is contiguous)."""

    name: str
    dims: tuple[int, ...]
    qtype: GGMLType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


class _Cursor:
    """Bounds-checked little-endian reads over a bytes-like buffer."""

    def __init__(self, buf: memoryview, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"file is truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, max_len: int | None = None) -> str:
        n = self.u64(f"length of {what}")
        if max_len is not None and n > max_len:
            raise GGUFError(f"{what} is {n} bytes long, more than the limit of {max_len}")
        self.need(n, what)
        try:
            s = str(self.buf[self.pos : self.pos + n], "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        self.pos += n
        return s

    def string_array(self, count: int, key: str) -> list[str]:
        """``count`` strings, each a u64 length then UTF-8 bytes (a tokenizer's vocabulary:
        the hot loop of opening a file, so the checks of :meth:`string` are inlined)."""
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(count):
            end = pos + 8
            if end > size:
                self.pos = pos
                self.need(8, f"length of element {i} of {key!r}")
            (n,) = unpack(buf, pos)
            pos, end = end, end + n
            if end > size:
                self.pos = pos
                self.need(n, f"element {i} of {key!r}")
            try:
                append(str(buf[pos:end], "utf-8"))
            except UnicodeDecodeError as e:
                raise GGUFError(
                    f"element {i} of {key!r} is not valid UTF-8 ({e.reason} at byte {e.start})"
                ) from None
            pos = end
        self.pos = pos
        return out


def _value_type(code: int, what: str) -> ValueType:
    try:
        return ValueType(code)
    except ValueError:
        raise GGUFError(f"{what} has unknown value type {code}") from None


def _read_value(cur: _Cursor, vtype: ValueType, key: str, depth: int = 0) -> Any:
    if vtype == ValueType.STRING:
        return cur.string(f"value of {key!r}")
    if vtype != ValueType.ARRAY:
        v = cur.scalar(SCALAR_FORMATS[vtype], f"value of {key!r}")
        return bool(v) if vtype == ValueType.BOOL else v
    if depth >= MAX_ARRAY_DEPTH:
        raise GGUFError(f"metadata {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
    etype = _value_type(cur.u32(f"array type of {key!r}"), f"array {key!r}")
    count = cur.u64(f"array length of {key!r}")
    if etype == ValueType.STRING or etype == ValueType.ARRAY:
        # each element takes at least 8 bytes (its length or its header)
        cur.need(count * 8, f"array {key!r} of {count} elements")
        if etype == ValueType.STRING:
            return cur.string_array(count, key)
        return [_read_value(cur, etype, key, depth + 1) for _ in range(count)]
    dtype = np.dtype(SCALAR_DTYPES[etype])
    nbytes = count * dtype.itemsize
    cur.need(nbytes, f"array {key!r} of {count} elements")
    if count == 0:  # some numpy versions refuse an offset at the very end of the buffer
        arr = np.empty(0, dtype=dtype)
    else:
        arr = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos)
    cur.pos += nbytes
    return arr.astype(bool) if etype == ValueType.BOOL else arr


class GGUFFile:
    """A memory-mapped, validated GGUF file.

    ``metadata`` maps keys to Python values (str, int, float, bool), numpy arrays
    (arrays of numbers) or lists (arrays of strings). ``tensors`` maps GGUF tensor
    names to :class:`TensorInfo`. Tensor data is read with :meth:`raw` or
    :meth:`array`, both zero-copy views of the mapping.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            # a FIFO or a device would block open() or has no size: refuse all but plain files
            mode = os.stat(self.path).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise GGUFError(f"{self.path} is not a regular file, not a GGUF file")
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size == 0:
                    raise GGUFError(f"{self.path} is empty, not a GGUF file")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise GGUFError(f"no such file: {self.path}") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path} is a directory, not a GGUF file") from None
        except PermissionError:
            raise GGUFError(f"permission denied reading {self.path}") from None
        except (OSError, ValueError) as e:  # not a directory, name too long, unmappable file...
            raise GGUFError(f"cannot open {self.path} as a GGUF file: {e}") from None
        self.data = np.frombuffer(self._mmap, dtype=np.uint8)  # (file_size,) zero-copy
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(memoryview(self._mmap))

    # -- parsing ---------------------------------------------------------------
    def _parse(self, buf: memoryview) -> None:
        cur = _Cursor(buf, self.file_size)
        cur.need(4, "magic")
        magic = bytes(buf[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(
                f"{self.path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})"
            )
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
            if swapped in SUPPORTED_VERSIONS:
                raise GGUFError(
                    f"{self.path} is a big-endian GGUF (version {swapped}); cpullm reads "
                    f"little-endian files only"
                )
            raise GGUFError(
                f"GGUF version {self.version} is not supported (supported: {SUPPORTED_VERSIONS})"
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # a key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
        # at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset)
        if n_kv * 13 > self.file_size - cur.pos:
            raise GGUFError(
                f"file is truncated or corrupt: metadata count {n_kv} cannot fit in a "
                f"{self.file_size}-byte file"
            )
        if n_tensors * 32 > self.file_size - cur.pos:
            raise GGUFError(
                f"file is truncated or corrupt: tensor count {n_tensors} cannot fit in a "
                f"{self.file_size}-byte file"
            )

        for i in range(n_kv):
            key = cur.string(f"key of metadata entry {i}", _MAX_KEY_LEN)
            vtype = _value_type(cur.u32(f"type of {key!r}"), f"metadata {key!r}")
            if key in self.metadata:
                raise GGUFError(f"metadata key {key!r} appears twice")
            self.metadata[key] = _read_value(cur, vtype, key)

        self.alignment = self._alignment()
        infos = [self._read_tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self._place_tensors(infos)

    def _alignment(self) -> int:
        a = self.metadata.get(Keys.ALIGNMENT, DEFAULT_ALIGNMENT)
        if isinstance(a, bool) or not isinstance(a, int):
            raise GGUFError(
                f"{Keys.ALIGNMENT} must be an integer, got {type(a).__name__} {repr(a)[:40]}"
            )
        if a <= 0 or a & (a - 1) or a > MAX_ALIGNMENT:
            raise GGUFError(
                f"{Keys.ALIGNMENT} = {a} is not a power of two between 1 and {MAX_ALIGNMENT}"
            )
        return a

    def _read_tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string(f"name of tensor {i}", _MAX_NAME_LEN)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (allowed: 1 to {MAX_DIMS})")
        dims = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        type_id = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"data offset of tensor {name!r}")
        return name, dims, type_id, offset

    def _place_tensors(self, infos: list[tuple[str, tuple[int, ...], int, int]]) -> None:
        data_size = self.file_size - self.data_offset
        for name, dims, type_id, rel in infos:
            if name in self.tensors:
                raise GGUFError(f"tensor {name!r} appears twice")
            try:
                qtype = GGMLType(type_id)
            except ValueError:
                raise GGUFError(
                    f"tensor {name!r} has type {type_name(type_id)}, which cpullm does not support "
                    f"(supported: {', '.join(t.name for t in GGMLType)})"
                ) from None
            if any(d <= 0 for d in dims):
                raise GGUFError(f"tensor {name!r} has a zero dimension: {list(dims)}")
            if any(d > _INT64_MAX for d in dims):
                raise GGUFError(
                    f"tensor {name!r} has a dimension larger than int64 allows: {list(dims)}"
                )
            bs, ts = BLOCK_LAYOUT[qtype]
            if dims[0] % bs:
                raise GGUFError(
                    f"tensor {name!r}: row length {dims[0]} is not a multiple of the "
                    f"{qtype.name} block size {bs}"
                )
            n = 1
            for d in dims:
                n *= d
            if n > _INT64_MAX:
                raise GGUFError(
                    f"tensor {name!r} has {n} elements (dims {list(dims)}), more than int64 allows"
                )
            nbytes = n // bs * ts
            if rel % self.alignment:
                raise GGUFError(
                    f"tensor {name!r}: data offset {rel} is not aligned to {self.alignment}"
                )
            if rel + nbytes > data_size:
                raise GGUFError(
                    f"file is truncated or corrupt: tensor {name!r} needs bytes "
                    f"{rel}..{rel + nbytes} of the data section, which has "
                    f"{max(data_size, 0)} bytes"
                )
            self.tensors[name] = TensorInfo(name, dims, qtype, self.data_offset + rel, nbytes)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
            if start_b < end_a:
                raise GGUFError(f"tensors {name_a!r} and {name_b!r} overlap in the file")

    # -- access ----------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path.name} has no tensor {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 view of shape (rows, row_bytes)."""
        t = self.info(name)
        view = self.data[t.offset : t.offset + t.nbytes]
        return view.reshape(-1, t.nbytes // (t.n_elements // t.dims[0]))

    def array(self, name: str) -> np.ndarray:
        """F32/F16 tensors as a typed view in numpy shape; BF16 as uint16; block types raw."""
        t = self.info(name)
        view = self.data[t.offset : t.offset + t.nbytes]
        if t.qtype == GGMLType.F32:
            return view.view(np.float32).reshape(t.shape)
        if t.qtype == GGMLType.F16:
            return view.view(np.float16).reshape(t.shape)
        if t.qtype == GGMLType.BF16:
            return view.view(np.uint16).reshape(t.shape)
        return self.raw(name)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        """Drop this object's references to the mapping; it is unmapped once no view is left."""
        self.data = None  # type: ignore[assignment]
        self._mmap = None  # type: ignore[assignment]

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, "
            f"{len(self.tensors)} tensors)"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a GGUF file (validated like a full open)."""
    return GGUFFile(path).metadata
