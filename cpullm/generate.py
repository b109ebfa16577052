"""Token generation and UTF-8-safe streaming of the generated text.

    stats = GenerationStats()
    dec = StreamDecoder(model.tokenizer, at_start=False)   # text that follows the prompt
    for tid in generate(model, prompt_ids, max_tokens=64, temperature=0.8, seed=1, stats=stats):
        print(dec.push(tid), end="", flush=True)
    print(dec.flush())
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cpullm.errors import CpullmError
from cpullm.gguf.constants import TokenType
from cpullm.sampler import make_rng, sample


@dataclass
class GenerationStats:
    """Filled in by ``generate`` while it runs. Times cover the model's work only
    (eval + sampling), not what the consumer does with the tokens."""

    prompt_tokens: int = 0
    generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_evals: int = 0  # one-token evals after the prefill
    stop_reason: str = ""  # "eos", "length"; "" while running or when the consumer stopped

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_evals / self.decode_s if self.decode_s > 0 else 0.0


def stop_ids(tokenizer) -> set[int]:
    """Ids that end generation: the vocabulary's EOS and EOT."""
    return {t for t in (tokenizer.eos_id, tokenizer.eot_id) if t is not None}


def generate(
    model,
    prompt_ids: Sequence[int],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    *,
    rng: np.random.Generator | None = None,
    reset: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt_ids``.

    The prompt is prefilled with one ``eval``; then each chosen token is fed back. With
    ``stop_at_eos``, an EOS/EOT token ends generation and is not yielded. ``reset`` starts
    from an empty context (else the prompt continues what the model already holds).
    Arguments are checked here, before the first token is asked for."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise CpullmError("the prompt is empty: it needs at least one token")
    if max_tokens < 0:
        raise CpullmError(f"the number of tokens to generate must be >= 0, got {max_tokens}")
    if not temperature >= 0:
        raise CpullmError(f"temperature must be >= 0, got {temperature}")
    past = 0 if reset else model.n_past
    need = past + len(prompt) + max_tokens
    if need > model.n_ctx:
        held = f" + {past} tokens already in context" if past else ""
        raise CpullmError(
            f"the prompt ({len(prompt)} tokens){held} + {max_tokens} new tokens need a "
            f"context of {need}, but the context size is {model.n_ctx} (the model allows up "
            f"to {model.config.context_length}); lower -n or raise --ctx"
        )
    vocab = model.config.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise CpullmError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if rng is None:
        rng = make_rng(seed)
    stops = stop_ids(model.tokenizer) if stop_at_eos else set()
    if stats is None:
        stats = GenerationStats()
    if reset:
        model.reset()
    return _run(model, prompt, max_tokens, temperature, rng, stops, stats)


def _run(model, prompt, max_tokens, temperature, rng, stops, stats) -> Iterator[int]:
    stats.prompt_tokens = len(prompt)
    if max_tokens == 0:
        stats.stop_reason = "length"
        return
    clock = time.perf_counter
    t0 = clock()
    tid = sample(model.eval(prompt), temperature, rng)
    stats.prefill_s = clock() - t0
    for i in range(max_tokens):
        if tid in stops:
            stats.stop_reason = "eos"
            return
        stats.generated += 1
        yield tid
        if i == max_tokens - 1:
            break
        t0 = clock()
        tid = sample(model.eval((tid,)), temperature, rng)
        stats.decode_s += clock() - t0
        stats.decode_evals += 1
    stats.stop_reason = "length"


class StreamDecoder:
    """Turn token ids, one at a time, into text pieces that are always valid UTF-8.

    Bytes of an incomplete multibyte character (split across byte tokens) are held back
    until the character completes; control tokens give nothing. For ids that decode
    cleanly, ``"".join(pieces) + flush()`` equals ``tokenizer.decode(ids)`` when
    ``at_start`` (which, like ``decode``, drops the one space a SentencePiece space prefix
    put before the first word); pass ``at_start=False`` for text that continues a prompt."""

    def __init__(self, tokenizer, at_start: bool = True) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = at_start and bool(getattr(tokenizer, "add_space_prefix", False))

    def push(self, tid: int) -> str:
        """The text that token ``tid`` completes (possibly "")."""
        tok = self.tokenizer
        b = tok.token_bytes(tid)  # b"" for control tokens
        if not b:
            return ""
        if self._strip:
            self._strip = False
            if b[:1] == b" " and tok.token_types[int(tid)] != TokenType.BYTE:
                b = b[1:]
        return self._utf8.decode(b)

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in ids)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
