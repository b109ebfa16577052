"""Turn logits into a token id.

    params = SamplingParams(temperature=0.7, top_p=0.9, seed=1)
    sampler = Sampler(params, vocab_size=model.config.vocab_size)
    tid = sampler.sample(logits, history)    # history: ids so far (for the penalties)

The chain, in llama.cpp's default order: logit bias -> repetition / frequency / presence
penalties over the last ``repeat_last_n`` ids of the history -> (temperature 0: argmax)
-> top-k -> top-p -> min-p -> temperature -> a draw from the sampler's own seeded
``np.random.Generator`` (same seed, same history, same logits: same tokens).

Each step is a small pure function over logits, usable and tested on its own. With
``logprobs=N`` the sampler also records, in ``sampler.last``, the chosen token's log
probability and the N likeliest alternatives, both under the model's own distribution
(log-softmax of the raw logits, before bias, penalties and truncation).

The older one-liners ``make_rng`` / ``probabilities`` / ``sample`` (temperature only)
remain for simple callers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpullm.errors import CpullmError

MAX_LOGPROBS = 20


class SamplingError(CpullmError, ValueError):
    """A sampling setting is out of range (the message names it and the allowed range)."""


# ---- settings ------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


@dataclass
class SamplingParams:
    """How to choose each token. Defaults follow llama.cpp; ``SamplingParams.greedy()`` is
    the deterministic argmax. Neutral values switch a step off: ``top_k=0``,
    ``top_p=1``, ``min_p=0``, ``repeat_penalty=1``, penalties 0."""

    temperature: float = 0.8  # 0: argmax (greedy); higher: more varied
    top_k: int = 40  # keep the k likeliest tokens (0: all)
    top_p: float = 0.95  # keep the smallest set whose probability reaches p (1: all)
    min_p: float = 0.05  # drop tokens less likely than min_p x the likeliest (0: none)
    repeat_penalty: float = 1.0  # divide positive / multiply negative logits of seen ids
    repeat_last_n: int = 64  # how many recent ids the penalties look at (-1: all, 0: none)
    frequency_penalty: float = 0.0  # minus this x (times the id was seen)
    presence_penalty: float = 0.0  # minus this once if the id was seen
    logit_bias: dict[int, float] = field(default_factory=dict)  # id -> added to its logit
    seed: int | None = None  # None: fresh entropy
    logprobs: int = 0  # record this many top alternatives per token (0: off)

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> SamplingError:
            return SamplingError(f"{name} must be {want}, got {getattr(self, name)!r}")

        t = self.temperature
        if not _is_num(t) or not math.isfinite(t) or t < 0:
            raise bad("temperature", "a number >= 0")
        self.temperature = float(t)
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0: off)")
        self.top_k = int(self.top_k)
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "a number in (0, 1] (1: off)")
        self.top_p = float(self.top_p)
        if not _is_num(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "a number in [0, 1] (0: off)")
        self.min_p = float(self.min_p)
        rp = self.repeat_penalty
        if not _is_num(rp) or not math.isfinite(rp) or rp <= 0:
            raise bad("repeat_penalty", "a number > 0 (1: off)")
        self.repeat_penalty = float(rp)
        if not _is_int(self.repeat_last_n) or self.repeat_last_n < -1:
            raise bad("repeat_last_n", "an integer >= -1 (-1: the whole history, 0: off)")
        self.repeat_last_n = int(self.repeat_last_n)
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not _is_num(v) or not -2 <= v <= 2:
                raise bad(name, "a number in [-2, 2] (0: off)")
            setattr(self, name, float(v))
        self.logit_bias = _check_bias(self.logit_bias)
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise bad("seed", "an integer >= 0 or None")
        if not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad("logprobs", f"an integer in [0, {MAX_LOGPROBS}] (0: off)")
        self.logprobs = int(self.logprobs)

    @classmethod
    def greedy(cls, **kw) -> SamplingParams:
        """Always the likeliest token (after bias and penalties)."""
        kw.setdefault("temperature", 0.0)
        return cls(**kw)

    @classmethod
    def plain(cls, temperature: float, seed: int | None = None, **kw) -> SamplingParams:
        """Temperature only: no truncation (top-k, top-p, min-p off)."""
        kw.update(temperature=temperature, seed=seed)
        kw.setdefault("top_k", 0)
        kw.setdefault("top_p", 1.0)
        kw.setdefault("min_p", 0.0)
        return cls(**kw)


def _check_bias(bias: Any) -> dict[int, float]:
    if bias is None:
        return {}
    if not isinstance(bias, Mapping):
        raise SamplingError(f"logit_bias must be a mapping of token id to number, got {bias!r}")
    out: dict[int, float] = {}
    for k, v in bias.items():
        if isinstance(k, str) and k.strip().lstrip("-").isdigit():  # JSON object keys
            k = int(k)
        if not _is_int(k) or k < 0:
            raise SamplingError(f"logit_bias keys must be token ids >= 0, got {k!r}")
        if not _is_num(v) or math.isnan(v) or v == math.inf:
            raise SamplingError(
                f"logit_bias[{k}] must be a finite number (or -inf to ban it), got {v!r}"
            )
        out[int(k)] = float(v)
    return out


# ---- the steps: pure functions ---------------------------------------------------------------


def apply_logit_bias(logits: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    """``logits`` plus ``bias[id]`` at each id (a new array)."""
    out = np.array(logits, dtype=np.float64)
    if bias:
        ids = np.fromiter(bias.keys(), np.int64, len(bias))
        out[ids] += np.fromiter(bias.values(), np.float64, len(bias))
    return out


def apply_penalties(
    logits: np.ndarray,
    history: Sequence[int] | np.ndarray,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> np.ndarray:
    """Penalize ids seen in ``history`` (a new array). Repetition (CTRL-style): a positive
    logit is divided by ``repeat_penalty``, a negative one multiplied. Then (OpenAI-style)
    ``frequency_penalty`` x count + ``presence_penalty`` is subtracted."""
    out = np.array(logits, dtype=np.float64)
    if len(history) == 0:
        return out
    ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
    v = out[ids]
    if repeat_penalty != 1.0:
        v = np.where(v > 0, v / repeat_penalty, v * repeat_penalty)
    v = v - counts * frequency_penalty - presence_penalty
    out[ids] = v
    return out


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` largest logits, largest first (ties: lower id first). k=0: all."""
    n = len(logits)
    if 0 < k < n:
        part = np.argpartition(-logits, k - 1)[:k]
        return part[np.lexsort((part, -logits[part]))]
    return np.lexsort((np.arange(n), -logits))


