"""Mistral tokenizers, converted to GGUF metadata and rebuilt by cpullm from that alone, give
exactly mistral_common's token ids: Tekken (``tekken_240718.json``, Mistral NeMo), SentencePiece
v1 (``tokenizer.model.v1``, Mistral 7B v0.1/v0.2) and v3
(``mistral_instruct_tokenizer_240323.model.v3``, Mistral 7B v0.3).

The reference is mistral_common's own tokenizer object (``MistralTokenizer.from_file(...)
.instruct_tokenizer.tokenizer``), raw text encode without BOS/EOS. The corpus
(:func:`corpus`) is deterministic: hand-written sentences in 12 scripts, random draws from
each script's Unicode blocks (rare characters exercise SentencePiece's byte fallback and
Tekken's byte-level merges), source code, whitespace and newline runs, control-token
spellings, and mixtures of all of these.
"""

from __future__ import annotations

import random
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converter.tokenizers import from_sentencepiece, from_tekken  # noqa: E402
from cpullm.gguf import GGUFFile  # noqa: E402
from cpullm.gguf.writer import write_gguf  # noqa: E402
from cpullm.tokenizer import Tokenizer  # noqa: E402

mc = pytest.importorskip("mistral_common")
DATA = Path(mc.__file__).parent / "data"

FILES = {
    "tekken": "tekken_240718.json",
    "spm-v1": "tokenizer.model.v1",
    "spm-v3": "mistral_instruct_tokenizer_240323.model.v3",
}

# ---- corpus -------------------------------------------------------------------------------

SAMPLES: dict[str, list[str]] = {
    "latin": [
        "Déjà vu: l'été à Montréal était très chaud, n'est-ce pas ?",
        "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Mädchen.",
        "¿Dónde está la biblioteca? ¡Mañana será otro día! Añoranza, pingüino.",
        "Ação, coração, não, João e a mãe comeram pão.",
        "Żółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "Ærøskøbing, Åland, Œuvre, naïve café, façade, coöperate, Zoë.",
        "Türkçe: ığdır, şeker, çiçek, ötücü kuş. Tiếng Việt: người, được, không.",
    ],
    "cyrillic": [
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Москва — столица России. Ёлка, йогурт, щука, объявление.",
        "Україна: їжак, ґанок, європейський. Беларусь: ўсход.",
        "Здравствуйте! Как дела? ПРИВЕТ МИР.",
    ],
    "greek": [
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Καλημέρα κόσμε!",
        "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. ΑΒΓΔ αβγδ ΐΰ.",
        "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    ],
    "cjk": [
        "東京は日本の首都です。今日はいい天気ですね！",
        "我能吞下玻璃而不伤身体。北京欢迎你，中华人民共和国。",
        "ひらがな、カタカナ、漢字を混ぜた文章：ｶﾀｶﾅ（半角）とＡＢＣ（全角）。",
        "香港、臺灣、龍、體、鬱、𠀀𠀁 (CJK Extension B).",
    ],
    "thai": [
        "ภาษาไทยเป็นภาษาที่สวยงาม สวัสดีครับ ขอบคุณมากค่ะ",
        "กรุงเทพมหานคร อมรรัตนโกสินทร์ มหินทรายุธยา",
        "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า ๑๒๓๔๕",
    ],
    "arabic": [
        "مرحبا بالعالم! اللغة العربية جميلة جداً.",
        "القاهرة هي عاصمة مصر، وعدد سكانها ١٠٠ مليون نسمة.",
        "שלום עולם — עברית משמאל לימין? לא, מימין לשמאל.",
        "فارسی: سلام دنیا، گچ، پژوهش. اردو: یہ ایک مثال ہے۔",
    ],
    "hindi": [
        "नमस्ते दुनिया! हिन्दी भारत की राजभाषा है।",
        "क्षत्रिय, ज्ञान, श्रृंगार, द्वार, अर्द्ध — संयुक्ताक्षर। १२३४",
        "বাংলা ভাষা সুন্দর। தமிழ் மொழி. ગુજરાતી. ਪੰਜਾਬੀ.",
    ],
    "korean": [
        "안녕하세요, 세계! 한국어는 아름다운 언어입니다.",
        "서울특별시 강남구 테헤란로 123, 대한민국. ㄱㄴㄷ ㅏㅑㅓ",
        "다람쥐 헌 쳇바퀴에 타고파. 똠방각하 펲시콜라 쀍",
    ],
    "emoji": [
        "I love it 😀😃😄 so much 🎉🎊!",
        "Family: 👨‍👩‍👧‍👦, flags: 🇫🇷🇯🇵🇺🇸, skin tones: 👍🏽👋🏿.",
        "Weather ☀️🌧️⛈️ ❤️‍🔥 ✅ ❌ ⚠️ 🧑‍💻 🏳️‍🌈",
        "math ∑∫√∞≈≠≤≥ arrows ←→↑↓ ⇒ box ┌─┐│└┘ dingbats ✓✗★☆",
    ],
    "code": [
        "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        '{"name": "cpullm", "version": "0.1.0", "deps": ["numpy", "numba"]}',
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "const f = async (x) => { await fetch(`/api/${x}`); };  // TODO: error handling",
        "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![1, 2, 3];\n}",
        "<div class=\"a\"><p>Hello &amp; goodbye</p></div>\r\n",
        "x = [i**2 for i in range(10) if i % 2 == 0]  # squares\n\n\n",
        "    if (a && b || !c) { return x->y; } else if (p != NULL) { *p = 0x7fff; }",
    ],
    "whitespace": [
        "   leading spaces", "trailing spaces   ", "\n\nleading newlines", "a\n\n\n\nb",
        "tabs\t\there\t", " \t \n \r\n mixed", "    ", "\n", "\t", " ", "a  b   c    d",
        "line1\r\nline2\r\n\r\n", "\u00a0non-breaking\u00a0space\u2009thin\u3000ideographic",
        "word \n word  \n\n  word", "\n \n \n ", "end with newline\n",
    ],
    "special": [
        "[INST] hi [/INST]", "<s>foo</s>", "<unk> <pad>", "[/INST]", "[INST]",
        "[AVAILABLE_TOOLS][TOOL_CALLS]", "<SPECIAL_10>", "<0x41>", "▁already▁escaped",
        "don't I'M you'LL we've 12345678 3.14159 1,000,000",
    ],
}

# (lo, hi) code point ranges per script, for random draws
BLOCKS: dict[str, list[tuple[int, int]]] = {
    "latin": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x17F), (0x1E00, 0x1EFF)],
    "cyrillic": [(0x400, 0x4FF)],
    "greek": [(0x370, 0x3FF), (0x1F00, 0x1FFF)],
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xFF00, 0xFFEF), (0x20000, 0x2A6DF)],
    "thai": [(0xE01, 0xE5B)],
    "arabic": [(0x600, 0x6FF), (0x5D0, 0x5EA)],
    "hindi": [(0x900, 0x97F), (0x980, 0x9FF)],
    "korean": [(0xAC00, 0xD7A3), (0x3131, 0x318E)],
    "emoji": [(0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x2600, 0x27BF), (0x1F900, 0x1F9FF)],
    "code": [(0x21, 0x7E)],
}
_WS = [" ", "  ", "\n", "\n\n", "\t", " \n", "\r\n", "   ", "\n\n\n"]


