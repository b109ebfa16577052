"""Tiny random llama models written as real GGUF files, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpullm import quants
from cpullm.gguf import GGMLType, ValueType, write_gguf

QUANTIZED = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


def make_tiny_gguf(
    path: str | Path,
    qtype: GGMLType = GGMLType.Q8_0,
    *,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    ffn_dim: int = 96,
    vocab: int = 128,
    context_length: int = 64,
    rope_dim: int | None = None,
    rope_theta: float = 10000.0,
    sliding_window: int = 0,
    tied: bool = False,
    head_type: GGMLType | None = None,
    seed: int = 0,
) -> Path:
    """Write a random llama model; 2-D weights in ``qtype``, norms F32.

    Returns the path. Weight scales are chosen so activations stay O(1) through the
    layers (random-init style), which keeps logits well conditioned."""
    rng = np.random.default_rng(seed)
    hd = head_dim or dim // n_heads
    md = {
        "general.architecture": "llama",
        "general.name": "tiny-random",
        "llama.context_length": context_length,
        "llama.embedding_length": dim,
        "llama.block_count": n_layers,
        "llama.feed_forward_length": ffn_dim,
        "llama.attention.head_count": n_heads,
        "llama.attention.head_count_kv": n_kv_heads,
        "llama.rope.freq_base": rope_theta,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.vocab_size": vocab,
    }
    if head_dim is not None:
        md["llama.attention.key_length"] = hd
        md["llama.attention.value_length"] = hd
    if rope_dim is not None:
        md["llama.rope.dimension_count"] = rope_dim
    if sliding_window:
        md["llama.attention.sliding_window"] = sliding_window
    tensors: dict = {}

    def mat(name: str, rows: int, cols: int, t: GGMLType, scale: float) -> None:
        w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        tensors[name] = (t, (rows, cols), quants.quantize(w, t))

    def vec(name: str, n: int) -> None:
        v = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        tensors[name] = (GGMLType.F32, (n,), v.view(np.uint8))

    mat("token_embd.weight", vocab, dim, qtype, 1.0)
    for i in range(n_layers):
        p = f"blk.{i}"
        vec(f"{p}.attn_norm.weight", dim)
        mat(f"{p}.attn_q.weight", n_heads * hd, dim, qtype, dim**-0.5)
        mat(f"{p}.attn_k.weight", n_kv_heads * hd, dim, qtype, dim**-0.5)
        mat(f"{p}.attn_v.weight", n_kv_heads * hd, dim, qtype, dim**-0.5)
        mat(f"{p}.attn_output.weight", dim, n_heads * hd, qtype, (n_heads * hd) ** -0.5)
        vec(f"{p}.ffn_norm.weight", dim)
        mat(f"{p}.ffn_gate.weight", ffn_dim, dim, qtype, dim**-0.5)
        mat(f"{p}.ffn_up.weight", ffn_dim, dim, qtype, dim**-0.5)
        mat(f"{p}.ffn_down.weight", dim, ffn_dim, qtype, ffn_dim**-0.5)
    vec("output_norm.weight", dim)
    if not tied:
        mat("output.weight", vocab, dim, head_type or qtype, dim**-0.5 * 4)
    types = {"llama.rope.freq_base": ValueType.FLOAT32}
    return write_gguf(path, md, tensors, types)


def make_small_gguf(path: str | Path, seed: int = 1, extra: dict | None = None) -> Path:
    """A file of a few KB holding every metadata value kind and every tensor type in 1-D
    to 3-D shapes (for exhaustive truncation and byte-mutation tests)."""
    rng = np.random.default_rng(seed)
    meta = {
        "general.architecture": "llama",
        **(extra or {}),
        "a.u32": 7,
        "a.f64": 2.5,
        "a.bool": True,
        "a.ints": np.array([1, 2, 3], dtype=np.int32),
        "a.floats": np.array([0.5, 1.5], dtype=np.float32),
        "a.strs": ["ab", "", "c✓"],
        "a.nested": [[1, 2], [3]],
    }
    shapes = {
        GGMLType.F32: (3,),
        GGMLType.F16: (2, 3),
        GGMLType.BF16: (2, 1, 2),
        GGMLType.Q8_0: (32,),
        GGMLType.Q4_0: (2, 32),
        GGMLType.Q4_1: (1, 1, 32),
    }
    tensors = {
        f"t.{q.name}": (q, s, quants.quantize(rng.standard_normal(s).astype(np.float32), q))
        for q, s in shapes.items()
    }
    return write_gguf(path, meta, tensors, types={"a.f64": ValueType.FLOAT64})
