"""The compiled forward pass against the float64 numpy reference on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import QUANTIZED, make_tiny_gguf

from cpullm import reference
from cpullm.errors import ConfigError, CpullmError
from cpullm.gguf import GGMLType, GGUFFile
from cpullm.model import Model

ALL_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
             GGMLType.Q4_1]
SHAPES = {
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "head_dim": dict(n_heads=4, n_kv_heads=1, head_dim=32, tied=True),  # q_dim 128 != dim 64
    "partial_rope": dict(n_heads=2, n_kv_heads=2, rope_dim=16, rope_theta=1e6),
    "wide": dict(dim=128, n_heads=4, n_kv_heads=4, ffn_dim=256, seed=5),
}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Worst relative error over positions: ||a_t - b_t|| / ||b_t|| per row of logits."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return float((np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max())


def assert_matches(logits: np.ndarray, ref: np.ndarray, margins: list) -> None:
    """Every position within 1e-3 of the float64 reference, except positions at or after
    an int8 rounding tie (the reference saw some x/d within 2e-5 of k + 0.5, where float32
    and float64 may legitimately round apart); those are few and bounded."""
    err = np.array([rel_err(a, b) for a, b in zip(logits, ref, strict=True)])
    near = np.min(np.stack(margins), axis=0) < 2e-5 if margins else np.zeros(len(err), bool)
    tainted = np.cumsum(near) > 0
    bad = (err >= 1e-3) & ~tainted
    assert not bad.any(), f"positions {np.flatnonzero(bad)} off by {err[bad]} with no rounding tie"
    assert err.max() < 5e-2


@pytest.fixture(scope="module")
def tokens():
    return [int(t) for t in np.random.default_rng(1).integers(0, 128, 24)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_prefill_and_decode_match_reference(tmp_path, tokens, qtype, shape):
    f = GGUFFile(make_tiny_gguf(tmp_path / "m.gguf", qtype, **SHAPES[shape]))
    margins: list = []
    ref = reference.forward(f, tokens, margins)
    model = Model(f, kv_type="f32", n_batch=8)  # 24 tokens: three prefill chunks
    prefill = model.eval(tokens, all_logits=True)
    assert_matches(prefill, ref, margins)
    if qtype not in QUANTIZED:
        assert rel_err(prefill, ref) < 1e-3  # no int8 activations: no ties to excuse
    last = model.eval(tokens[:1]).copy()  # one more token after the prompt
    model.reset()
    decode = np.stack([model.eval([t]).copy() for t in tokens])
    assert_matches(decode, ref, margins)
    # a prefill that returns only the last logits agrees with the full one
    model.reset()
    np.testing.assert_allclose(model.eval(tokens), prefill[-1], rtol=1e-5, atol=1e-5)
    assert model.n_past == len(tokens)
    margins = []
    ref_next = reference.forward(f, tokens + tokens[:1], margins)
    assert_matches(np.vstack([prefill, last]), ref_next, margins)


def test_sliding_window_matches_reference(tmp_path, tokens):
    f = GGUFFile(make_tiny_gguf(tmp_path / "w.gguf", GGMLType.Q8_0, sliding_window=5))
    margins: list = []
    ref = reference.forward(f, tokens, margins)
    full = reference.forward(GGUFFile(make_tiny_gguf(tmp_path / "f.gguf", GGMLType.Q8_0)),
                             tokens)
    assert rel_err(full, ref) > 1e-2, "the window must change the result"
    model = Model(f, kv_type="f32", n_batch=4)
    assert_matches(model.eval(tokens, all_logits=True), ref, margins)


def test_context_full_is_an_error(tmp_path):
    model = Model.open(make_tiny_gguf(tmp_path / "m.gguf", context_length=16))
    assert model.n_ctx == 16
    model.eval(list(range(10)))
    with pytest.raises(CpullmError, match="context is full"):
        model.eval(list(range(7)))
    assert model.n_past == 10, "a refused eval leaves the context as it was"


def test_token_out_of_vocab_is_an_error(tmp_path):
    model = Model.open(make_tiny_gguf(tmp_path / "m.gguf", vocab=128))
    with pytest.raises(CpullmError, match="outside the vocabulary"):
        model.eval([5, 128])


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = make_tiny_gguf(tmp_path / "m.gguf")
    # make the file claim more heads than attn_q has rows
    from cpullm.gguf import write_gguf

    f = GGUFFile(path)
    md = dict(f.metadata)
    md["llama.attention.head_count"] = 8
    md["llama.attention.head_count_kv"] = 8
    tensors = {n: (t.qtype, t.shape, f.raw(n)) for n, t in f.tensors.items()}
    bad = write_gguf(tmp_path / "bad.gguf", md, tensors)
    with pytest.raises(ConfigError, match="blk.0.attn_k.weight"):
        Model.open(bad)


def test_missing_output_falls_back_to_token_embd(tmp_path, tokens):
    f = GGUFFile(make_tiny_gguf(tmp_path / "t.gguf", GGMLType.Q4_0, tied=True))
    assert "output.weight" not in f.tensors
    model = Model(f, kv_type="f32")
    assert model.tied
    margins: list = []
    ref = reference.forward(f, tokens[:6], margins)
    assert_matches(model.eval(tokens[:6], all_logits=True), ref, margins)


def test_unsupported_architecture(tmp_path):
    path = make_tiny_gguf(tmp_path / "m.gguf")
    from cpullm.gguf import write_gguf

    f = GGUFFile(path)
    md = dict(f.metadata)
    md["general.architecture"] = "gpt2"
    tensors = {n: (t.qtype, t.shape, f.raw(n)) for n, t in f.tensors.items()}
    with pytest.raises(ConfigError, match="architecture 'gpt2' is not supported"):
        Model.open(write_gguf(tmp_path / "bad.gguf", md, tensors))


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.Q4_0], ids=lambda t: t.name)
def test_sliding_cache_matches_reference_policy(tmp_path, qtype):
    """A 12-slot cache with 3 pinned tokens decoding 40 tokens: drops, shifts and key
    re-rotation equal the numpy reference of the same policy."""
    f = GGUFFile(make_tiny_gguf(tmp_path / "m.gguf", qtype, context_length=64))
    toks = [int(t) for t in np.random.default_rng(2).integers(0, 128, 40)]
    margins: list = []
    ref = reference.decode_sliding(f, toks, capacity=12, n_keep=3, margins=margins)
    model = Model(f, kv_type="f32", n_ctx=12)
    model.auto_slide, model.n_keep = True, 3
    ours = np.stack([model.eval([t]).copy() for t in toks])
    assert_matches(ours, ref, margins)
    assert model.n_past <= 12 and model.n_dropped == 40 - model.n_past
    assert model.history[:3] == toks[:3], "the pinned prefix stays"
    assert model.history[3:] == toks[40 - (model.n_past - 3) :]
    # sliding must differ from never dropping (the policy is doing something)
    full = reference.forward(f, toks)
    assert rel_err(ours[-1], full[-1]) > 1e-3


def test_long_prompt_slides_when_enabled(tmp_path):
    f = GGUFFile(make_tiny_gguf(tmp_path / "m.gguf", context_length=64))
    model = Model(f, kv_type="f32", n_ctx=16)
    toks = list(range(1, 41))
    with pytest.raises(CpullmError, match="context is full"):
        model.eval(toks)
    model.auto_slide, model.n_keep = True, 2
    logits = model.eval(toks)
    assert np.isfinite(logits).all()
    assert model.n_past <= 16 and model.n_dropped == 40 - model.n_past
    assert model.history[:2] == [1, 2] and model.history[-1] == 40


def test_rolling_window_cache_is_constant_size(tmp_path):
    """A window-5 model runs 5x past its window in a fixed cache, matching the reference."""
    f = GGUFFile(make_tiny_gguf(tmp_path / "w.gguf", GGMLType.Q8_0, sliding_window=5,
                                context_length=64))
    toks = [int(t) for t in np.random.default_rng(3).integers(0, 128, 30)]
    model = Model(f, kv_type="f32", n_batch=3)
    assert model.rolling and model.capacity == 5 + 3 - 1
    shape = model.k_cache.shape
    margins: list = []
    ref = reference.forward(f, toks, margins)
    ours = np.stack([model.eval([t]).copy() for t in toks])
    assert_matches(ours, ref, margins)
    assert model.k_cache.shape == shape and model.n_past == 30
    assert model.can_rewind(28) and not model.can_rewind(20)


def test_f16_kv_cache_close_to_reference(tmp_path, tokens):
    """The default f16 cache: half the memory, logits within 1e-2 of the f32 reference."""
    f = GGUFFile(make_tiny_gguf(tmp_path / "m.gguf", GGMLType.F32))
    model = Model(f, n_batch=8)
    assert model.kv_type == "f16" and model.k_cache.dtype == np.uint16
    ref = reference.forward(f, tokens)
    assert rel_err(model.eval(tokens, all_logits=True), ref) < 1e-2
    model.reset()
    decode = np.stack([model.eval([t]).copy() for t in tokens])
    assert rel_err(decode, ref) < 1e-2
    with pytest.raises(CpullmError, match="KV cache type"):
        Model(f, kv_type="q3")


def test_q8_0_kv_cache(tmp_path, tokens):
    """The q8_0 cache: a quarter of f32's memory, logits close to the reference, and the
    sliding policy works on it (keys re-quantized after re-rotation)."""
    f = GGUFFile(make_tiny_gguf(tmp_path / "m.gguf", GGMLType.F32, head_dim=32))
    model = Model(f, n_batch=8, kv_type="q8_0")
    assert model.k_cache.dtype == np.int8 and model.k_scales.shape[-1] == 1
    f32_bytes = Model(f, kv_type="f32").kv_bytes
    assert model.kv_bytes < 0.3 * f32_bytes
    ref = reference.forward(f, tokens)
    assert rel_err(model.eval(tokens, all_logits=True), ref) < 3e-2
    model.reset()
    decode = np.stack([model.eval([t]).copy() for t in tokens])
    assert rel_err(decode, ref) < 3e-2
    # sliding: close to the same policy on an f32 cache
    ref_slide = reference.decode_sliding(f, tokens + tokens, capacity=12, n_keep=3)
    m = Model(f, n_ctx=12, kv_type="q8_0")
    m.auto_slide, m.n_keep = True, 3
    ours = np.stack([m.eval([t]).copy() for t in tokens + tokens])
    assert rel_err(ours, ref_slide) < 5e-2
    with pytest.raises(CpullmError, match="multiple of 32"):
        Model(GGUFFile(make_tiny_gguf(tmp_path / "s.gguf")), kv_type="q8_0")  # head_dim 16
