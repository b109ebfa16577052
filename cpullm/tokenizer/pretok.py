"""Pre-tokenizer regexes for byte-level BPE, keyed by ``tokenizer.ggml.pre``.

Each entry is ONE regex (tiktoken runs a single pattern). Where llama.cpp / HF apply
a sequence of splits, the sequence is folded into one equivalent pattern.
"""

from __future__ import annotations

from cpullm.errors import TokenizerError

# GPT-2 (HF ByteLevel(use_regex=True), tiktoken r50k_base).
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SmolLM / StarCoder: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)].
# Folded into one regex: every digit is its own piece, so ` ?\p{N}+` becomes `\p{N}` (no
# space can join a digit), and a digit ends the preceding split, so the whitespace
# lookahead `\s+(?!\S)` must accept a following digit as "end of piece":
# `(?![^\s\p{N}])`. E.g. "a   5" -> "a", "   ", "5" (not "a", "  ", " ", "5").
SMOLLM = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# Llama 3 (== tiktoken cl100k_base).
LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2: Llama 3 with single digits.
QWEN2 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Mistral Tekken: "pattern" of mistral_common's data/tekken_240718.json.
TEKKEN = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"""
    r"""\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {
    "default": GPT2,
    "gpt2": GPT2,
    "gpt-2": GPT2,
    "smollm": SMOLLM,
    "starcoder": SMOLLM,
    "refact": SMOLLM,
    "llama-bpe": LLAMA3,
    "llama3": LLAMA3,
    "qwen2": QWEN2,
    "tekken": TEKKEN,
}


def pattern_for(pre: str | None) -> str:
    """The split regex for pre-tokenizer name ``pre`` (None or "" means the GPT-2 default)."""
    if not pre:
        return GPT2
    try:
        return PATTERNS[pre]
    except KeyError:
        known = ", ".join(sorted(PATTERNS))
        raise TokenizerError(
            f"unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {known}"
        ) from None
