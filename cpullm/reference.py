"""Plain-numpy twins of the numba kernels, and a float64 forward pass.

These are the executable specification the kernels are tested against: slow,
short, obviously right. Nothing in the runtime imports this module.
"""

from __future__ import annotations

import numpy as np

from cpullm import quants
from cpullm.config import ModelConfig
from cpullm.gguf.constants import GGMLType
from cpullm.gguf.reader import GGUFFile

QUANTIZED = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


def q8_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``quantize_rows_q8``: x (T, n) -> q (T, n) int8, d and s (T, n/32)."""
    xb = x.reshape(x.shape[0], -1, 32)
    d = np.abs(xb).max(axis=-1) / x.dtype.type(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, x.dtype.type(1.0) / d, 0).astype(x.dtype)
    v = xb * inv[..., None]
    q = np.where(v >= 0, np.floor(v + 0.5), -np.floor(0.5 - v)).astype(np.int8)
    s = d * q.astype(np.int32).sum(axis=-1)
    return q.reshape(x.shape), d.astype(x.dtype), s.astype(x.dtype)


def rounding_margin(x: np.ndarray) -> np.ndarray:
    """Per row of x (T, n): how close any x/d came to a rounding tie (k + 0.5), in units
    of the int8 step. Near 0 means a float32 and a float64 computation of the same
    value may round to different int8s."""
    x = x.astype(np.float32)
    xb = x.reshape(x.shape[0], -1, 32)
    d = np.abs(xb).max(axis=-1) / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, 0).astype(np.float32)
    v = np.abs(xb * inv[..., None])
    return np.abs(v - np.floor(v) - 0.5).min(axis=(1, 2))


def dequant_q8_activations(x: np.ndarray, margins: list | None = None) -> np.ndarray:
    """x as the quantized matmul sees it: q * d per block, quantized in float32 as the
    kernel does (so both round the same values), returned as float64. ``margins``
    collects :func:`rounding_margin` of each call."""
    if margins is not None:
        margins.append(rounding_margin(x))
    q, d, _ = q8_activations(x.astype(np.float32))
    qd = q.reshape(x.shape[0], -1, 32) * d[..., None].astype(np.float64)
    return qd.reshape(x.shape)


def weight(f: GGUFFile, name: str) -> np.ndarray:
    """Dequantized weight in numpy shape, float64."""
    t = f.info(name)
    w = quants.dequantize_rows(f.raw(name).reshape(-1), t.qtype, t.dims[0])
    return w.reshape(t.shape).astype(np.float64)


def linear(w: np.ndarray, qtype: GGMLType, x: np.ndarray,
           margins: list | None = None) -> np.ndarray:
    """Twin of ``matmul``: x (T, cols) -> (T, rows); int8 activations for block types."""
    if qtype in QUANTIZED:
        x = dequant_q8_activations(x, margins)
    return x @ w.T


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, head_dim: int, rope_dim: int,
         theta: float) -> np.ndarray:
    """x (T, n_heads*head_dim): adjacent pairs rotated (GGUF llama convention)."""
    T = x.shape[0]
    xh = x.reshape(T, -1, head_dim).copy()
    half = rope_dim // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2 / rope_dim)
    ang = positions[:, None] * inv_freq[None, :]  # (T, half)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = xh[..., 0:rope_dim:2].copy(), xh[..., 1:rope_dim:2].copy()
    xh[..., 0:rope_dim:2] = a * c - b * s
    xh[..., 1:rope_dim:2] = a * s + b * c
    return xh.reshape(x.shape)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray,
              key_positions: np.ndarray, n_heads: int, n_kv: int, head_dim: int,
              window: int = 0) -> np.ndarray:
    """Causal GQA attention. q (T, H*hd); k, v (S, KV*hd) at key_positions (S,)."""
    T, S = q.shape[0], k.shape[0]
    qh = q.reshape(T, n_heads, head_dim)
    group = n_heads // n_kv
    kh = np.repeat(k.reshape(S, n_kv, head_dim), group, axis=1)
    vh = np.repeat(v.reshape(S, n_kv, head_dim), group, axis=1)
    scores = np.einsum("thd,shd->hts", qh, kh) / np.sqrt(head_dim)
    visible = key_positions[None, :] <= positions[:, None]
    if window > 0:
        visible &= key_positions[None, :] > positions[:, None] - window
    scores = np.where(visible[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, vh).reshape(T, n_heads * head_dim)


def swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    return g / (1.0 + np.exp(-g)) * u


def forward(f: GGUFFile, tokens: list[int], margins: list | None = None) -> np.ndarray:
    """float64 logits (T, vocab) for ``tokens`` at positions 0..T-1.

    ``margins``, when given, collects the rounding margin (T,) of every int8
    activation quantization (see :func:`rounding_margin`)."""
    c = ModelConfig.from_metadata(f.metadata, vocab_size=f.info("token_embd.weight").shape[0])
    pos = np.arange(len(tokens), dtype=np.float64)

    def lin(name: str, x: np.ndarray) -> np.ndarray:
        return linear(weight(f, name), f.info(name).qtype, x, margins)

    def vec(name: str) -> np.ndarray:
        return weight(f, name)

    x = weight(f, "token_embd.weight")[np.asarray(tokens)]
    for i in range(c.n_layers):
        p = f"blk.{i}."
        h = rmsnorm(x, vec(p + "attn_norm.weight"), c.rms_eps)
        q = rope(lin(p + "attn_q.weight", h), pos, c.head_dim, c.rope_dim, c.rope_theta)
        k = rope(lin(p + "attn_k.weight", h), pos, c.head_dim, c.rope_dim, c.rope_theta)
        v = lin(p + "attn_v.weight", h)
        a = attention(q, k, v, pos, pos, c.n_heads, c.n_kv_heads, c.head_dim, c.sliding_window)
        x = x + lin(p + "attn_output.weight", a)
        h = rmsnorm(x, vec(p + "ffn_norm.weight"), c.rms_eps)
        g = swiglu(lin(p + "ffn_gate.weight", h), lin(p + "ffn_up.weight", h))
        x = x + lin(p + "ffn_down.weight", g)
    h = rmsnorm(x, vec("output_norm.weight"), c.rms_eps)
    head = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    return lin(head, h)


def decode_sliding(f: GGUFFile, tokens: list[int], capacity: int, n_keep: int,
                   margins: list | None = None) -> np.ndarray:
    """float64 logits (T, vocab), one token at a time, with the drop-and-shift policy.

    The cache holds at most ``capacity`` tokens. When a new token finds it full, half
    of the tokens after the first ``n_keep`` (at least one) are dropped; later keys
    are turned back by the number dropped (RoPE by a negative position) and every
    later token's position decreases by the same amount."""
    c = ModelConfig.from_metadata(f.metadata, vocab_size=f.info("token_embd.weight").shape[0])
    W = {n: weight(f, n) for n in f.tensors}
    head = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    ks: list[np.ndarray] = [np.zeros((0, c.kv_dim)) for _ in range(c.n_layers)]
    vs: list[np.ndarray] = [np.zeros((0, c.kv_dim)) for _ in range(c.n_layers)]

    def lin(name: str, x: np.ndarray) -> np.ndarray:
        return linear(W[name], f.info(name).qtype, x, margins)

    out = []
    for tok in tokens:
        n = len(ks[0])
        if n == capacity:
            drop = max(1, (n - n_keep) // 2)
            for i in range(c.n_layers):
                moved = rope(ks[i][n_keep + drop :], np.full(n - n_keep - drop, -float(drop)),
                             c.head_dim, c.rope_dim, c.rope_theta)
                ks[i] = np.concatenate([ks[i][:n_keep], moved])
                vs[i] = np.concatenate([vs[i][:n_keep], vs[i][n_keep + drop :]])
            n = len(ks[0])
        pos = np.array([float(n)])
        x = W["token_embd.weight"][[tok]]
        for i in range(c.n_layers):
            p = f"blk.{i}."
            h = rmsnorm(x, W[p + "attn_norm.weight"], c.rms_eps)
            q = rope(lin(p + "attn_q.weight", h), pos, c.head_dim, c.rope_dim, c.rope_theta)
            k = rope(lin(p + "attn_k.weight", h), pos, c.head_dim, c.rope_dim, c.rope_theta)
            ks[i] = np.concatenate([ks[i], k])
            vs[i] = np.concatenate([vs[i], lin(p + "attn_v.weight", h)])
            key_pos = np.arange(n + 1, dtype=np.float64)
            a = attention(q, ks[i], vs[i], pos, key_pos, c.n_heads, c.n_kv_heads, c.head_dim)
            x = x + lin(p + "attn_output.weight", a)
            h = rmsnorm(x, W[p + "ffn_norm.weight"], c.rms_eps)
            g = swiglu(lin(p + "ffn_gate.weight", h), lin(p + "ffn_up.weight", h))
            x = x + lin(p + "ffn_down.weight", g)
        out.append(lin(head, rmsnorm(x, W["output_norm.weight"], c.rms_eps))[0])
    return np.array(out)