def _rand_word(rng: random.Random, script: str) -> str:
    lo, hi = rng.choice(BLOCKS[script])
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))


@cache
def corpus() -> tuple[tuple[str, str], ...]:
    """(script, text) pairs: every sample, random-character strings per script, and mixtures.
    Deterministic (fixed seed)."""
    rng = random.Random(20240718)
    out: list[tuple[str, str]] = [(s, t) for s, ts in SAMPLES.items() for t in ts]
    for script in BLOCKS:  # random words of one script with whitespace between
        for _ in range(30):
            words = [_rand_word(rng, script) for _ in range(rng.randint(1, 6))]
            text = words[0]
            for w in words[1:]:
                text += rng.choice(_WS[:3] if rng.random() < 0.8 else _WS) + w
            out.append((script, text))
    all_samples = [t for ts in SAMPLES.values() for t in ts]
    for _ in range(120):  # mixtures: slices of samples, random words, whitespace runs
        parts = []
        for _ in range(rng.randint(2, 5)):
            r = rng.random()
            if r < 0.5:
                t = rng.choice(all_samples)
                a = rng.randint(0, len(t))
                parts.append(t[a : a + rng.randint(1, 40)])
            elif r < 0.8:
                parts.append(_rand_word(rng, rng.choice(list(BLOCKS))))
            else:
                parts.append(rng.choice(_WS) * rng.randint(1, 4))
        out.append(("mixed", "".join(parts)))
    for n in (1, 2, 3, 7, 16, 33):  # pure whitespace runs
        for ws in (" ", "\n", "\t", " \n", "\r\n"):
            out.append(("whitespace", ws * n))
    return tuple(out)


