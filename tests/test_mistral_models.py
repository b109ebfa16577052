"""Sliding-window attention and NeMo shapes against transformers (eager attention, the oracle:
llama.cpp ignores the window for the llama architecture).

Golden logits: ``tests/golden/mistral_logits.npz``, made by ``tests/golden/make_mistral_golden.py``
(transformers MistralForCausalLM, float32 compute) on the deterministic BF16 checkpoints that
``models.make_checkpoint`` builds here from the same presets and seed. Each is converted to a
float32 GGUF and run with a float32 KV cache; the measure is the per-position relative error
||a - b|| / ||b|| of the logits, bounded by 1e-3 at every position.

* window: tiny Mistral 7B v0.1, sliding window 8, 40 positions (5x the window): one prefill
  eval, chunked prefill with small batches (the rolling KV buffer wraps many times), and
  token-by-token decode in a context smaller than the sequence; the cache keeps one shape;
* nemo: tiny NeMo (head_dim 32 != dim 64 / 4 heads, rope theta 1e6) with the full Tekken
  vocabulary: the converted GGUF's tokenizer encodes the golden chat exactly as mistral_common,
  and the logits match on 1024 golden columns (full rows are 131072 wide) plus the argmax.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converter.convert import convert  # noqa: E402
from cpullm.mistral_chat import detect_format, encode_mistral_chat  # noqa: E402
from cpullm.model import Model  # noqa: E402
from models.make_checkpoint import make_checkpoint  # noqa: E402

GOLDEN = np.load(REPO / "tests" / "golden" / "mistral_logits.npz")
_spec = importlib.util.spec_from_file_location(
    "make_mistral_golden", REPO / "tests" / "golden" / "make_mistral_golden.py")
G = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(G)
TOL = 1e-3
W = 8


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per position ||a - b|| / ||b||."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def window_gguf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("window")
    src = make_checkpoint(G.window_preset(), root / "ck", "hf", seed=G.SEED)
    return convert(src, root / "w.gguf", "f32", progress=False).path


@pytest.fixture(scope="module")
def nemo_gguf(tmp_path_factory) -> Path:
    pytest.importorskip("mistral_common")
    root = tmp_path_factory.mktemp("nemo")
    src = make_checkpoint(G.nemo_preset(), root / "ck", "hf", seed=G.SEED)
    assert (src / "tekken.json").exists()
    return convert(src, root / "n.gguf", "f32", progress=False).path


def _decode(m: Model, ids: list[int], n_prefill: int) -> np.ndarray:
    out = [m.eval(ids[:n_prefill], all_logits=True).copy()]
    for t in ids[n_prefill:]:
        out.append(m.eval([t]).copy()[None])
    return np.concatenate(out)


# ---- sliding window -----------------------------------------------------------------------


def test_window_golden_is_windowed():
    ids, want = GOLDEN["window/ids"], GOLDEN["window/logits"]
    assert len(ids) == 5 * W == want.shape[0]


def test_window_prefill_one_eval(window_gguf):
    ids = GOLDEN["window/ids"].tolist()
    want = GOLDEN["window/logits"]
    m = Model.open(window_gguf, kv_type="f32")
    assert m.config.sliding_window == W and m.rolling
    assert m.n_batch >= len(ids)  # one compiled call for all 40 positions
    err = rel_err(m.eval(ids, all_logits=True), want)
    assert err.max() < TOL, err
    print(f"\nwindow prefill, one eval: max rel err {err.max():.1e}")


@pytest.mark.parametrize("n_batch", [1, 3, 8, 13])
def test_window_prefill_chunked(window_gguf, n_batch):
    ids = GOLDEN["window/ids"].tolist()
    want = GOLDEN["window/logits"]
    m = Model.open(window_gguf, kv_type="f32", n_batch=n_batch)
    assert m.capacity == W + n_batch - 1 < len(ids)  # the buffer wraps
    err = rel_err(m.eval(ids, all_logits=True), want)
    assert err.max() < TOL, (n_batch, err)
    # and in several evals of uneven sizes
    m.reset()
    got, pos = [], 0
    for k in (5, 1, 17, 2, 15):
        got.append(m.eval(ids[pos : pos + k], all_logits=True).copy())
        pos += k
    assert pos == len(ids)
    err = rel_err(np.concatenate(got), want)
    assert err.max() < TOL, (n_batch, err)
    print(f"\nwindow prefill, n_batch {n_batch}: max rel err {err.max():.1e}")


@pytest.mark.parametrize("n_ctx,n_prefill", [(16, 1), (16, 9), (None, 12)])
def test_window_decode_constant_cache(window_gguf, n_ctx, n_prefill):
    """Token-by-token decode matches at every position, in a context smaller than the
    sequence (n_ctx 16 < 40 positions), and the KV cache never changes shape or buffer."""
    ids = GOLDEN["window/ids"].tolist()
    want = GOLDEN["window/logits"]
    m = Model.open(window_gguf, kv_type="f32", n_ctx=n_ctx, n_batch=16)
    c = m.config
    shape, nbytes = m.k_cache.shape, m.k_cache.nbytes + m.v_cache.nbytes
    buf = (m.k_cache.ctypes.data, m.v_cache.ctypes.data)
    assert shape == (c.n_layers, c.n_kv_heads, m.capacity, c.head_dim)
    assert m.capacity < len(ids)
    out = [m.eval(ids[:n_prefill], all_logits=True).copy()]
    for t in ids[n_prefill:]:
        out.append(m.eval([t]).copy()[None])
        assert m.k_cache.shape == shape and m.v_cache.shape == shape
        assert (m.k_cache.ctypes.data, m.v_cache.ctypes.data) == buf
        assert m.k_cache.nbytes + m.v_cache.nbytes == nbytes
    assert m.n_past == len(ids)
    err = rel_err(np.concatenate(out), want)
    assert err.max() < TOL, err
    # generation goes on past the window (and past n_ctx): greedy continuation runs
    for _ in range(10):
        m.eval([int(np.argmax(m.logits[0]))])
    assert m.n_past == len(ids) + 10 and m.k_cache.shape == shape
    print(f"\nwindow decode n_ctx {n_ctx}: capacity {m.capacity} slots, "
          f"{nbytes} bytes K+V, max rel err {err.max():.1e}")


def test_window_matters(window_gguf, tmp_path):
    """The same weights without a window agree with the golden logits only on the first
    window positions: the golden values (and cpullm) really apply the window."""
    src = make_checkpoint(G.window_preset(), tmp_path / "ck", "hf", seed=G.SEED)
    cfg = json.loads((src / "config.json").read_text())
    cfg["sliding_window"] = None
    (src / "config.json").write_text(json.dumps(cfg))
    path = convert(src, tmp_path / "full.gguf", "f32", progress=False).path
    m = Model.open(path, kv_type="f32")
    assert not m.rolling and m.config.sliding_window == 0
    err = rel_err(m.eval(GOLDEN["window/ids"].tolist(), all_logits=True),
                  GOLDEN["window/logits"])
    assert err[:W].max() < TOL
    assert err[W:].min() > 1e-2, err


# ---- NeMo ----------------------------------------------------------------------------------


def test_nemo_tokenizer_and_chat(nemo_gguf):
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    m = Model.open(nemo_gguf, kv_type="f32")
    assert detect_format(m.metadata) == "v3-tekken"
    assert m.tokenizer.vocab_size == 131072 and m.tokenizer.pre == "tekken"
    ids = encode_mistral_chat(m.tokenizer, "v3-tekken", G.NEMO_CHAT)
    assert ids == G.NEMO_IDS == GOLDEN["nemo/ids"].tolist()
    mt = MistralTokenizer.from_file(str(Path(
        __import__("mistral_common").__file__).parent / "data" / "tekken_240718.json"))
    cls = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    req = ChatCompletionRequest(messages=[cls[x["role"]](**x) for x in G.NEMO_CHAT])
    assert mt.encode_chat_completion(req).tokens == ids


def _check_nemo(logits: np.ndarray) -> float:
    cols = GOLDEN["nemo/cols"]
    err = rel_err(logits[:, cols], GOLDEN["nemo/logits"])
    assert err.max() < TOL, err
    top, gap = GOLDEN["nemo/top"], GOLDEN["nemo/gap"]
    clear = gap > 1e-2
    assert clear.sum() >= len(top) - 3
    assert (logits.argmax(axis=1)[clear] == top[clear]).all()
    return float(err.max())


@pytest.mark.parametrize("mode", ["prefill", "chunked", "decode"])
def test_nemo_matches_transformers(nemo_gguf, mode):
    ids = GOLDEN["nemo/ids"].tolist()
    c = Model.open(nemo_gguf).config
    assert (c.dim, c.n_heads, c.head_dim, c.q_dim, c.rope_theta) == (64, 4, 32, 128, 1e6)
    assert c.sliding_window == 0 and c.vocab_size == 131072
    if mode == "prefill":
        m = Model.open(nemo_gguf, kv_type="f32")
        logits = m.eval(ids, all_logits=True)
    elif mode == "chunked":
        m = Model.open(nemo_gguf, kv_type="f32", n_batch=5)
        logits = m.eval(ids, all_logits=True)
    else:
        m = Model.open(nemo_gguf, kv_type="f32")
        logits = _decode(m, ids, 3)
    err = _check_nemo(logits)
    print(f"\nnemo {mode}: max rel err {err:.1e} on {len(GOLDEN['nemo/cols'])} columns")


# ---- cpullm info ---------------------------------------------------------------------------


def _info(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cpullm", "info", str(path)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_info_shows_tokenizer_format_and_window(window_gguf, nemo_gguf, tmp_path):
    r = _info(nemo_gguf)
    assert r.returncode == 0, r.stderr
    for needle in ("tokenizer       gpt2 (pre-tokenizer tekken, vocab 131072",
                   "sliding window  none", "chat format     mistral v3-tekken", "head_dim 32"):
        assert needle in r.stdout, (needle, r.stdout)
    # window model: no tokenizer in the checkpoint
    r = _info(window_gguf)
    assert r.returncode == 0, r.stderr
    for needle in ("sliding window  8", "chat format     none (no vocabulary)"):
        assert needle in r.stdout, (needle, r.stdout)
    # a v1 SentencePiece model
    from dataclasses import replace

    p = replace(G.window_preset(), vocab_size=32000, tokenizer="tokenizer.model.v1")
    src = make_checkpoint(p, tmp_path / "v1", "native")
    path = convert(src, tmp_path / "v1.gguf", "q8_0", progress=False).path
    r = _info(path)
    assert r.returncode == 0, r.stderr
    for needle in ("tokenizer       llama", "vocab 32000", "sliding window  8",
                   "chat format     mistral v1"):
        assert needle in r.stdout, (needle, r.stdout)


def test_chat_session_uses_mistral_encoding(nemo_gguf):
    """`cpullm chat` on a Mistral-vocabulary file speaks mistral_common's format: every
    turn's prompt ids equal encode_chat_completion's for the conversation so far."""
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from cpullm.chat import ChatSession
    from cpullm.sampler import SamplingParams

    mt = MistralTokenizer.from_file(str(Path(
        __import__("mistral_common").__file__).parent / "data" / "tekken_240718.json"))
    cls = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}

    def reference(msgs: list[dict]) -> list[int]:
        req = ChatCompletionRequest(messages=[cls[x["role"]](**x) for x in msgs])
        return mt.encode_chat_completion(req).tokens

    m = Model.open(nemo_gguf, n_ctx=128)
    s = ChatSession(m, system="Be brief.", params=SamplingParams(temperature=0.0), max_tokens=3)
    assert s.template.name == "mistral v3-tekken"
    for question in ("Bonjour, ça va ?", "What is [INST] in 日本語?"):
        msgs = s.conversation() + [{"role": "user", "content": question}]
        assert s.prompt_ids(msgs) == reference(msgs)
        s.reply(question)
        assert s.last.prompt_tokens == len(reference(msgs))
