"""``Model``: a mapped GGUF file, its config, preallocated run state and the KV cache.

    model = Model.open("smollm2.gguf", n_ctx=2048)
    logits = model.eval([504, 3575, 282])   # prefill; returns the last token's logits
    logits = model.eval([4649])             # decode one more token

Weights are never copied: the compiled forward step reads them straight from the
mapping. All buffers are allocated here, once; ``eval`` allocates nothing per token.

The KV cache has a fixed number of slots; position p lives in slot p % capacity.

* Models with a native sliding window (Mistral 7B v0.1) get a rolling buffer of
  ``window + n_batch - 1`` slots: positions keep growing, memory stays constant, and
  nothing ever has to be dropped.
* Other models get ``n_ctx`` slots. When they are full and ``auto_slide`` is on, the
  oldest tokens after the first ``n_keep`` (the pinned prefix: a system prompt) are
  dropped, the rest move down and their keys are re-rotated to their new positions
  (:func:`cpullm.kernels.ops.shift_kv`), so a conversation goes on in constant memory.
  With ``auto_slide`` off a full context is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cpullm import quants
from cpullm.config import ModelConfig
from cpullm.errors import ConfigError, CpullmError
from cpullm.gguf.constants import GGMLType, Keys
from cpullm.gguf.reader import GGUFFile
from cpullm.kernels import quickload
from cpullm.kernels.forward import LAYER_MATRICES, N_DIMS, forward
from cpullm.kernels.ops import shift_kv
from cpullm.kernels.tables import half_tables

# load these from numba's cache without its 0.1-0.3 s registry refresh (start-up time)
quickload.enable(forward)
quickload.enable(shift_kv)

DEFAULT_BATCH = 64  # prompt tokens per compiled call during prefill
# KV cache element types: f16 is stored as uint16 bit patterns, q8_0 as int8 with one
# float32 scale per 32 values of a row (see kernels.half)
KV_TYPES = {"f16": np.uint16, "f32": np.float32, "q8_0": np.int8}
KV_BYTES_PER_VALUE = {"f16": 2.0, "f32": 4.0, "q8_0": 1.125}


def _check_shape(f: GGUFFile, name: str, shape: tuple[int, ...]) -> None:
    got = f.info(name).shape
    if got != shape:
        raise ConfigError(
            f"tensor {name!r} has shape {list(got)}, but the model config needs {list(shape)}"
        )


class Model:
    """A llama-architecture model ready to run. See the module docstring."""

    def __init__(
        self,
        gguf: GGUFFile,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = DEFAULT_BATCH,
        kv_type: str = "f16",
    ) -> None:
        self.file = gguf
        md = gguf.metadata
        if "token_embd.weight" not in gguf.tensors:
            raise ConfigError(f"{gguf.path.name} has no tensor 'token_embd.weight'")
        vocab = gguf.info("token_embd.weight").shape[0]
        cfg = ModelConfig.from_metadata(md, vocab_size=vocab)
        self.config = cfg
        if n_ctx is not None and n_ctx <= 0:
            raise CpullmError(f"context size must be positive, got {n_ctx}")
        self.n_ctx = min(n_ctx or cfg.context_length, cfg.context_length)
        self.n_batch = max(1, min(n_batch, self.n_ctx))
        w = cfg.sliding_window
        self.rolling = 0 < w < self.n_ctx
        if self.rolling:
            self.capacity = min(self.n_ctx, w + self.n_batch - 1)
            self.n_batch = self.capacity - w + 1
        else:
            self.capacity = self.n_ctx
        if kv_type not in KV_TYPES:
            raise CpullmError(f"KV cache type {kv_type!r} is not one of {', '.join(KV_TYPES)}")
        if kv_type == "q8_0" and cfg.head_dim % 32:
            raise CpullmError(
                f"a q8_0 KV cache needs head_dim to be a multiple of 32 (it is {cfg.head_dim}); "
                f"use f16"
            )
        self.kv_type = kv_type
        self.n_threads = n_threads
        self.auto_slide = False  # drop old tokens when the context is full (chat turns it on)
        self.n_keep = 0  # tokens pinned at the start of the context when sliding
        self.n_dropped = 0  # tokens dropped by sliding since the last reset
        self._validate_and_index()
        self._allocate()
        self.n_past = 0
        self.history: list[int] = []  # the tokens at positions 0 .. n_past-1
        self._tokenizer = None

    @classmethod
    def open(cls, path: str | os.PathLike, **kw) -> Model:
        """Map and validate a GGUF file, then build the model."""
        return cls(GGUFFile(path), **kw)

    # -- set-up ------------------------------------------------------------------
    def _validate_and_index(self) -> None:
        f, c = self.file, self.config
        _check_shape(f, "token_embd.weight", (c.vocab_size, c.dim))
        self.tied = "output.weight" not in f.tensors
        head_name = "token_embd.weight" if self.tied else "output.weight"
        _check_shape(f, head_name, (c.vocab_size, c.dim))
        _check_shape(f, "output_norm.weight", (c.dim,))
        shapes = {
            "attn_q": (c.q_dim, c.dim),
            "attn_k": (c.kv_dim, c.dim),
            "attn_v": (c.kv_dim, c.dim),
            "attn_output": (c.dim, c.q_dim),
            "ffn_gate": (c.ffn_dim, c.dim),
            "ffn_up": (c.ffn_dim, c.dim),
            "ffn_down": (c.dim, c.ffn_dim),
        }
        self.mats = np.zeros((c.n_layers, len(LAYER_MATRICES), 2), dtype=np.int64)
        self.norms = np.zeros((c.n_layers, 2, c.dim), dtype=np.float32)
        for layer in range(c.n_layers):
            for i, m in enumerate(LAYER_MATRICES):
                name = f"blk.{layer}.{m}.weight"
                _check_shape(f, name, shapes[m])
                t = f.info(name)
                self.mats[layer, i] = (t.offset, int(t.qtype))
            for i, m in enumerate(("attn_norm", "ffn_norm")):
                name = f"blk.{layer}.{m}.weight"
                _check_shape(f, name, (c.dim,))
                self.norms[layer, i] = self._vector(name)
        self.out_norm = self._vector("output_norm.weight")
        e = f.info("token_embd.weight")
        h = f.info(head_name)
        self.embd = np.array([e.offset, int(e.qtype)], dtype=np.int64)
        self.head = np.array([h.offset, int(h.qtype)], dtype=np.int64)
        self.weight_types = sorted({f.info(n).qtype.name for n in f.tensors})

    def _vector(self, name: str) -> np.ndarray:
        t = self.file.info(name)
        return quants.dequantize(self.file.raw(name).reshape(-1), t.qtype, t.n_elements)

    def _allocate(self) -> None:
        c, B = self.config, self.n_batch
        self.dims = np.array(
            [c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size,
             c.rope_dim, c.sliding_window],
            dtype=np.int64,
        )
        assert len(self.dims) == N_DIMS
        half = c.rope_dim // 2
        self.inv_freq = c.rope_theta ** (-np.arange(half, dtype=np.float64) * 2 / c.rope_dim)
        self.lut = half_tables()
        f32 = np.float32
        kv_shape = (c.n_layers, c.n_kv_heads, self.capacity, c.head_dim)
        self.k_cache = np.zeros(kv_shape, dtype=KV_TYPES[self.kv_type])
        self.v_cache = np.zeros(kv_shape, dtype=KV_TYPES[self.kv_type])
        # q8_0 block scales; a never-read dummy for the other types
        sc_shape = kv_shape[:3] + (c.head_dim // 32,) if self.kv_type == "q8_0" else (1, 1, 1, 1)
        self.k_scales = np.zeros(sc_shape, dtype=f32)
        self.v_scales = np.zeros(sc_shape, dtype=f32)
        maxcols = max(c.dim, c.q_dim, c.ffn_dim)
        self.x = np.zeros((B, c.dim), f32)
        self.xn = np.zeros((B, c.dim), f32)
        self.qb = np.zeros((B, c.q_dim), f32)
        self.ao = np.zeros((B, c.q_dim), f32)
        self.kb = np.zeros((B, c.kv_dim), f32)
        self.vb = np.zeros((B, c.kv_dim), f32)
        self.gb = np.zeros((B, c.ffn_dim), f32)
        self.ub = np.zeros((B, c.ffn_dim), f32)
        self.xq = np.zeros((B, maxcols), np.int8)
        self.xd = np.zeros((B, maxcols // 32), f32)
        self.xs = np.zeros((B, maxcols // 32), f32)
        B8 = (B + 7) // 8 * 8  # the 8-token tiles' interleaved copy of xq, xd, xs
        self.xi = np.zeros(B8 * maxcols, np.int8)
        self.xdi = np.zeros(B8 * maxcols // 32, f32)
        self.xsi = np.zeros(B8 * maxcols // 32, f32)
        self.att = np.zeros((c.n_heads, self.capacity), f32)
        self.logits = np.zeros((B, c.vocab_size), f32)
        self._tokens = np.zeros(B, np.int64)

    # -- running -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the context (the cache is overwritten lazily)."""
        self.n_past = 0
        self.n_dropped = 0
        self.history.clear()

    def can_rewind(self, n: int) -> bool:
        """Whether the context can be cut back to its first ``n`` tokens without recomputing."""
        if not 0 <= n <= self.n_past:
            return False
        if not self.rolling:
            return True
        # slots hold positions n_past-capacity .. n_past-1; position n needs window-1 before it
        return n - self.config.sliding_window + 1 >= self.n_past - self.capacity

    def rewind(self, n: int) -> None:
        """Keep only the first ``n`` tokens of the context (to re-run a changed suffix)."""
        if not self.can_rewind(n):
            raise CpullmError(f"cannot rewind the context from {self.n_past} to {n} tokens")
        self.n_past = n
        del self.history[n:]

    def slide(self, n_needed: int) -> int:
        """Make room for ``n_needed`` more tokens by dropping the oldest unpinned ones.

        Drops half of the unpinned tokens (at least ``n_needed`` beyond the free slots),
        like llama.cpp's context shift. Returns how many were dropped."""
        free = self.capacity - self.n_past
        if n_needed <= free:
            return 0
        keep = min(self.n_keep, self.n_past)
        movable = self.n_past - keep
        n_discard = min(movable, max(n_needed - free, movable // 2))
        if keep + n_needed > self.capacity or n_discard <= 0:
            raise CpullmError(
                f"{n_needed} tokens do not fit a context of {self.capacity} with {keep} pinned"
            )
        shift_kv(self.k_cache, self.v_cache, self.k_scales, self.v_scales, keep, n_discard,
                 self.n_past, self.config.rope_dim, self.inv_freq, self.lut)
        del self.history[keep : keep + n_discard]
        self.n_past -= n_discard
        self.n_dropped += n_discard
        return n_discard

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``tokens`` to the context and run them.

        Returns the last token's logits (vocab,), or (len(tokens), vocab) with
        ``all_logits``. The returned array is a view of an internal buffer that the
        next call overwrites: copy it to keep it."""
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(toks)
        if n == 0:
            raise CpullmError("eval needs at least one token")
        if toks.min() < 0 or toks.max() >= self.config.vocab_size:
            bad = int(toks[(toks < 0) | (toks >= self.config.vocab_size)][0])
            raise CpullmError(
                f"token id {bad} is outside the vocabulary (0..{self.config.vocab_size - 1})"
            )
        if not self.rolling and self.n_past + n > self.capacity and not self.auto_slide:
            raise CpullmError(
                f"context is full: {self.n_past} + {n} tokens exceed the context size "
                f"{self.capacity}; use a larger --ctx, or enable sliding"
            )
        self._set_threads()
        out = np.empty((n, self.config.vocab_size), np.float32) if all_logits else None
        step = self.n_batch
        if self.auto_slide and not self.rolling:
            step = max(1, min(step, (self.capacity - self.n_keep) // 2))
        for start in range(0, n, step):
            chunk = toks[start : start + step]
            T = len(chunk)
            if not self.rolling and self.n_past + T > self.capacity:
                self.slide(T)
            self._tokens[:T] = chunk
            forward(*self._forward_args(T, all_logits))
            self.n_past += T
            self.history.extend(chunk.tolist())
            if out is not None:
                out[start : start + T] = self.logits[:T]
        return out if out is not None else self.logits[0]

    def _forward_args(self, T: int, all_logits: bool) -> tuple:
        """Arguments of the compiled forward step for ``T`` tokens at ``n_past``."""
        return (
            self._tokens, T, self.n_past, self.file.data, self.lut, self.mats, self.norms,
            self.out_norm, self.embd, self.head, self.dims, np.float32(self.config.rms_eps),
            self.inv_freq, self.k_cache, self.v_cache, self.k_scales, self.v_scales, self.x,
            self.xn, self.qb, self.kb, self.vb, self.ao, self.gb, self.ub, self.xq, self.xd,
            self.xs, self.xi, self.xdi, self.xsi, self.att, self.logits, all_logits,
        )

    def load_kernels(self) -> None:
        """Make the compiled forward step for this model's array types ready without
        running it: loaded from numba's on-disk cache, or compiled (20-60 s) on
        the first run ever. :meth:`eval` does this itself when needed; call it first to
        time or announce the compile."""
        from numba import typeof

        sig = tuple(typeof(a) for a in self._forward_args(1, False))
        if sig not in forward.overloads:
            forward.compile(sig)

    @property
    def kv_bytes(self) -> int:
        """Memory of the KV cache (values and scales)."""
        return (self.k_cache.nbytes + self.v_cache.nbytes + self.k_scales.nbytes
                + self.v_scales.nbytes)

    def _set_threads(self) -> None:
        if self.n_threads:
            import numba

            numba.set_num_threads(min(self.n_threads, numba.config.NUMBA_NUM_THREADS))

    @property
    def tokenizer(self):
        """The tokenizer stored in the file (built on first use)."""
        if self._tokenizer is None:
            from cpullm.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.for_file(self.file)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        """Reuse a tokenizer already built from this file (building one takes ~0.2 s)."""
        self._tokenizer = tok

    @property
    def metadata(self) -> dict:
        return self.file.metadata

    def n_params(self) -> int:
        return sum(t.n_elements for t in self.file.tensors.values())

    def file_type_summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.file.tensors.values():
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return counts


def chat_template(model: Model) -> str | None:
    return model.metadata.get(Keys.CHAT_TEMPLATE)


__all__ = ["Model", "GGMLType"]
