"""``ChatSession``: a multi-turn conversation that keeps the model's KV cache across turns.

    chat = ChatSession(model, system="You are terse.", params=SamplingParams(seed=1))
    for piece in chat.send("Hello!"):
        print(piece, end="", flush=True)
    print(chat.last)        # TurnStats: prompt tokens, reused, prefilled, reply tokens, ...

Each turn renders the whole conversation with the chat template, finds the longest common
token prefix with what the cache already holds, and prefills only the tokens after it. The
exact ids of each generated reply are remembered, so the next turn's prompt repeats them
token for token and the cache is reused up to the end of the last reply.

A conversation longer than the context slides: the model drops the oldest tokens after
the pinned system prompt (``Model.auto_slide``, ``Model.n_keep``) and the chat goes on in
constant memory; each turn's stats say how many tokens were dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cpullm.errors import CpullmError
from cpullm.generate import GenerationStats, TextStream, generate, stop_ids
from cpullm.sampler import Sampler, SamplingParams
from cpullm.templates import ChatTemplate


class ContextFullError(CpullmError):
    """The conversation does not fit the model's context."""


@dataclass
class TurnStats:
    """What one turn cost."""

    prompt_tokens: int = 0  # the whole rendered conversation
    reused: int = 0  # of those, already in the cache
    prefilled: int = 0  # of those, evaluated this turn (prompt_tokens - reused)
    reply_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""  # "eos", "stop" (a stop string), "length", "context", "interrupted"
    dropped: int = 0  # old tokens the sliding cache dropped during this turn

    @property
    def reply_tps(self) -> float:
        return self.reply_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prefilled / self.prefill_s if self.prefill_s > 0 else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ChatSession:
    """A conversation with one model. Not thread-safe: one turn at a time."""

    def __init__(
        self,
        model,
        system: str | None = None,
        params: SamplingParams | None = None,
        template: str | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.template = ChatTemplate.for_model(model.metadata, self.tokenizer, name=template)
        self.params = params if params is not None else SamplingParams()
        self.sampler = Sampler(self.params, model.config.vocab_size)
        self.max_tokens = max_tokens
        self.stop = list(stop)
        self.system = system
        self.messages: list[dict[str, str]] = []
        self._reply_ids: dict[int, list[int]] = {}  # message index -> generated ids
        self._cache: list[int] = []  # every id fed since the cache was last empty, in order
        self._stop_ids = stop_ids(self.tokenizer) | self.template.stop_ids()
        self.last = TurnStats()
        self.total_prefilled = 0
        model.auto_slide = True
        self.reset(system)

    # ---- conversation ---------------------------------------------------------------------

    def reset(self, system: str | None = ...) -> None:  # type: ignore[assignment]
        """Forget the conversation (and, with ``system``, set a new system prompt; None:
        no system prompt). The cache is kept: the next turn reuses whatever prefix fits."""
        if system is not ...:
            self.system = system or None
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self._reply_ids = {}
        self.model.n_keep = self._pinned_length()

    def _pinned_length(self) -> int:
        """Tokens the sliding cache never drops: the rendered system prompt (at most half
        the context, so there is always room to slide)."""
        if not self.system:
            return 0
        sys_ids = self.template.encode(self.messages[:1], add_generation_prompt=False)
        with_user = self.template.encode(
            self.messages[:1] + [{"role": "user", "content": "x"}], add_generation_prompt=False
        )
        n = common_prefix(sys_ids, with_user)
        return min(n, self.model.capacity // 2)

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt and start a new conversation."""
        self.reset(text)

    def conversation(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]

    def to_json(self) -> dict:
        return {
            "template": self.template.name,
            "messages": self.conversation(),
            "sampling": asdict(self.params),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation as JSON (atomically)."""
        path = Path(path).expanduser()
        tmp = path.with_name(path.name + ".partial")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            raise CpullmError(f"cannot save to {path}: {e.strerror or e}") from None
        return path

    # ---- a turn -----------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[dict[str, str]] | None = None) -> list[int]:
        """The token ids of the conversation plus the assistant's generation prompt."""
        msgs = self.messages if messages is None else messages
        return self.template.encode(msgs, add_generation_prompt=True,
                                    content_ids=self._reply_ids)

    def send(self, text: str, max_tokens: int | None = None) -> Iterator[str]:
        """Add a user message and stream the reply as text pieces. The reply is added to
        the conversation when the stream ends, or is closed early (a partial reply is kept;
        an empty one drops the user message too). Errors (the conversation does not fit)
        are raised here, before anything runs."""
        if not isinstance(text, str):
            raise CpullmError("a chat message must be a string")
        msgs = self.messages + [{"role": "user", "content": text}]
        ids = self.prompt_ids(msgs)
        ids = self._fit(ids)
        limit = self.max_tokens if max_tokens is None else max_tokens
        # with a sliding cache a reply is not bounded by the context; a default cap keeps a
        # model that never says EOS from talking forever
        budget = self.model.n_ctx // 2 if self.model.auto_slide else self.model.n_ctx - len(ids)
        n = budget if limit is None else min(limit, budget)
        self.messages = msgs
        return self._turn(ids, n, budget)

    def reply(self, text: str, max_tokens: int | None = None) -> str:
        """``send`` without streaming: the whole reply."""
        return "".join(self.send(text, max_tokens))

    def _fit(self, ids: list[int]) -> list[int]:
        """Check the prompt can run. With the sliding cache anything longer than the
        pinned prefix fits (old tokens are dropped and the stats say so); without it, a
        conversation that leaves no room for a reply is an error."""
        n_ctx = self.model.n_ctx
        if self.model.auto_slide:
            return ids
        if len(ids) >= n_ctx:
            raise ContextFullError(
                f"the conversation is {len(ids)} tokens and the context holds {n_ctx} "
                f"(with room for a reply); start over (/reset) or raise --ctx"
            )
        return ids

    def _rewind(self, n: int) -> int:
        """Keep the first ``n`` fed tokens and forget the rest; returns the n kept (0 when
        the cache had to be emptied because the tokens to drop were already slid out)."""
        m = self.model
        back = len(self._cache) - n
        if m.can_rewind(m.n_past - back) and m.n_past - back >= m.n_keep:
            m.rewind(m.n_past - back)
        else:
            m.reset()
            n = 0
        del self._cache[n:]
        return n

    def _turn(self, ids: list[int], n: int, budget: int) -> Iterator[str]:
        st = self.last = TurnStats(prompt_tokens=len(ids))
        model = self.model
        if model.n_past == 0:
            self._cache = []
        # keep at least one token to evaluate: eval returns the logits of its last token
        keep = min(common_prefix(self._cache, ids), len(ids) - 1)
        keep = self._rewind(keep)
        dropped0 = model.n_dropped
        st.reused = keep
        st.prefilled = len(ids) - keep
        self.total_prefilled += st.prefilled
        gstats = GenerationStats()
        out = TextStream(self.tokenizer, stop=self.stop, at_start=True)
        reply: list[int] = []
        text_parts: list[str] = []
        fed = list(ids)
        gen = generate(model, ids[keep:], n, reset=False, stats=gstats, sampler=self.sampler,
                       extra_stop_ids=self._stop_ids, context_ids=ids[:keep])
        finished = False
        try:
            for tid in gen:
                reply.append(tid)
                fed.append(tid)
                piece = out.push(tid)
                if piece:
                    text_parts.append(piece)
                    yield piece
                if out.stopped:
                    st.stop_reason = "stop"
                    break
            tail = out.flush()
            if tail:
                text_parts.append(tail)
                yield tail
            finished = True
        finally:
            gen.close()
            st.prefill_s = gstats.prefill_s
            st.decode_s = gstats.decode_s
            st.reply_tokens = len(reply)
            st.dropped = model.n_dropped - dropped0
            if not st.stop_reason:
                if not finished:
                    st.stop_reason = "interrupted"
                elif gstats.stop_reason == "length" and n == budget:
                    st.stop_reason = "context"
                else:
                    st.stop_reason = gstats.stop_reason or "length"
            # the tokens evaluated so far (the last sampled one usually is not): the cache
            # holds their tail, n_dropped of them having slid out
            self._cache = fed[: model.n_past + model.n_dropped]
            self._record(reply, "".join(text_parts), finished)

    def _record(self, reply: list[int], text: str, finished: bool) -> None:
        if not text.strip() and not finished:
            self.messages.pop()  # interrupted before any text: forget the question too
            return
        content = self.tokenizer.decode(reply) if reply else ""
        idx = len(self.messages)
        self.messages.append({"role": "assistant", "content": text})
        if content == text and reply:
            self._reply_ids[idx] = reply


# ---- the interactive loop (``cpullm chat``) ---------------------------------------------------

HELP = """commands:
  /help            this help
  /reset           forget the conversation (keeps the system prompt)
  /system TEXT     set the system prompt and start over (/system alone: show it)
  /save FILE       write the conversation as JSON
  /quit            leave (or Ctrl-D)
Ctrl-C stops a reply and keeps the conversation."""


def format_stats(st: TurnStats) -> str:
    parts = [
        f"{st.prefilled} new prompt tokens ({st.reused} cached, {st.prompt_tokens} in all)",
        f"{st.reply_tokens} reply tokens",
    ]
    if st.reply_tps:
        parts.append(f"{st.reply_tps:.1f} tok/s")
    note = {"interrupted": "interrupted", "context": "context full", "length": "length limit",
            "stop": "stop string"}.get(st.stop_reason)
    if note:
        parts.append(note)
    if st.dropped:
        parts.append(f"context full: dropped {st.dropped} old tokens")
    return "[" + ", ".join(parts) + "]"


def repl(session: ChatSession, out=None, err=None, read=input, prompt: str = ">>> ") -> None:
    """Read lines, answer them, until Ctrl-D (EOF) or /quit."""
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover
        pass

    def say(msg: str) -> None:
        err.write(msg + "\n")
        err.flush()

    while True:
        try:
            line = read(prompt)
        except EOFError:
            out.write("\n")
            out.flush()
            return
        except KeyboardInterrupt:
            out.write("\n")
            say("(Ctrl-D or /quit to leave)")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            arg = arg.strip()
            if cmd in ("/quit", "/exit", "/bye"):
                return
            if cmd == "/help":
                say(HELP)
            elif cmd == "/reset":
                session.reset()
                say("[conversation cleared]")
            elif cmd == "/system":
                if arg:
                    session.set_system(arg)
                    say("[system prompt set; conversation cleared]")
                else:
                    say(f"[system prompt: {session.system!r}]")
            elif cmd == "/save":
                if not arg:
                    say("usage: /save FILE")
                else:
                    try:
                        say(f"[saved {session.save(arg)}]")
                    except CpullmError as e:
                        say(f"error: {e}")
            else:
                say(f"unknown command {cmd}; /help lists them")
            continue
        stream = None
        try:
            stream = session.send(line)
            for piece in stream:
                out.write(piece)
                out.flush()
        except CpullmError as e:
            say(f"error: {e}")
            continue
        except KeyboardInterrupt:
            if stream is None:
                out.write("\n")
                continue
            stream.close()
        out.write("\n")
        out.flush()
        say(format_stats(session.last))
