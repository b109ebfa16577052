"""Hugging Face and Mistral native tensor names -> GGUF names, the tensors a llama model
needs (with their shapes, in the order the converter writes them), and the q/k
un-permutation of Hugging Face weights.

Hugging Face's llama/mistral checkpoints store q and k rows permuted so that RoPE rotates
the two halves of each head (``rotate_half``); GGUF (like Meta's and Mistral's own weights)
rotates adjacent pairs. :func:`unpermute` undoes the HF permutation, exactly as llama.cpp's
``convert_hf_to_gguf.py`` does; native Mistral weights are already in GGUF's order.
"""

from __future__ import annotations

import re

import numpy as np

from converter.sources import ModelParams

_HF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_NATIVE_GLOBAL = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_NATIVE_LAYER = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w3": "ffn_up",
    "feed_forward.w2": "ffn_down",
}
_HF_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
_NATIVE_RE = re.compile(r"layers\.(\d+)\.(.+)\.weight")
# tensors some checkpoints carry that the model does not need
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq")

LAYER_ORDER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
               "ffn_gate", "ffn_up", "ffn_down")


def gguf_name(src: str, layout: str) -> str | None:
    """GGUF name of checkpoint tensor ``src``; None for tensors to skip; raises KeyError
    for names the converter does not know."""
    if _IGNORED.fullmatch(src):
        return None
    glob, layer, rx = (
        (_HF_GLOBAL, _HF_LAYER, _HF_RE) if layout == "hf" else (_NATIVE_GLOBAL, _NATIVE_LAYER,
                                                                _NATIVE_RE)
    )
    if src in glob:
        return glob[src]
    m = rx.fullmatch(src)
    if m and m.group(2) in layer:
        return f"blk.{int(m.group(1))}.{layer[m.group(2)]}.weight"
    raise KeyError(src)


def expected_tensors(p: ModelParams) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape) of every tensor, in the order they are written."""
    q, kv = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    shapes = {
        "attn_norm": (p.dim,), "attn_q": (q, p.dim), "attn_k": (kv, p.dim),
        "attn_v": (kv, p.dim), "attn_output": (p.dim, q), "ffn_norm": (p.dim,),
        "ffn_gate": (p.ffn_dim, p.dim), "ffn_up": (p.ffn_dim, p.dim),
        "ffn_down": (p.dim, p.ffn_dim),
    }
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (p.vocab_size, p.dim))]
    for i in range(p.n_layers):
        out += [(f"blk.{i}.{k}.weight", shapes[k]) for k in LAYER_ORDER]
    out.append(("output_norm.weight", (p.dim,)))
    if not p.tied:
        out.append(("output.weight", (p.vocab_size, p.dim)))
    return out


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF (rotate-half) q/k rows -> GGUF (adjacent-pair) rows; ``n_heads`` is the head count
    of this projection (kv heads for k). llama.cpp's ``LlamaModel.permute``."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`unpermute` (GGUF/native -> HF), used to write HF test checkpoints."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )
