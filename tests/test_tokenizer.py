"""Tokenizer from GGUF metadata, checked against independent oracles:

* gpt2 / byte-level BPE: SmolLM2's vocab and merges from the real GGUF, compared with
  HF ``tokenizers`` built from the same vocab and merges;
* llama / SentencePiece BPE: mistral-common's ``tokenizer.model.v1`` turned into GGUF-style
  metadata, compared with the ``sentencepiece`` library (a test-only oracle).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from cpullm.errors import TokenizerError
from cpullm.gguf.constants import Keys, TokenType
from cpullm.tokenizer import Tokenizer
from cpullm.tokenizer.pretok import PATTERNS


def read_gguf_metadata(path: Path) -> dict:
    """The one place that reads GGUF metadata for these tests."""
    from cpullm.gguf import read_metadata

    return read_metadata(path)


# ---- test corpus ----------------------------------------------------------------------

HAND = [
    "",
    " ",
    "a",
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading",
    "double  space",
    "triple   space",
    "many          spaces",
    "tab\tseparated\tvalues",
    "\t\tindented with tabs",
    "line one\nline two\n",
    "\n\n\nnewlines first",
    "windows\r\nline\r\nendings",
    "mixed \t\n \t whitespace",
    " \n \n ",
    "   ",
    "\n",
    "\t",
    "It's, don't, won't, I'm, you're, we've, they'll, she'd",
    "IT'S DON'T YOU'RE WE'VE",
    "'s 't 're 've 'm 'll 'd",
    "rock 'n' roll",
    "O'Neil's dog's bone",
    "1234567890",
    "3.14159265358979",
    "-42 +17 1e-9 0x1F 0b1010 1_000_000",
    "2024-01-05T12:34:56Z",
    "On 12/25/2023 at 10:30am, $1,234.56 was paid (15% off).",
    "phone: +1 (555) 010-9999",
    "a   5",
    "x \n 1",
    "word  42  word",
    "  7",
    "9  ",
    "v1.2.3-rc4",
    "IPv4 192.168.0.1 and port :8080",
    "café naïve résumé coöperate façade",
    "Ångström Øresund Ærø straße",
    "日本語のテキストです。",
    "中文文本测试，包括标点符号！",
    "한국어 텍스트",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "שלום עולם",
    "Γειά σου Κόσμε",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "emoji 😀😃😄 🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "math ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ π",
    "arrows → ← ↑ ↓ ⇒",
    "quotes “smart” ‘single’ «guillemets» — en – dash…",
    "zero\u200bwidth\u200cjoiner\u200d",
    "nbsp\u00a0here and ideographic\u3000space",
    "combining e\u0301 and a\u0308",
    "fullwidth ＡＢＣ１２３",
    "ﬁ ligature ① circled",
    "def foo(x, y=2):\n    return x ** y  # power\n",
    "class A:\n    def __init__(self):\n        self.x = [1, 2, 3]\n",
    "if (a && b || !c) { console.log(`value: ${a}`); }",
    "const f = async (x) => { await g(x); };",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
    'fn main() { let v: Vec<u8> = vec![1, 2]; println!("{:?}", v); }',
    'func main() {\n\tfmt.Println("hi")\n}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    '<div class="x"><p>Hi &amp; bye</p></div>',
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "x = y != z; a += 1; b <<= 2; c ||= d;",
    "path/to/file.txt C:\\Windows\\System32 ~/.bashrc",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "$ ls -la | grep '\\.py$' > out.txt 2>&1",
    "    indented code\n        more indented\n",
    "```python\nprint('hi')\n```",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "!!!???...,,,;;;:::",
    "----====____****",
    "~`@#$%^&*()[]{}<>",
    "<|im_start|>user\nHi<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<s>[INST] hello [/INST]</s>",
    "</s>",
    "<unk>",
    "[INST]",
    "<filename>main.py<file_sep>",
    "<0x41> <0x0A> not bytes",
    "\u2581 literal lower one eighth block \u2581\u2581",
    "Ġ Ċ literal byte-level chars",
    "a" * 200,
    "ab" * 100 + " " + "1" * 50,
    " ".join(["word"] * 60),
    "CamelCaseIdentifierName snake_case_name SCREAMING_CASE",
    "Mr. Smith's 3rd-floor flat (No. 7b) isn't cheap: £2,000/mo.",
]

# fmt: off
FRAGMENTS = [
    "hello", "World", "it's", "DON'T", "42", "3.5", "2023", "x1y2", "😀", "🎉🎉",
    "日本", "Привет", "مرحبا", "café", "ß", "def", "return", "{", "}", "()", "=>",
    "==", "//", "#", "$", "%", "'", '"', "...", "-", "_", "\u00e9", "ǅ", "Σσς",
    "नमस्ते", "ﬁ", "<|im_end|>", "</s>", "<s>", "[INST]", "\\n", "0", "007", "1,000",
    "don't", "y'all", "ABC", "aBc", "\u0301", "\u200d", "\u00a0",
]
# fmt: on
SEPARATORS = ["", " ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\n ", " \t ", "\r\n", ".", ", "]


def corpus() -> list[str]:
    rng = random.Random(1234)
    out = list(HAND)
    for _ in range(220):
        k = rng.randint(2, 6)
        parts = []
        for _ in range(k):
            parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(SEPARATORS))
        if rng.random() < 0.5:
            parts.pop()
        out.append("".join(parts))
    return out


CORPUS = corpus()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 300
    assert len(set(CORPUS)) >= 300


# ---- gpt2 / SmolLM2 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_md(smollm2_path) -> dict:
    return read_gguf_metadata(smollm2_path)


@pytest.fixture(scope="module")
def smol(smol_md) -> Tokenizer:
    return Tokenizer.from_metadata(smol_md)


@pytest.fixture(scope="module")
def smol_oracle(smol_md):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tokens = smol_md[Keys.TOKENS]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in smol_md[Keys.MERGES]]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    return hf


def test_smol_properties(smol):
    assert smol.kind == "gpt2"
    assert smol.pre == "smollm"
    assert smol.vocab_size == 49152
    assert smol.bos_id == 1 and smol.eos_id == 2 and smol.eot_id is None
    assert smol.is_control(1) and smol.is_control(2) and not smol.is_control(100)
    assert smol.token_bytes(216) == b" "  # "Ġ"
    assert smol.token_bytes(1) == b""
    assert smol.token_bytes(1, render_special=True) == b"<|im_start|>"


def test_smol_matches_hf_oracle(smol, smol_oracle):
    bad = []
    for s in CORPUS:
        want = smol_oracle.encode(s, add_special_tokens=False).ids
        got = smol.encode(s)
        if got != want:
            bad.append((s, got, want))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_smol_round_trip(smol):
    for s in CORPUS:
        assert smol.decode(smol.encode(s)) == s, repr(s)


def test_smol_pretok_regex_matches_hf(smol_oracle):
    """The single folded smollm regex splits exactly like HF's Digits+ByteLevel sequence."""
    import regex

    from cpullm.tokenizer.bpe import BYTE_TO_UNICODE
    from cpullm.tokenizer.pretok import SMOLLM

    pat = regex.compile(SMOLLM)
    pre = smol_oracle.pre_tokenizer
    for s in CORPUS:
        want = [p for p, _ in pre.pre_tokenize_str(s)]
        got = ["".join(BYTE_TO_UNICODE[b] for b in m.encode()) for m in pat.findall(s)]
        assert got == want, repr(s)


def test_smol_control_tokens_stay_text(smol, smol_oracle):
    s = "<|im_start|>user\nHi<|im_end|><|endoftext|>"
    plain = smol.encode(s)
    assert plain == smol_oracle.encode(s, add_special_tokens=False).ids
    assert not any(smol.is_control(t) for t in plain)
    special = smol.encode(s, parse_special=True)
    assert special[0] == 1 and special[-2:] == [2, 0]
    assert special[1:-2] == smol.encode("user\nHi")
    assert smol.decode(special) == "user\nHi"
    assert smol.decode(special, skip_special=False) == s
    # bos: SmolLM2 says add_bos_token = False
    assert smol.encode("hi")[0] != 1
    assert smol.encode("hi", add_bos=True)[0] == 1


def test_smol_user_defined_always_matched(smol_md):
    md = dict(smol_md)
    md[Keys.TOKENS] = list(md[Keys.TOKENS]) + ["<think>"]
    md[Keys.TOKEN_TYPE] = np.append(md[Keys.TOKEN_TYPE], np.int32(TokenType.USER_DEFINED))
    tok = Tokenizer.from_metadata(md)
    new_id = tok.vocab_size - 1
    for ps in (False, True):
        ids = tok.encode("a<think>b", parse_special=ps)
        assert ids == tok.encode("a") + [new_id] + tok.encode("b")
    assert tok.decode(tok.encode("x <think> y")) == "x <think> y"