def texts() -> list[str]:
    return [t for _, t in corpus()]


# ---- tokenizers ---------------------------------------------------------------------------


@cache
def reference(kind: str):
    """mistral_common's raw tokenizer (Tekkenizer / SentencePieceTokenizer)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(DATA / FILES[kind])).instruct_tokenizer.tokenizer


def metadata(kind: str) -> dict:
    path = DATA / FILES[kind]
    return from_tekken(path) if kind == "tekken" else from_sentencepiece(path)


@cache
def cpullm_tokenizer(kind: str) -> Tokenizer:
    return Tokenizer.from_metadata(metadata(kind))


def test_corpus_coverage():
    c = corpus()
    scripts = {s for s, _ in c}
    assert len(c) >= 500
    assert len(scripts - {"mixed", "special"}) >= 10, scripts
    for want in ("latin", "cyrillic", "greek", "cjk", "thai", "arabic", "hindi", "korean",
                 "emoji", "code", "whitespace"):
        assert want in scripts


@pytest.mark.parametrize("kind", list(FILES))
def test_ids_match_mistral_common(kind):
    ref = reference(kind)
    tok = cpullm_tokenizer(kind)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (ref.bos_id, ref.eos_id, ref.n_words)
    bad = []
    n_tokens = 0
    for s in texts():
        want = ref.encode(s, bos=False, eos=False)
        got = tok.encode(s, add_bos=False)
        n_tokens += len(want)
        if got != want:
            bad.append((s, got, want))
    assert not bad, f"{len(bad)} of {len(texts())} strings differ, first: {bad[0]!r}"
    assert tok.encode("hi")[:1] == [ref.bos_id]
    print(f"\n{kind}: {len(texts())} strings, {n_tokens} tokens, all ids equal")


@pytest.mark.parametrize("kind", list(FILES))
def test_decode_round_trip(kind):
    ref = reference(kind)
    tok = cpullm_tokenizer(kind)
    for s in texts():
        ids = ref.encode(s, bos=False, eos=False)
        got = tok.decode(ids)
        assert got == ref.decode(ids), s
        if kind == "tekken":  # byte-level: every string comes back
            assert got == s
    # with BOS/EOS (dropped by both) and per-token streaming through token_bytes
    s = "Hello 東京 😀 \n\n  x"
    ids = ref.encode(s, bos=True, eos=True)
    assert tok.decode(ids) == ref.decode(ids) == s
    raw = b"".join(tok.token_bytes(t) for t in ref.encode(s, bos=False, eos=False))
    assert raw.decode("utf-8").lstrip(" ") == s.lstrip(" ")


def test_spm_round_trip_is_lossless_where_sentencepiece_is():
    """SentencePiece (identity normalization here) decodes its own encoding back to the text,
    except that a leading space is folded into the dummy prefix; cpullm does the same."""
    for kind in ("spm-v1", "spm-v3"):
        ref, tok = reference(kind), cpullm_tokenizer(kind)
        for s in texts():
            ids = tok.encode(s, add_bos=False)
            assert tok.decode(ids) == ref.decode(ids), (kind, s)


@pytest.mark.parametrize("kind", list(FILES))
def test_control_tokens(kind):
    """[INST]/[/INST] (v3, Tekken) are control ids in the vocabulary; typed in text they stay
    text unless parse_special is asked for."""
    ref = reference(kind)
    tok = cpullm_tokenizer(kind)
    s = "[INST] hi [/INST]"
    assert tok.encode(s, add_bos=False) == ref.encode(s, bos=False, eos=False)
    if kind == "spm-v1":
        assert tok.token_id("[INST]") is None
        return
    for name in ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]"):
        tid = ref.get_special_token(name) if hasattr(ref, "get_special_token") else None
        assert tok.token_id(name) == tid and tok.is_control(tid), name
        assert tid not in tok.encode(f"a {name} b", add_bos=False)


@pytest.mark.parametrize("kind", list(FILES))
def test_from_written_gguf(kind, tmp_path):
    """The same ids after a round trip through a GGUF file (the converter's metadata, written
    by cpullm's GGUF writer the way the converter writes it, read back by the reader)."""
    md = {k: v for k, v in metadata(kind).items()}
    md["general.architecture"] = "llama"
    path = write_gguf(tmp_path / "t.gguf", md, {})
    f = GGUFFile(path)
    tok = Tokenizer.from_metadata(f.metadata)
    ref = reference(kind)
    for s in texts()[::4]:
        assert tok.encode(s, add_bos=False) == ref.encode(s, bos=False, eos=False), s
