"""GGUF v3 writer with explicit phases.

    w = GGUFWriter(path)                    # phase: kv
    w.add("general.architecture", "llama")  # ... more key/values
    w.add_tensor_info("token_embd.weight", (vocab, dim), GGMLType.Q8_0)   # phase: infos
    w.write_header()                        # header + kv + infos hit the disk
    w.write_tensor_data("token_embd.weight", raw_bytes)                 # phase: data, in order
    w.finish()                              # OUT.partial renamed to OUT

Calls out of order raise. Data goes to ``OUT.partial`` and is renamed only by
``finish()``, so an interrupted write never leaves a file that looks valid.
Tensor data is aligned to ``general.alignment`` (32); no padding follows the last
tensor, so any truncation of a written file is detectable.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpullm.gguf.constants import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    SCALAR_FORMATS,
    GGMLType,
    ValueType,
    row_nbytes,
)

_NUMPY_TO_VTYPE = {
    np.dtype(np.uint8): ValueType.UINT8,
    np.dtype(np.int8): ValueType.INT8,
    np.dtype(np.uint16): ValueType.UINT16,
    np.dtype(np.int16): ValueType.INT16,
    np.dtype(np.uint32): ValueType.UINT32,
    np.dtype(np.int32): ValueType.INT32,
    np.dtype(np.float32): ValueType.FLOAT32,
    np.dtype(np.bool_): ValueType.BOOL,
    np.dtype(np.uint64): ValueType.UINT64,
    np.dtype(np.int64): ValueType.INT64,
    np.dtype(np.float64): ValueType.FLOAT64,
}


def _infer_type(value: Any) -> ValueType:
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(value, (int, np.integer)):
        return ValueType.UINT32 if 0 <= value < 2**32 else ValueType.INT64
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32
    if isinstance(value, str):
        return ValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return ValueType.ARRAY
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(value: Any, vtype: ValueType, item_type: ValueType | None = None) -> bytes:
    if vtype == ValueType.STRING:
        return _pack_string(value)
    if vtype != ValueType.ARRAY:
        return struct.pack(SCALAR_FORMATS[vtype], value)
    if isinstance(value, np.ndarray):
        etype = _NUMPY_TO_VTYPE[value.dtype]
        le = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return struct.pack("<IQ", etype, len(value)) + le.tobytes()
    items = list(value)
    etype = item_type if item_type is not None else (
        _infer_type(items[0]) if items else ValueType.INT32)
    if (item_type is None and etype in (ValueType.UINT32, ValueType.INT64)
            and all(isinstance(v, int) for v in items)):
        etype = ValueType.INT32 if all(-(2**31) <= v < 2**31 for v in items) else ValueType.INT64
    parts = [struct.pack("<IQ", etype, len(items))]
    parts += [_pack_value(v, etype) for v in items]
    return b"".join(parts)


class GGUFWriter:
    """Writes one GGUF v3 file in explicit phases (see module docstring)."""

    def __init__(self, path: str | os.PathLike, alignment: int = DEFAULT_ALIGNMENT) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.alignment = alignment
        self._kv: dict[str, bytes] = {}
        self._infos: list[tuple[str, tuple[int, ...], GGMLType, int, int]] = []
        self._phase = "kv"
        self._next = 0  # index of the next tensor whose data is expected
        self._file = None
        if alignment != DEFAULT_ALIGNMENT:
            self.add("general.alignment", alignment, ValueType.UINT32)

    def _require(self, *phases: str) -> None:
        if self._phase not in phases:
            raise RuntimeError(f"GGUFWriter: call not allowed in phase {self._phase!r}")

    def add(self, key: str, value: Any, vtype: ValueType | None = None,
            item_type: ValueType | None = None) -> None:
        """Add one metadata key/value; the type is inferred unless given. ``item_type``
        sets the element type of a list (needed for an empty one: readers such as
        llama.cpp check that ``tokenizer.ggml.merges`` is an array of strings)."""
        self._require("kv")
        if key in self._kv:
            raise ValueError(f"metadata key {key!r} added twice")
        vtype = _infer_type(value) if vtype is None else ValueType(vtype)
        packed = _pack_value(value, vtype, item_type)
        self._kv[key] = _pack_string(key) + struct.pack("<I", vtype) + packed

    def add_tensor_info(self, name: str, shape: Sequence[int], qtype: GGMLType) -> None:
        """Declare a tensor; ``shape`` is numpy order (last dimension contiguous)."""
        self._require("kv", "infos")
        self._phase = "infos"
        if any(n == name for n, *_ in self._infos):
            raise ValueError(f"tensor {name!r} added twice")
        shape = tuple(int(d) for d in shape)
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= d
        nbytes = n_rows * row_nbytes(GGMLType(qtype), shape[-1])
        offset = 0
        if self._infos:
            _, _, _, prev_off, prev_n = self._infos[-1]
            offset = -(-(prev_off + prev_n) // self.alignment) * self.alignment
        self._infos.append((name, shape, GGMLType(qtype), offset, nbytes))

    def write_header(self) -> None:
        """Write header, metadata and tensor infos to ``OUT.partial``."""
        self._require("kv", "infos")
        self._phase = "data"
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._infos), len(self._kv))]
        parts += list(self._kv.values())
        for name, shape, qtype, offset, _ in self._infos:
            dims = tuple(reversed(shape))
            parts.append(_pack_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims))
            parts.append(struct.pack("<IQ", qtype, offset))
        head = b"".join(parts)
        head += b"\0" * (-len(head) % self.alignment)
        self._data_start = len(head)
        self._file = open(self.partial, "wb")
        self._file.write(head)

    def write_tensor_data(self, name: str, data: np.ndarray | bytes) -> None:
        """Write the next tensor's bytes (tensors are written in declaration order)."""
        self._require("data")
        if self._next >= len(self._infos):
            raise RuntimeError("GGUFWriter: more tensor data than declared tensors")
        exp_name, shape, qtype, offset, nbytes = self._infos[self._next]
        if name != exp_name:
            raise RuntimeError(f"GGUFWriter: expected data of {exp_name!r}, got {name!r}")
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        if len(raw) != nbytes:
            raise ValueError(f"tensor {name!r}: {len(raw)} bytes given, {nbytes} expected")
        assert self._file is not None
        pad = self._data_start + offset - self._file.tell()
        self._file.write(b"\0" * pad)
        self._file.write(raw)
        self._next += 1

    def finish(self) -> Path:
        """Flush, fsync and rename ``OUT.partial`` to ``OUT``."""
        self._require("data")
        if self._next != len(self._infos):
            missing = self._infos[self._next][0]
            raise RuntimeError(f"GGUFWriter: data of tensor {missing!r} was never written")
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        self._phase = "done"
        return self.path

    def abort(self) -> None:
        """Close and delete ``OUT.partial`` (after an error or an interrupt)."""
        if self._file is not None:
            self._file.close()
        self.partial.unlink(missing_ok=True)
        self._phase = "done"


def write_gguf(
    path: str | os.PathLike,
    metadata: dict[str, Any],
    tensors: dict[str, tuple[GGMLType, Sequence[int], np.ndarray]],
    types: dict[str, ValueType] | None = None,
) -> Path:
    """Write a whole GGUF file at once: ``tensors[name] = (qtype, numpy shape, raw bytes)``.

    ``types`` overrides inferred metadata value types per key.
    """
    w = GGUFWriter(path)
    try:
        for k, v in metadata.items():
            w.add(k, v, (types or {}).get(k))
        for name, (qtype, shape, _) in tensors.items():
            w.add_tensor_info(name, shape, qtype)
        w.write_header()
        for name, (_, _, raw) in tensors.items():
            w.write_tensor_data(name, raw)
        return w.finish()
    except BaseException:
        w.abort()
        raise