def test_smol_long_text(smol, smol_oracle):
    text = "\n".join(CORPUS) * 3
    assert smol.encode(text) == smol_oracle.encode(text, add_special_tokens=False).ids


# ---- llama / SentencePiece --------------------------------------------------------------


def _sp_model_path() -> Path:
    mc = pytest.importorskip("mistral_common")
    p = Path(mc.__file__).parent / "data" / "tokenizer.model.v1"
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def sp_metadata(sp) -> dict:
    n = sp.vocab_size()
    tokens, scores, types = [], np.zeros(n, np.float32), np.zeros(n, np.int32)
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores[i] = sp.get_score(i)
        if sp.is_control(i):
            types[i] = TokenType.CONTROL
        elif sp.is_unknown(i):
            types[i] = TokenType.UNKNOWN
        elif sp.is_byte(i):
            types[i] = TokenType.BYTE
        elif sp.is_unused(i):
            types[i] = TokenType.UNUSED
        else:
            types[i] = TokenType.NORMAL
    return {
        Keys.TOKENIZER_MODEL: "llama",
        Keys.TOKENS: tokens,
        Keys.SCORES: scores,
        Keys.TOKEN_TYPE: types,
        Keys.BOS_ID: 1,
        Keys.EOS_ID: 2,
        Keys.UNK_ID: 0,
    }


@pytest.fixture(scope="module")
def sp():
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(_sp_model_path()))


@pytest.fixture(scope="module")
def sp_md(sp) -> dict:
    return sp_metadata(sp)


@pytest.fixture(scope="module")
def mistral(sp_md) -> Tokenizer:
    return Tokenizer.from_metadata(sp_md)


def test_spm_properties(mistral):
    assert mistral.kind == "llama"
    assert mistral.vocab_size == 32000
    assert (mistral.bos_id, mistral.eos_id, mistral.unk_id) == (1, 2, 0)
    assert mistral.add_bos and mistral.add_space_prefix
    assert mistral.token_bytes(3 + 0x0A) == b"\n"  # <0x0A>
    assert mistral.token_bytes(2) == b""
    assert mistral.encode("hi")[0] == 1
    assert mistral.encode("hi", add_bos=False)[0] != 1


def test_spm_matches_sentencepiece(mistral, sp):
    bad = []
    for s in CORPUS:
        want = sp.encode(s)
        got = mistral.encode(s, add_bos=False)
        if got != want:
            bad.append((s, got, want))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_spm_round_trip(mistral, sp):
    for s in CORPUS:
        ids = mistral.encode(s)
        assert mistral.decode(ids) == sp.decode(ids), repr(s)
        if "\u2581" not in s:  # a literal "▁" is a space to SentencePiece (sp agrees)
            assert mistral.decode(ids) == s, repr(s)


def test_spm_long_text(mistral, sp):
    text = "\n".join(CORPUS) * 3
    assert mistral.encode(text, add_bos=False) == sp.encode(text)


def test_spm_control_tokens_stay_text(mistral, sp):
    s = "<s>[INST] hello [/INST]</s><unk>"
    plain = mistral.encode(s, add_bos=False)
    assert plain == sp.encode(s)
    assert not any(mistral.is_control(t) for t in plain) and 0 not in plain
    special = mistral.encode(s, add_bos=False, parse_special=True)
    # like llama.cpp: text after a special token gets the space prefix too
    assert special == [1] + sp.encode("[INST] hello [/INST]") + [2, 0]
    assert mistral.decode(special) == "[INST] hello [/INST]"