def top_p_count(sorted_logits: np.ndarray, p: float) -> int:
    """How many of ``sorted_logits`` (descending) the nucleus keeps: the fewest whose
    probability sums to at least ``p`` (at least one)."""
    if p >= 1.0:
        return len(sorted_logits)
    probs = _softmax(sorted_logits)
    cum = np.cumsum(probs)
    return int(min(np.searchsorted(cum, p - 1e-9, side="left") + 1, len(sorted_logits)))


def min_p_count(sorted_logits: np.ndarray, min_p: float) -> int:
    """How many of ``sorted_logits`` (descending) have probability >= ``min_p`` x the
    likeliest one's (at least one)."""
    if min_p <= 0.0 or len(sorted_logits) == 0:
        return len(sorted_logits)
    cut = sorted_logits[0] + math.log(min_p)
    return max(1, int(np.count_nonzero(sorted_logits >= cut)))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from ``probs`` (need not be normalized) with one ``rng.random()``."""
    cdf = np.cumsum(probs)
    r = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, r, side="right"), len(cdf) - 1))


# ---- the sampler ------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    """The chosen token's log probability and the likeliest alternatives (id, logprob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    """Applies :class:`SamplingParams` to logits; owns its seeded random generator."""

    def __init__(
        self,
        params: SamplingParams | None = None,
        vocab_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.params = params if params is not None else SamplingParams()
        self.vocab_size = vocab_size
        if vocab_size is not None:
            bad = [k for k in self.params.logit_bias if k >= vocab_size]
            if bad:
                raise SamplingError(
                    f"logit_bias token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})"
                )
        self.rng = rng if rng is not None else np.random.default_rng(self.params.seed)
        self.last: TokenLogprob | None = None

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()) -> int:
        """The next token id for ``logits`` (vocab,), given the ids so far."""
        p = self.params
        if self.vocab_size is not None and len(logits) != self.vocab_size:
            raise SamplingError(f"expected {self.vocab_size} logits, got {len(logits)}")
        x = apply_logit_bias(logits, p.logit_bias)
        if p.repeat_last_n != 0 and (
            p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        ):
            recent = history if p.repeat_last_n < 0 else history[-p.repeat_last_n :]
            x = apply_penalties(
                x, recent, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
        tid = self._choose(x)
        if p.logprobs:
            self.last = self._logprobs(logits, tid)
        return tid

    def _choose(self, x: np.ndarray) -> int:
        p = self.params
        if not np.isfinite(x).any():
            return int(np.argmax(x))  # nothing sensible to sample from
        if p.temperature == 0.0:
            return int(np.argmax(x))
        if not np.isfinite(x).all():
            x = np.where(np.isnan(x), -np.inf, x)
            x = np.minimum(x, np.finfo(np.float64).max)  # +inf: treat as a huge logit
        if p.top_k == 0 and p.top_p >= 1.0 and p.min_p <= 0.0:  # no truncation: no sort
            return draw(_softmax(x / p.temperature), self.rng)
        ids = top_k_ids(x, p.top_k)
        v = x[ids]
        finite = int(np.count_nonzero(np.isfinite(v)))  # -inf logits sort last
        ids, v = ids[:finite], v[:finite]
        n = top_p_count(v, p.top_p)
        n = min(n, min_p_count(v[:n], p.min_p))
        ids, v = ids[:n], v[:n]
        return int(ids[draw(_softmax(v / p.temperature), self.rng)])

    def _logprobs(self, logits: np.ndarray, tid: int) -> TokenLogprob:
        lp = log_softmax(logits)
        k = self.params.logprobs
        top = top_k_ids(lp, k)[:k]
        return TokenLogprob(
            token=tid, logprob=float(lp[tid]), top=[(int(i), float(lp[i])) for i in top]
        )


# ---- temperature-only one-liners ---------------------------------------------------------------


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A generator seeded with ``seed`` (None: fresh entropy)."""
    return np.random.default_rng(seed)


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64 (temperature > 0)."""
    return _softmax(np.asarray(logits, dtype=np.float64) / temperature)


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator | None = None) -> int:
    """One token id: the argmax when ``temperature`` is 0, else a draw from
    softmax(logits / temperature) using ``rng``."""
    if not temperature >= 0:  # also catches NaN
        raise CpullmError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return int(np.argmax(logits))
    if rng is None:
        raise CpullmError("sampling with temperature > 0 needs a random generator")
    p = probabilities(logits, temperature)
    if not np.isfinite(p).all():
        # inf/NaN logits: fall back to the argmax rather than sampling garbage
        return int(np.argmax(logits))
    return draw(p, rng)
