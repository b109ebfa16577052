"""Token generation and UTF-8-safe streaming of the generated text.

    stats = GenerationStats()
    dec = StreamDecoder(model.tokenizer, at_start=False)   # text that follows the prompt
    for tid in generate(model, prompt_ids, max_tokens=64, temperature=0.8, seed=1, stats=stats):
        print(dec.push(tid), end="", flush=True)
    print(dec.flush())

With stop strings, use ``TextStream`` (a ``StreamDecoder`` that also holds back text that
might begin a stop string, and never emits the stop string itself):

    out = TextStream(model.tokenizer, stop=["\n\n"], at_start=False)
    sampler = Sampler(SamplingParams(temperature=0.7, seed=1), model.config.vocab_size)
    for tid in generate(model, prompt_ids, 64, sampler=sampler):
        print(out.push(tid), end="")
        if out.stopped:
            break
    print(out.flush())
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cpullm.errors import CpullmError
from cpullm.gguf.constants import TokenType
from cpullm.sampler import Sampler, SamplingParams


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
    sampler: Sampler | None = None,
    extra_stop_ids: Iterable[int] = (),
    context_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt_ids``.

    The prompt is prefilled with one ``eval``; then each chosen token is fed back. With
    ``stop_at_eos``, an EOS/EOT token (or one of ``extra_stop_ids``) ends generation and
    is not yielded. ``reset`` starts from an empty context (else the prompt continues what
    the model already holds; ``context_ids``, those held ids, let the penalties see
    them too). ``sampler`` chooses the tokens (its penalties see the prompt
    and the tokens generated so far); without one, plain temperature sampling with
    ``seed`` (or ``rng``). Arguments are checked here, before the first token is asked for."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise CpullmError("the prompt is empty: it needs at least one token")
    if max_tokens < 0:
        raise CpullmError(f"the number of tokens to generate must be >= 0, got {max_tokens}")
    if sampler is None:
        if not temperature >= 0:
            raise CpullmError(f"temperature must be >= 0, got {temperature}")
        sampler = Sampler(SamplingParams.plain(temperature), model.config.vocab_size, rng=rng)
        if rng is None:
            sampler.reseed(seed)
    past = 0 if reset else model.n_past
    need = past + len(prompt) + max_tokens
    sliding = getattr(model, "auto_slide", False) or getattr(model, "rolling", False)
    if need > model.n_ctx and not sliding:
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
    stops = stop_ids(model.tokenizer) if stop_at_eos else set()
    stops |= {int(t) for t in extra_stop_ids}
    if stats is None:
        stats = GenerationStats()
    if reset:
        model.reset()
    return _run(model, prompt, max_tokens, sampler, stops, stats, list(context_ids))


def _run(model, prompt, max_tokens, sampler, stops, stats, context) -> Iterator[int]:
    stats.prompt_tokens = len(prompt)
    if max_tokens == 0:
        stats.stop_reason = "length"
        return
    history = context + prompt  # what the penalties look at
    clock = time.perf_counter
    t0 = clock()
    tid = sampler.sample(model.eval(prompt), history)
    stats.prefill_s = clock() - t0
    for i in range(max_tokens):
        if tid in stops:
            stats.stop_reason = "eos"
            return
        stats.generated += 1
        history.append(tid)
        yield tid
        if i == max_tokens - 1:
            break
        t0 = clock()
        tid = sampler.sample(model.eval((tid,)), history)
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


class TextStream:
    """A :class:`StreamDecoder` that honours stop strings.

    ``push(tid)`` returns the text that is now safe to show: valid UTF-8, and never a part
    that could still turn into a stop string (a suffix that is a prefix of one is held
    back until the next tokens decide). When a stop string completes, the text before it
    is returned, ``stopped`` becomes True (``stop`` says which one) and every later push
    returns "". ``"".join(pieces) + flush()`` equals the batch decode cut at the first
    stop string."""

    def __init__(self, tokenizer, stop: Iterable[str] = (), at_start: bool = True) -> None:
        self._dec = StreamDecoder(tokenizer, at_start=at_start)
        self.stops = [s for s in dict.fromkeys(stop) if s]
        self._held = ""
        self.stopped = False
        self.stop: str | None = None
        self.text = ""  # everything emitted so far

    def push(self, tid: int) -> str:
        if self.stopped:
            return ""
        return self._feed(self._dec.push(tid))

    def _feed(self, piece: str) -> str:
        if not piece:
            return ""
        if not self.stops:
            self.text += piece
            return piece
        buf = self._held + piece
        hit, at = None, len(buf)
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and i < at:
                hit, at = s, i
        if hit is not None:
            self.stopped, self.stop, self._held = True, hit, ""
            out = buf[:at]
        else:
            keep = _held_back(buf, self.stops)
            out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self.text += out
        return out

    def flush(self) -> str:
        """The rest: held-back text that did not become a stop string (and an incomplete
        character as U+FFFD)."""
        if self.stopped:
            return ""
        out = self._feed(self._dec.flush())
        out += self._held
        self.text += self._held
        self._held = ""
        return out


def _held_back(buf: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(buf)), best, -1):
            if buf.endswith(s[:k]):
                best = k
                break
    return best
