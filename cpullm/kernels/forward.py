"""The whole llama forward step in compiled code: embedding, every layer, the head.

One call processes T tokens at positions pos0 .. pos0+T-1 (T = 1 for decode, a
chunk of the prompt for prefill) and writes their keys/values into the cache.
The Python side only sets up buffers once (see :mod:`cpullm.model`); no Python
code runs per layer.
"""

from __future__ import annotations

import numba as nb

from cpullm.kernels.matmul import dequant_row, matmul
from cpullm.kernels.ops import add_into, attention, rmsnorm, rope, store_kv, swiglu
from cpullm.kernels.quant import interleave8, quantize_rows_q8

# index of each layer matrix in ``mats[layer, i]`` (offset, ggml type)
ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT, FFN_GATE, FFN_UP, FFN_DOWN = range(7)
LAYER_MATRICES = (
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
)  # fmt: skip

# index of each integer in the ``dims`` array
(D_DIM, D_LAYERS, D_HEADS, D_KV_HEADS, D_HEAD_DIM, D_FFN, D_VOCAB, D_ROPE_DIM, D_WINDOW) = range(9)
N_DIMS = 9


@nb.njit(cache=True)
def _linear(data, mats, layer, which, rows, cols, T, xq, xd, xs, xi, xdi, xsi, xf, lut, out):
    matmul(data, mats[layer, which, 0], mats[layer, which, 1], rows, cols, T, xq, xd, xs,
           xi, xdi, xsi, xf, lut, out)


@nb.njit(cache=True)
def _quantize(x, T, n, xq, xd, xs, xi, xdi, xsi):
    """int8 activations of x[:T, :n], also interleaved for the 8-token tiles (T > 1)."""
    quantize_rows_q8(x, T, n, xq, xd, xs)
    if T > 1:
        interleave8(xq, xd, xs, T, n, xi, xdi, xsi)


@nb.njit(cache=True)
def forward(tokens, T, pos0, data, lut, mats, norms, out_norm, embd, head, dims, eps,
            inv_freq, kc, vc, ks, vs, x, xn, qb, kb, vb, ao, gb, ub, xq, xd, xs, xi, xdi, xsi, att,
            logits, all_logits):
    """Run T tokens through the model.

    tokens (>=T,) i64; data (file,) u8; lut (2, 65536) f32; mats (L, 7, 2) i64;
    norms (L, 2, dim) f32 (attn_norm, ffn_norm); out_norm (dim,) f32;
    embd, head (2,) i64 = (offset, ggml type) of token_embd / output;
    dims (N_DIMS,) i64; inv_freq (rope_dim/2,) f64; kc, vc (L, n_kv, ctx, head_dim) f32.
    Scratch, B >= T rows: x, xn (B, dim); qb, ao (B, n_heads*head_dim);
    kb, vb (B, n_kv*head_dim); gb, ub (B, ffn); xq (B, maxcols) i8; xd, xs (B, maxcols/32);
    xi (B8*maxcols,) i8, xdi, xsi (B8*maxcols/32,) f32 with B8 = B rounded up to 8 (the
    interleaved activations of the 8-token tiles);
    att (n_heads, ctx). logits (B, vocab): row t for every token when all_logits,
    else row 0 holds the last token's logits."""
    dim = dims[D_DIM]
    n_heads = dims[D_HEADS]
    n_kv = dims[D_KV_HEADS]
    hd = dims[D_HEAD_DIM]
    ffn = dims[D_FFN]
    qdim = n_heads * hd
    kvdim = n_kv * hd

    for t in range(T):
        dequant_row(data, embd[0], embd[1], dim, tokens[t], lut, x[t])

    for layer in range(dims[D_LAYERS]):
        # attention block
        rmsnorm(x, T, norms[layer, 0], eps, xn)
        _quantize(xn, T, dim, xq, xd, xs, xi, xdi, xsi)
        _linear(data, mats, layer, ATTN_Q, qdim, dim, T, xq, xd, xs, xi, xdi, xsi, xn, lut,
                qb)
        _linear(data, mats, layer, ATTN_K, kvdim, dim, T, xq, xd, xs, xi, xdi, xsi, xn, lut,
                kb)
        _linear(data, mats, layer, ATTN_V, kvdim, dim, T, xq, xd, xs, xi, xdi, xsi, xn, lut,
                vb)
        rope(qb, T, n_heads, hd, dims[D_ROPE_DIM], pos0, inv_freq)
        rope(kb, T, n_kv, hd, dims[D_ROPE_DIM], pos0, inv_freq)
        store_kv(kb, vb, T, layer, pos0, n_kv, hd, kc, vc, ks, vs)
        attention(qb, T, layer, pos0, n_heads, n_kv, hd, dims[D_WINDOW], kc, vc, ks, vs, att,
                  ao, lut)
        _quantize(ao, T, qdim, xq, xd, xs, xi, xdi, xsi)
        _linear(data, mats, layer, ATTN_OUT, dim, qdim, T, xq, xd, xs, xi, xdi, xsi, ao, lut,
                xn)
        add_into(x, xn, T, dim)
        # feed-forward block
        rmsnorm(x, T, norms[layer, 1], eps, xn)
        _quantize(xn, T, dim, xq, xd, xs, xi, xdi, xsi)
        _linear(data, mats, layer, FFN_GATE, ffn, dim, T, xq, xd, xs, xi, xdi, xsi, xn, lut,
                gb)
        _linear(data, mats, layer, FFN_UP, ffn, dim, T, xq, xd, xs, xi, xdi, xsi, xn, lut,
                ub)
        swiglu(gb, ub, T, ffn)
        _quantize(gb, T, ffn, xq, xd, xs, xi, xdi, xsi)
        _linear(data, mats, layer, FFN_DOWN, dim, ffn, T, xq, xd, xs, xi, xdi, xsi, gb, lut,
                xn)
        add_into(x, xn, T, dim)

    if all_logits:
        rmsnorm(x, T, out_norm, eps, xn)
        n_out = T
    else:
        # only the last token's logits are needed: move its state to row 0
        for i in range(dim):
            x[0, i] = x[T - 1, i]
        rmsnorm(x, 1, out_norm, eps, xn)
        n_out = 1
    _quantize(xn, n_out, dim, xq, xd, xs, xi, xdi, xsi)
    matmul(data, head[0], head[1], dims[D_VOCAB], dim, n_out, xq, xd, xs, xi, xdi, xsi, xn, lut,
           logits)