def test_spm_no_byte_tokens_uses_unk(sp_md):
    md = dict(sp_md)
    types = md[Keys.TOKEN_TYPE].copy()
    types[types == TokenType.BYTE] = TokenType.UNUSED
    md[Keys.TOKEN_TYPE] = types
    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("a\u0b85b", add_bos=False)  # Tamil letter: not in the vocab
    assert 0 in ids


# ---- bad metadata -----------------------------------------------------------------------


def _tiny_gpt2() -> dict:
    return {
        Keys.TOKENIZER_MODEL: "gpt2",
        Keys.TOKENS: ["a", "b", "ab", "<s>"],
        Keys.TOKEN_TYPE: np.array([1, 1, 1, 3], dtype=np.int32),
        Keys.MERGES: ["a b"],
        Keys.BOS_ID: 3,
    }


def test_tiny_gpt2_works():
    tok = Tokenizer.from_metadata(_tiny_gpt2())
    assert tok.encode("abab") == [2, 2]
    assert tok.encode("ba") == [1, 0]
    assert tok.encode("<s>ab", parse_special=True) == [3, 2]
    assert tok.decode([3, 2, 0]) == "aba"


@pytest.mark.parametrize("pre", sorted(PATTERNS))
def test_every_pre_tokenizer_builds(pre):
    md = _tiny_gpt2()
    md[Keys.TOKENIZER_PRE] = pre
    tok = Tokenizer.from_metadata(md)
    assert tok.pre == pre
    assert tok.decode(tok.encode("ab ba")) == "abba"  # " " is not in the tiny vocab


def test_tekken_pattern_is_mistral_commons():
    import json

    mc = pytest.importorskip("mistral_common")
    from cpullm.tokenizer.pretok import TEKKEN

    data = json.loads((Path(mc.__file__).parent / "data" / "tekken_240718.json").read_text())
    assert data["config"]["pattern"] == TEKKEN


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({Keys.TOKENS: None}, Keys.TOKENS),
        ({Keys.TOKENS: []}, Keys.TOKENS),
        ({Keys.TOKENIZER_MODEL: None}, Keys.TOKENIZER_MODEL),
        ({Keys.TOKENIZER_MODEL: "wordpiece"}, "wordpiece"),
        ({Keys.TOKENIZER_PRE: "no-such-pre"}, "no-such-pre"),
        ({Keys.MERGES: None}, Keys.MERGES),
        ({Keys.MERGES: ["a b c"]}, "merges"),
        ({Keys.BOS_ID: 4}, Keys.BOS_ID),
        ({Keys.EOS_ID: -1}, Keys.EOS_ID),
        ({Keys.TOKEN_TYPE: np.array([1, 1, 1], np.int32)}, Keys.TOKEN_TYPE),
        ({Keys.SCORES: np.zeros(5, np.float32)}, Keys.SCORES),
        ({Keys.BOS_ID: None, Keys.ADD_BOS: True}, Keys.BOS_ID),
    ],
)
def test_bad_metadata(change, needle):
    md = _tiny_gpt2()
    for k, v in change.items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    with pytest.raises(TokenizerError, match=needle.replace(".", r"\.")):
        Tokenizer.from_metadata(md)


def test_bad_llama_metadata(sp_md):
    md = dict(sp_md)
    md[Keys.SCORES] = md[Keys.SCORES][:-1]
    with pytest.raises(TokenizerError, match="scores"):
        Tokenizer.from_metadata(md)
    md = dict(sp_md)
    del md[Keys.SCORES]
    with pytest.raises(TokenizerError, match="scores"):
        Tokenizer.from_metadata(md)
    md = dict(sp_md)
    md[Keys.BOS_ID] = 32000
    with pytest.raises(TokenizerError, match="out of the vocabulary range"):
        Tokenizer.from_metadata(md)


def test_decode_bad_id(smol):
    with pytest.raises(TokenizerError):
        smol.decode([smol.vocab_size])
    with pytest.raises(TokenizerError):
        smol.token_bytes(-1)


# ---- special-token matching -------------------------------------------------------------


