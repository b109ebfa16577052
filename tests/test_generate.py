"""Sampler, generation loop and UTF-8-safe streaming (in process)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cpullm.errors import CpullmError
from cpullm.generate import GenerationStats, StreamDecoder, TextStream, generate
from cpullm.gguf.constants import Keys, TokenType
from cpullm.sampler import Sampler, SamplingParams, make_rng, probabilities, sample
from cpullm.tokenizer import Tokenizer

GOLDEN = Path(__file__).resolve().parent / "golden" / "smollm2_greedy.json"

# ---- sampler ------------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -2.0, 2.9], dtype=np.float32)
    assert sample(logits, 0.0) == 1
    assert sample(logits, 0.0, make_rng(1)) == 1


def test_same_seed_same_choices():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    rng = make_rng(42)
    a = [sample(logits, 1.0, rng) for _ in range(50)]
    rng = make_rng(42)
    b = [sample(logits, 1.0, rng) for _ in range(50)]
    assert a == b
    rng = make_rng(43)
    c = [sample(logits, 1.0, rng) for _ in range(50)]
    assert a != c


def test_sample_follows_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = make_rng(0)
    n = 20000
    counts = np.bincount([sample(logits, 1.0, rng) for _ in range(n)], minlength=4)
    assert np.allclose(counts / n, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    # temperature flattens / sharpens
    assert np.allclose(probabilities(logits, 1e9), 0.25, atol=1e-6)
    assert probabilities(logits, 0.01)[0] > 0.999


def test_sample_never_picks_impossible_tokens():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0])
    rng = make_rng(3)
    assert {sample(logits, 0.7, rng) for _ in range(200)} == {1, 3}


def test_sample_rejects_bad_temperature():
    with pytest.raises(CpullmError, match="temperature"):
        sample(np.zeros(3), -1.0, make_rng(0))
    with pytest.raises(CpullmError, match="temperature"):
        sample(np.zeros(3), float("nan"), make_rng(0))


# ---- generate with a fake model (loop logic, no kernels) ---------------------------------


class FakeModel:
    """Emits 5, 6, 7, ... then EOS (id 2) after ``eos_after`` tokens."""

    def __init__(self, n_ctx=64, eos_after=None, vocab=32):
        self.n_ctx = n_ctx
        self.n_past = 0
        self.config = SimpleNamespace(vocab_size=vocab, context_length=128)
        self.tokenizer = SimpleNamespace(eos_id=2, eot_id=None)
        self.eos_after = eos_after
        self.calls: list[list[int]] = []
        self.logits = np.zeros(vocab, np.float32)

    def reset(self):
        self.n_past = 0

    def eval(self, tokens):
        tokens = list(tokens)
        self.calls.append(tokens)
        self.n_past += len(tokens)
        n_generated = len(self.calls) - 1
        self.logits[:] = 0
        if self.eos_after is not None and n_generated >= self.eos_after:
            self.logits[2] = 10
        else:
            self.logits[5 + n_generated] = 10
        return self.logits


def test_generate_prefills_once_then_decodes():
    m = FakeModel()
    stats = GenerationStats()
    out = list(generate(m, [1, 3, 4], 4, stats=stats))
    assert out == [5, 6, 7, 8]
    assert m.calls == [[1, 3, 4], [5], [6], [7]]  # the last token is not evaluated
    assert (stats.prompt_tokens, stats.generated, stats.decode_evals) == (3, 4, 3)
    assert stats.stop_reason == "length"


def test_generate_stops_at_eos():
    m = FakeModel(eos_after=2)
    stats = GenerationStats()
    assert list(generate(m, [1], 10, stats=stats)) == [5, 6]
    assert stats.stop_reason == "eos"
    m = FakeModel(eos_after=2)
    assert list(generate(m, [1], 4, stop_at_eos=False)) == [5, 6, 2, 2]


def test_generate_checks_context_eagerly():
    m = FakeModel(n_ctx=8)
    with pytest.raises(CpullmError, match="lower -n or raise --ctx"):
        generate(m, [1, 2, 3], 6)  # raised on the call, before iterating
    assert m.calls == []
    assert len(list(generate(m, [1, 2, 3], 5))) == 5


def test_generate_rejects_empty_prompt_and_bad_ids():
    with pytest.raises(CpullmError, match="empty"):
        generate(FakeModel(), [], 4)
    with pytest.raises(CpullmError, match="outside the vocabulary"):
        generate(FakeModel(vocab=32), [1, 40], 4)


def test_generate_zero_tokens_runs_nothing():
    m = FakeModel()
    assert list(generate(m, [1], 0)) == []
    assert m.calls == []


# ---- StreamDecoder ------------------------------------------------------------------------

TRICKY = "Hello 世界! 🎉🚀 naïve café — 日本語のテキスト 👩‍👩‍👧 ok"


def _check_stream(tok, ids, at_start=True):
    dec = StreamDecoder(tok, at_start=at_start)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    for p in pieces:
        p.encode("utf-8")  # strict: no lone surrogates
        assert "\ufffd" not in p
    return pieces


def test_stream_decoder_gpt2_emoji_cjk(smollm2_path):
    from cpullm.gguf.reader import read_metadata

    tok = Tokenizer.from_metadata(read_metadata(smollm2_path))
    assert tok.kind == "gpt2"
    ids = tok.encode(TRICKY)
    # the emoji and CJK really are split over several byte-level tokens
    assert any(len(tok.token_bytes(i)) and _incomplete(tok.token_bytes(i)) for i in ids)
    pieces = _check_stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == TRICKY
    # control tokens give nothing
    dec = StreamDecoder(tok)
    assert tok.is_control(tok.eos_id)
    assert dec.push(tok.eos_id) == ""


def _incomplete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _tiny_llama_tokenizer() -> Tokenizer:
    """A SentencePiece-style vocabulary with byte fallback and a space prefix."""
    words = ["▁hello", "▁world", "▁", "h", "e", "l", "o", "w", "r", "d"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256 + [TokenType.NORMAL] * len(words)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(words))]
    md = {
        Keys.TOKENIZER_MODEL: "llama",
        Keys.TOKENS: tokens,
        Keys.TOKEN_TYPE: np.array(types, np.int32),
        Keys.SCORES: np.array(scores, np.float32),
        Keys.BOS_ID: 1,
        Keys.EOS_ID: 2,
        Keys.UNK_ID: 0,
    }
    return Tokenizer.from_metadata(md)


def test_stream_decoder_byte_fallback_and_space_prefix():
    tok = _tiny_llama_tokenizer()
    text = "hello world 🎉 日本"
    ids = tok.encode(text, add_bos=True)
    assert any(tok.token_types[i] == TokenType.BYTE for i in ids)
    pieces = _check_stream(tok, ids, at_start=True)
    assert "".join(pieces) == tok.decode(ids) == text
    # text that continues a prompt keeps the leading space of its first word
    rest = tok.encode("world", add_bos=False)
    assert "".join(_check_stream(tok, rest, at_start=False)) == " world"


def test_stream_decoder_holds_incomplete_char_until_flush():
    tok = _tiny_llama_tokenizer()
    byte_id = {f"<0x{b:02X}>": i for i, b in ((3 + b, b) for b in range(256))}
    euro = "€".encode()  # 3 bytes
    dec = StreamDecoder(tok, at_start=False)
    assert dec.push(byte_id[f"<0x{euro[0]:02X}>"]) == ""
    assert dec.push(byte_id[f"<0x{euro[1]:02X}>"]) == ""
    assert dec.push(byte_id[f"<0x{euro[2]:02X}>"]) == "€"
    assert dec.push(byte_id[f"<0x{euro[0]:02X}>"]) == ""
    assert dec.flush() == "\ufffd"  # a truncated character at the very end


# ---- generate on the real model ------------------------------------------------------------


def test_generate_greedy_matches_golden_start(smollm2_model):
    golden = json.loads(GOLDEN.read_text())["prompts"][0]
    ids = smollm2_model.tokenizer.encode(golden["prompt"])
    assert ids == golden["prompt_ids"]
    out = list(generate(smollm2_model, ids, 5, temperature=0.0))
    # the first steps have clear margins (>= 0.8) in the float32 reference
    assert out == golden["generated_ids"][:5]
    text = StreamDecoder(smollm2_model.tokenizer, at_start=False).push_many(out)
    assert text.startswith(" Paris")


def test_generate_seeded_sampling_repeats(smollm2_model):
    ids = smollm2_model.tokenizer.encode("Once upon a time")
    a = list(generate(smollm2_model, ids, 8, temperature=0.8, seed=7))
    b = list(generate(smollm2_model, ids, 8, temperature=0.8, seed=7))
    assert a == b and len(a) > 0


def test_generate_with_sampler_and_extra_stop_ids():
    m = FakeModel()
    s = Sampler(SamplingParams.greedy(), 32)
    assert list(generate(m, [1], 10, sampler=s, extra_stop_ids=[7])) == [5, 6]
    # the penalties see the prompt and what was generated: 5 was "seen" in the prompt
    m = FakeModel()
    s = Sampler(SamplingParams.greedy(logit_bias={9: 9.5}, presence_penalty=0.0), 32)
    assert list(generate(m, [1], 2, sampler=s)) == [5, 6]
    s = Sampler(SamplingParams.greedy(logit_bias={9: 9.5}, repeat_penalty=2.0), 32)
    m = FakeModel()
    assert list(generate(m, [5], 1, sampler=s)) == [9]


# ---- stop strings ---------------------------------------------------------------------------


def _stream(tok, ids, stop, at_start=True):
    ts = TextStream(tok, stop=stop, at_start=at_start)
    pieces = []
    for i in ids:
        pieces.append(ts.push(i))
        if ts.stopped:
            break
    pieces.append(ts.flush())
    for p in pieces:
        p.encode("utf-8")
    return pieces, ts


def _expected(text, stop):
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def test_stop_string_split_across_tokens_is_never_emitted(smollm2_path):
    from cpullm.gguf.reader import read_metadata

    tok = Tokenizer.from_metadata(read_metadata(smollm2_path))
    text = "Answer: the weather is fine.\nUser: and tomorrow?"
    ids = tok.encode(text)
    stop = ["\nUser:"]
    pieces, ts = _stream(tok, ids, stop)
    assert ts.stopped and ts.stop == "\nUser:"
    assert "".join(pieces) == "Answer: the weather is fine."
    assert all("User" not in p for p in pieces)
    # a prefix of the stop string that does not complete is released
    pieces, ts = _stream(tok, tok.encode("a\nUse the force"), stop)
    assert not ts.stopped and "".join(pieces) == "a\nUse the force"
    # a prefix held at the very end comes out of flush
    pieces, ts = _stream(tok, tok.encode("end\nUs"), stop)
    assert pieces[-1].endswith("\nUs") and "".join(pieces) == "end\nUs"


@pytest.mark.parametrize(
    "stop", [[], ["ab"], ["🎉"], ["世界!"], ["é —", "🚀"], ["xyz", "ok"], ["\u754c"], ["k"]]
)
def test_stream_with_stops_equals_batch_decode_cut(smollm2_path, stop):
    from cpullm.gguf.reader import read_metadata

    tok = Tokenizer.from_metadata(read_metadata(smollm2_path))
    ids = tok.encode(TRICKY)
    pieces, ts = _stream(tok, ids, stop)
    assert "".join(pieces) == _expected(tok.decode(ids), stop)
    assert "".join(pieces) == ts.text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_stop_random_texts():
    """Property: for random texts and stops over a small alphabet (many partial matches),
    the concatenated pieces are the decode cut at the first stop."""
    tok = _tiny_llama_tokenizer()
    rng = np.random.default_rng(0)
    alphabet = ["h", "e", "l", "o", " ", "w", "🎉", "日", "é"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=rng.integers(1, 20)))
        stop = ["".join(rng.choice(alphabet, size=rng.integers(1, 4)))
                for _ in range(rng.integers(1, 3))]
        ids = tok.encode(text, add_bos=False)
        pieces, _ = _stream(tok, ids, stop)
        assert "".join(pieces) == _expected(tok.decode(ids), stop), (text, stop)


# ---- SentencePiece byte fallback: CJK and emoji --------------------------------------------


@pytest.fixture(scope="module")
def spm_tok():
    spm = pytest.importorskip("sentencepiece")
    from test_tokenizer import _sp_model_path, sp_metadata

    sp = spm.SentencePieceProcessor(model_file=str(_sp_model_path()))
    return Tokenizer.from_metadata(sp_metadata(sp))


CJK_EMOJI = [
    "日本語のテキストです。",
    "中文文本测试，包括标点符号！",
    "emoji 😀😃😄 🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "混合 text 🎉 with 한국어 and 𝄞 music",
    "rare: 龘齉鱻 🫠🦩🥹 👩‍👩‍👧 🇫🇷 ꙮ𓀀",
    TRICKY,
]


def test_spm_corpus_uses_byte_fallback(spm_tok):
    def n_bytes(text):
        return sum(spm_tok.token_types[i] == TokenType.BYTE for i in spm_tok.encode(text))

    assert n_bytes("🫠🦩🥹") == 12  # rare emoji: every byte is a byte token
    assert n_bytes("龘齉鱻") == 9  # rare CJK characters too


@pytest.mark.parametrize("text", CJK_EMOJI)
def test_stream_spm_byte_fallback_cjk_emoji(spm_tok, text):
    ids = spm_tok.encode(text, add_bos=True)
    pieces = _check_stream(spm_tok, ids, at_start=True)
    assert "".join(pieces) == spm_tok.decode(ids) == text
    # a byte token alone never yields a piece with half a character
    pieces, _ = _stream(spm_tok, ids, ["🎉"])
    assert "".join(pieces) == _expected(text, ["🎉"])


@pytest.mark.parametrize("text", CJK_EMOJI)
def test_stream_gpt2_cjk_emoji(smollm2_path, text):
    from cpullm.gguf.reader import read_metadata

    tok = Tokenizer.from_metadata(read_metadata(smollm2_path))
    ids = tok.encode(text)
    pieces = _check_stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text


# ---- Tekken (Mistral NeMo): byte-level BPE over 131k tokens ---------------------------------


@pytest.fixture(scope="module")
def tekken_tok():
    from pathlib import Path

    mc = pytest.importorskip("mistral_common")
    from converter.tokenizers import from_tekken

    return Tokenizer.from_metadata(from_tekken(Path(mc.__file__).parent / "data" /
                                               "tekken_240718.json"))


@pytest.mark.parametrize("text", CJK_EMOJI)
def test_stream_tekken_cjk_emoji(tekken_tok, text):
    ids = tekken_tok.encode(text, add_bos=False)
    pieces = _check_stream(tekken_tok, ids, at_start=True)
    assert "".join(pieces) == tekken_tok.decode(ids) == text
    pieces, _ = _stream(tekken_tok, ids, ["🎉"])
    assert "".join(pieces) == _expected(text, ["🎉"])


def test_tekken_splits_rare_characters_across_tokens(tekken_tok):
    """So the streaming test above really holds partial characters back."""
    ids = tekken_tok.encode("rare: 龘齉鱻 🫠🦩🥹 👩‍👩‍👧 🇫🇷 ꙮ𓀀", add_bos=False)
    assert sum(not _valid_alone(tekken_tok.token_bytes(i)) for i in ids) >= 4


def _valid_alone(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
