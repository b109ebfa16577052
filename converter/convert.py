"""safetensors checkpoint -> GGUF, streaming, in bounded memory.

1. Open the checkpoint (``sources``): layout, parameters, tensor index from file headers.
2. Plan: every GGUF tensor, its source tensor, shape check, output type (``recipes``).
3. Write metadata (config + tokenizer) and all tensor infos, then the header.
4. Convert and write one tensor at a time, in row chunks of at most ``CHUNK_ELEMENTS``
   (q/k of Hugging Face checkpoints are read whole, to un-permute them; they are small).
5. ``OUT.partial`` is renamed to ``OUT`` only at the end; any error or Ctrl-C deletes it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter import names
from converter.errors import OutputError, SourceError, UnsupportedError
from converter.recipes import FILE_TYPE, RECIPES, tensor_type
from converter.sources import (
    DTYPE_SIZES,
    Checkpoint,
    TensorReader,
    TensorRef,
    check_shape,
)
from converter.tokenizers import tokenizer_metadata
from cpullm import quants
from cpullm.gguf.constants import GGMLType, Keys, ValueType
from cpullm.gguf.writer import GGUFWriter

CHUNK_ELEMENTS = 1 << 23  # 8 Mi elements (32 MiB as float32) per conversion step
ARCH = "llama"


@dataclass
class PlanItem:
    name: str  # GGUF name
    ref: TensorRef
    shape: tuple[int, ...]
    qtype: GGMLType
    unpermute_heads: int = 0  # HF q/k: un-permute with this many heads


@dataclass
class TypeStats:
    tensors: int = 0
    params: int = 0
    nbytes: int = 0
    errors: list[float] = field(default_factory=list)


@dataclass
class Summary:
    path: Path
    tensors: int
    file_size: int
    params: int
    seconds: float
    input_bytes: int
    by_type: dict[str, TypeStats]
    tokenizer: str | None

    @property
    def bits_per_weight(self) -> float:
        data = sum(s.nbytes for s in self.by_type.values())
        return 8 * data / max(self.params, 1)

    def format(self) -> str:
        lines = [
            f"wrote {self.path}: {self.tensors} tensors, {self.params:,} parameters, "
            f"{self.file_size / 2**20:,.1f} MiB, {self.bits_per_weight:.2f} bits/weight",
            f"read {self.input_bytes / 1e6:,.1f} MB in {self.seconds:.1f} s "
            f"({self.input_bytes / 1e6 / max(self.seconds, 1e-9):.1f} MB/s)",
            f"tokenizer: {self.tokenizer or 'none found (the file has no vocabulary)'}",
            "type   tensors   parameters   rel. error mean / max",
        ]
        for t, s in sorted(self.by_type.items()):
            e = np.asarray(s.errors or [0.0])
            lines.append(f"{t:<6} {s.tensors:>7} {s.params:>12,}   {e.mean():.2e} / {e.max():.2e}")
        return "\n".join(lines)


class Progress:
    """One status line on stderr: tensors, MB read, rate, ETA (updated in place on a tty)."""

    def __init__(self, n_tensors: int, total_bytes: int, stream=None) -> None:
        self.n, self.total = n_tensors, max(total_bytes, 1)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last = time.monotonic()
        self.done_bytes = 0

    def update(self, i: int, name: str, nbytes: int, final: bool = False) -> None:
        self.done_bytes += nbytes
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        el = now - self.t0
        rate = self.done_bytes / max(el, 1e-9)
        eta = (self.total - self.done_bytes) / rate if rate > 0 else 0.0
        frac = self.done_bytes / self.total
        bar = "#" * int(frac * 20)
        line = (f"[{bar:<20}] {i}/{self.n} tensors  {self.done_bytes / 1e6:,.1f}/"
                f"{self.total / 1e6:,.1f} MB  {rate / 1e6:.1f} MB/s  ETA {int(eta) // 60}:"
                f"{int(eta) % 60:02d}  {name}")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def plan(ck: Checkpoint, recipe: str) -> tuple[list[PlanItem], bool]:
    """The tensors to write (in order) and whether the embeddings are tied."""
    p = ck.params
    by_gguf: dict[str, TensorRef] = {}
    for src, ref in ck.tensors.items():
        try:
            g = names.gguf_name(src, ck.layout)
        except KeyError:
            raise UnsupportedError(
                f"unexpected tensor {src!r} in {ref.file.name}: not part of a llama/Mistral "
                "model the converter knows"
            ) from None
        if g is not None:
            by_gguf[g] = ref
    tied = p.tied or "output.weight" not in by_gguf
    if tied != p.tied:
        from dataclasses import replace

        p = replace(p, tied=tied)
    items: list[PlanItem] = []
    for g, shape in names.expected_tensors(p):
        ref = by_gguf.get(g)
        if ref is None:
            raise SourceError(f"missing tensor for {g} in {ck.root} ({ck.layout} layout)")
        check_shape(ref, shape, g)
        if ref.dtype not in DTYPE_SIZES:
            raise UnsupportedError(
                f"unsupported dtype {ref.dtype} of tensor {ref.name!r} ({ref.file.name}); "
                f"supported: {', '.join(DTYPE_SIZES)}"
            )
        heads = 0
        if ck.layout == "hf" and g.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = p.n_heads if ".attn_q." in g else p.n_kv_heads
        items.append(PlanItem(g, ref, shape, tensor_type(recipe, g, shape, tied), heads))
    return items, tied


def model_metadata(ck: Checkpoint, recipe: str, tied: bool, name: str | None) -> dict[str, Any]:
    p = ck.params
    a = ARCH
    md: dict[str, Any] = {
        Keys.ARCHITECTURE: a,
        Keys.NAME: name or p.name or "model",
        Keys.FILE_TYPE: FILE_TYPE[recipe],
        Keys.QUANT_VERSION: 2,
        Keys.CONTEXT_LENGTH.format(arch=a): p.context_length,
        Keys.EMBEDDING_LENGTH.format(arch=a): p.dim,
        Keys.BLOCK_COUNT.format(arch=a): p.n_layers,
        Keys.FEED_FORWARD_LENGTH.format(arch=a): p.ffn_dim,
        Keys.HEAD_COUNT.format(arch=a): p.n_heads,
        Keys.HEAD_COUNT_KV.format(arch=a): p.n_kv_heads,
        Keys.ROPE_FREQ_BASE.format(arch=a): float(p.rope_theta),
        Keys.RMS_EPS.format(arch=a): float(p.rms_eps),
        Keys.ROPE_DIMENSION_COUNT.format(arch=a): p.head_dim,
        Keys.VOCAB_SIZE.format(arch=a): p.vocab_size,
    }
    if p.head_dim * p.n_heads != p.dim:
        md[Keys.KEY_LENGTH.format(arch=a)] = p.head_dim
        md[Keys.VALUE_LENGTH.format(arch=a)] = p.head_dim
    if p.sliding_window:
        md[Keys.SLIDING_WINDOW.format(arch=a)] = int(p.sliding_window)
    return md


def _convert_tensor(reader: TensorReader, it: PlanItem, stats: TypeStats,
                    on_chunk: Callable[[int], None]) -> np.ndarray:
    rows = it.shape[0]
    cols = math.prod(it.shape[1:]) if len(it.shape) > 1 else 1
    out = np.empty(quants.nbytes_for(it.shape, it.qtype), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    if it.unpermute_heads or len(it.shape) == 1:
        step = rows
    err2 = ref2 = 0.0
    pos = 0
    itemsize = DTYPE_SIZES[it.ref.dtype]
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x = reader.read(it.ref, None if step == rows else r0, None if step == rows else r1)
        if it.unpermute_heads:
            x = names.unpermute(x, it.unpermute_heads)
        if not np.isfinite(x).all():
            raise SourceError(f"tensor {it.ref.name!r} holds NaN or infinite values")
        raw = quants.quantize(x, it.qtype).reshape(-1)
        out[pos : pos + raw.size] = raw
        pos += raw.size
        if it.qtype != GGMLType.F32:
            xr = x.reshape(-1)
            d = quants.dequantize(raw, it.qtype) - xr
            err2 += float(np.dot(d, d))
            ref2 += float(np.dot(xr, xr))
        on_chunk((r1 - r0) * cols * itemsize)
    stats.errors.append(math.sqrt(err2 / ref2) if ref2 > 0 else 0.0)
    return out


def _check_output(out: Path, src: Path) -> None:
    if out.exists() and out.is_dir():
        raise OutputError(f"output path {out} is a folder; give a file name like model.gguf")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output path {out} is not writable: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output path {out} is not writable (no write permission on {parent})")
    if out.resolve().parent == src.resolve() and out.suffix == ".safetensors":
        raise OutputError(f"refusing to write over the checkpoint's own file {out}")


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    recipe: str = "q8_0",
    *,
    layout: str | None = None,
    name: str | None = None,
    progress: bool | Progress = True,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Convert the checkpoint folder ``src`` into the GGUF file ``out`` (see module doc)."""
    if recipe not in RECIPES:
        raise UnsupportedError(f"unknown type {recipe!r}; choose one of {', '.join(RECIPES)}")
    src, out = Path(src), Path(out)
    t0 = time.monotonic()
    ck = Checkpoint.open(src, layout)
    items, tied = plan(ck, recipe)
    _check_output(out, src)
    md = model_metadata(ck, recipe, tied, name)
    tok_md, tok_src = tokenizer_metadata(src, ck.params.vocab_size, ck.params.bos_id,
                                         ck.params.eos_id)
    md.update(tok_md)
    if log and tok_src is None:
        log("warning: no tokenizer file found (tekken.json, tokenizer.json, tokenizer.model); "
            "the GGUF will have no vocabulary")
    total_in = sum(it.ref.nbytes for it in items)
    prog = progress if isinstance(progress, Progress) else (
        Progress(len(items), total_in) if progress else None)

    w = GGUFWriter(out)
    stats: dict[str, TypeStats] = {}
    try:
        for k, v in md.items():
            vtype = ValueType.FLOAT32 if isinstance(v, float) else None
            w.add(k, v, vtype)
        for it in items:
            w.add_tensor_info(it.name, it.shape, it.qtype)
        try:
            w.write_header()
        except OSError as e:
            raise OutputError(f"cannot write {w.partial}: {e.strerror or e}") from None
        with TensorReader() as reader:
            for i, it in enumerate(items, 1):
                s = stats.setdefault(it.qtype.name, TypeStats())
                cb = (lambda nb, i=i, it=it: prog.update(i, it.name, nb)) if prog else (
                    lambda nb: None)
                data = _convert_tensor(reader, it, s, cb)
                s.tensors += 1
                s.params += math.prod(it.shape)
                s.nbytes += data.size
                try:
                    w.write_tensor_data(it.name, data)
                except OSError as e:
                    raise OutputError(f"cannot write {w.partial}: {e.strerror or e}") from None
                del data
        if prog:
            prog.update(len(items), "done", 0, final=True)
        try:
            path = w.finish()
        except OSError as e:
            raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        w.abort()
        raise
    return Summary(
        path=path,
        tensors=len(items),
        file_size=path.stat().st_size,
        params=sum(s.params for s in stats.values()),
        seconds=time.monotonic() - t0,
        input_bytes=total_in,
        by_type=stats,
        tokenizer=tok_src,
    )