def test_literal_matcher_equals_regex_alternation():
    """LiteralMatcher finds what a longest-first regex alternation finds (leftmost, then
    longest), on overlapping, nested and repeated spellings."""
    import re

    from cpullm.tokenizer.specials import LiteralMatcher

    rng = random.Random(7)
    alphabet = "<>|[]/_ab-^\\"
    for _ in range(300):
        specials = {"".join(rng.choices(alphabet, k=rng.randint(1, 5)))
                    for _ in range(rng.randint(1, 12))}
        regex = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len,
                                                                   reverse=True)))
        m = LiteralMatcher(specials)
        for _ in range(10):
            text = "".join(rng.choices(alphabet + "xy ", k=rng.randint(0, 40)))
            want = [(x.start(), x.end()) for x in regex.finditer(text)]
            assert list(m.spans(text)) == want, (specials, text)


def test_thousands_of_control_tokens_split():
    """A vocabulary with 30k control spellings (a Mistral-style reserved range): only
    parse_special turns them into ids."""
    n_ctrl = 30000
    tokens = [f"<ctrl{i}>" for i in range(n_ctrl)] + [chr(c) for c in range(32, 127)]
    types = [TokenType.CONTROL] * n_ctrl + [TokenType.NORMAL] * 95
    md = {
        Keys.TOKENIZER_MODEL: "gpt2",
        Keys.TOKENS: tokens,
        Keys.TOKEN_TYPE: np.array(types, dtype=np.int32),
        Keys.MERGES: [],
    }
    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("a<ctrl12345>b<ctrl7>", parse_special=True)
    assert 12345 in ids and 7 in ids
    assert 12345 not in tok.encode("a<ctrl12345>b")


# ---- the per-file cache of BPE tables ---------------------------------------------------

CACHE_SAMPLES = ["Hello world", "  leading spaces\n\ttabs", "naïve café 你好 🚀",
                 "def f(x):\n    return x ** 2  # comment", "<|im_start|>user\nhi<|im_end|>"]


def test_bpe_tables_cache(smollm2_path, tmp_path, monkeypatch):
    """The second Tokenizer.for_file reads the tables the first one stored, and encodes and
    decodes exactly as a tokenizer built from scratch; a damaged entry is rebuilt; another
    mtime is another entry."""
    import os

    from cpullm.gguf import GGUFFile
    from cpullm.tokenizer import cache as bpe_cache

    monkeypatch.setenv("CPULLM_CACHE", str(tmp_path / "c"))
    f = GGUFFile(smollm2_path)
    fresh = Tokenizer.from_metadata(f.metadata)
    key = bpe_cache.key(f.path)
    assert bpe_cache.load(key, fresh.vocab_size) is None
    first = Tokenizer.for_file(f)
    tables = bpe_cache.load(key, fresh.vocab_size)
    assert tables is not None and len(tables.tok_bytes) == fresh.vocab_size
    assert bpe_cache.load(key, fresh.vocab_size + 1) is None  # another vocabulary size
    second = Tokenizer.for_file(f)  # from the cache
    for s in CACHE_SAMPLES:
        ids = fresh.encode(s, parse_special=True)
        assert first.encode(s, parse_special=True) == ids
        assert second.encode(s, parse_special=True) == ids
        assert second.decode(ids) == fresh.decode(ids)
    entry = next((tmp_path / "c" / "tokenizers").glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    assert bpe_cache.load(key, fresh.vocab_size) is None
    third = Tokenizer.for_file(f)
    assert third.encode(CACHE_SAMPLES[2]) == fresh.encode(CACHE_SAMPLES[2])
    assert bpe_cache.load(key, fresh.vocab_size) is not None  # written again
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(smollm2_path.read_bytes())
    k1 = bpe_cache.key(copy)
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))
    assert bpe_cache.key(copy) != k1 != key


def test_bpe_tables_cache_unwritable(smollm2_path, tmp_path, monkeypatch):
    """A cache folder that cannot be created costs nothing but the time."""
    from cpullm.gguf import GGUFFile

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CPULLM_CACHE", str(blocker))
    tok = Tokenizer.for_file(GGUFFile(smollm2_path))
    assert tok.encode("Hello world") == Tokenizer.from_metadata(
        GGUFFile(smollm2_path).metadata).encode("Hello world")
