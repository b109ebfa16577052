"""Chat templates: a conversation (a list of ``{"role", "content"}`` messages) to token ids.

    tmpl = ChatTemplate.for_model(model.metadata, model.tokenizer)   # the file's, else built in
    ids = tmpl.encode(messages, add_generation_prompt=True)

The file's ``tokenizer.chat_template`` (a jinja2 template, as on Hugging Face) is rendered
only in jinja2's ``ImmutableSandboxedEnvironment``. When the file has none, a built-in
format is chosen from the vocabulary: ChatML (``<|im_start|>``), Mistral v1 (``[INST]`` is
plain text), Mistral v3 (``[INST]`` is a control token, SentencePiece) or Mistral tekken.

Message contents never become control tokens. The template is rendered with each
content replaced by a unique placeholder; the rendered skeleton is split into control
tokens and plain text, and each content is put back as plain text. So "<|im_start|>" typed
by a user stays the characters "<|im_start|>"; only the template's own text can emit
control tokens. Plain text runs (template text around a content, and the content) are
tokenized together, as a whole-text tokenizer would.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cpullm.errors import CpullmError
from cpullm.gguf.constants import Keys, TokenType

ROLES = ("system", "user", "assistant")


class TemplateError(CpullmError):
    """A chat template is malformed, unsafe, or refused the conversation."""


# ---- built-in formats ------------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral formats. The system prompt goes before the first user message (mistral_common
# puts it before the last one; keeping it first lets each turn reuse the cached prefix).
_MISTRAL = (
    "{%- set ns = namespace(system='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'OPEN' -}}"
    "{%- if loop.first and ns.system -%}{{- ns.system + '\n\n' -}}{%- endif -%}"
    "{{- message['content'] + 'CLOSE' -}}"
    "{%- else -%}{{- 'ASSISTANT' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
MISTRAL_V1 = (
    _MISTRAL.replace("OPEN", "[INST] ").replace("CLOSE", " [/INST]").replace("ASSISTANT", " ")
)
MISTRAL_V3 = _MISTRAL.replace("OPEN", "[INST]").replace("CLOSE", "[/INST]").replace(
    "ASSISTANT", ""
)
MISTRAL_TEKKEN = MISTRAL_V3  # same text; the tekken vocabulary has no space prefix

BUILTIN = {
    "chatml": CHATML,
    "mistral-v1": MISTRAL_V1,
    "mistral-v3": MISTRAL_V3,
    "mistral-tekken": MISTRAL_TEKKEN,
}


def builtin_name(tokenizer) -> str:
    """The built-in format that fits ``tokenizer``'s vocabulary."""
    if tokenizer.token_id("<|im_start|>") is not None:
        return "chatml"
    if tokenizer.pre == "tekken":
        return "mistral-tekken"
    inst = tokenizer.token_id("[INST]")
    if inst is not None and tokenizer.is_control(inst):
        return "mistral-v3"
    if tokenizer.kind == "llama":
        return "mistral-v1"
    return "chatml"


# ---- jinja2 -------------------------------------------------------------------------------------


def _environment():
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 is a dependency
        raise TemplateError("chat templates need the jinja2 package (pip install jinja2)") from None
    import json

    def raise_exception(message):
        raise TemplateError(f"the chat template refused the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(fmt):
        return datetime.now().strftime(str(fmt))

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env, jinja2


class ChatTemplate:
    """A compiled chat template bound to one tokenizer. See the module docstring."""

    def __init__(self, source: str, tokenizer, name: str = "file") -> None:
        if not isinstance(source, str) or not source.strip():
            raise TemplateError("the chat template is empty")
        self.source = source
        self.name = name
        self.tokenizer = tokenizer
        env, jinja2 = _environment()
        self._jinja = jinja2
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise TemplateError(
                f"the {name} chat template does not parse: {e}; choose a built-in one "
                f"({', '.join(BUILTIN)})"
            ) from None
        self._special, self._special_re = _special_table(tokenizer)

    @classmethod
    def for_model(cls, metadata: Mapping[str, Any], tokenizer, name: str | None = None):
        """The template named ``name`` (a built-in name, or None: the file's own, else the
        built-in that fits the vocabulary)."""
        if name is not None:
            if name not in BUILTIN:
                raise TemplateError(
                    f"unknown chat template {name!r}; built-in: {', '.join(BUILTIN)}"
                )
            return cls(BUILTIN[name], tokenizer, name=name)
        from cpullm.mistral_chat import template_for

        mistral = template_for(metadata, tokenizer)
        if mistral is not None:  # token-level, id-exact with mistral_common
            return mistral
        src = metadata.get(Keys.CHAT_TEMPLATE)
        if isinstance(src, str) and src.strip():
            return cls(src, tokenizer, name="file")
        b = builtin_name(tokenizer)
        return cls(BUILTIN[b], tokenizer, name=b)

    # ---- rendering ----------------------------------------------------------------------------

    def _token_text(self, tid: int | None) -> str:
        if tid is None:
            return ""
        t = self.tokenizer.tokens[tid]
        return t.replace("\u2581", " ") if self.tokenizer.kind == "llama" else t

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The template's text for ``messages`` (contents as they are: for display and
        tests; use ``encode`` for tokens)."""
        msgs = _check_messages(messages)
        return self._render(msgs, add_generation_prompt, extra)

    def _render(self, msgs, add_generation_prompt, extra) -> str:
        tok = self.tokenizer
        ctx = dict(extra)
        ctx.update(
            messages=msgs,
            add_generation_prompt=bool(add_generation_prompt),
            bos_token=self._token_text(tok.bos_id),
            eos_token=self._token_text(tok.eos_id),
        )
        try:
            return self._template.render(**ctx)
        except TemplateError:
            raise
        except self._jinja.TemplateError as e:  # includes SecurityError, UndefinedError
            raise TemplateError(f"the {self.name} chat template failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"the {self.name} chat template failed: {e}") from None

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        content_ids: Mapping[int, Sequence[int]] | None = None,
        **extra: Any,
    ) -> list[int]:
        """Token ids of the conversation. Contents are tokenized as plain text (never as
        control tokens). ``content_ids`` maps a message index to the exact ids that
        produced its content (a generated reply): they are used as they are when the
        content is one plain-text run of its own, so the cache can reuse them."""
        msgs = _check_messages(messages)
        nonce = secrets.token_hex(8)
        marks = [f"cpullm{nonce}m{i}e" for i in range(len(msgs))]
        masked = [dict(m, content=marks[i]) for i, m in enumerate(msgs)]
        skeleton = self._render(masked, add_generation_prompt, extra)
        mark_re = re.compile("cpullm" + nonce + r"m(\d+)e")
        real = self._render(msgs, add_generation_prompt, extra)
        if mark_re.sub(lambda m: msgs[int(m.group(1))]["content"], skeleton) != real:
            # the template transforms or inspects the contents: use the real rendering,
            # which is only safe when no content spells a control token
            for m in msgs:
                if self._special_re is not None and self._special_re.search(m["content"]):
                    raise TemplateError(
                        f"the {self.name} chat template changes message contents, and a "
                        f"message spells a control token; cpullm cannot render it safely"
                    )
            return self._to_ids(self._pieces(real))
        # pieces: ("special", id) | ("text", str) | ("ids", list)
        pieces: list[tuple[str, Any]] = []
        pos = 0
        for m in mark_re.finditer(skeleton):
            pieces += self._pieces(skeleton[pos : m.start()])
            i = int(m.group(1))
            ids = (content_ids or {}).get(i)
            if ids is not None and list(ids) and self.tokenizer.decode(ids) == msgs[i]["content"]:
                pieces.append(("ids", list(ids)))
            else:
                pieces.append(("text", msgs[i]["content"]))
            pos = m.end()
        pieces += self._pieces(skeleton[pos:])
        return self._to_ids(pieces)

    def _pieces(self, text: str) -> list[tuple[str, Any]]:
        """Template text split into control tokens and plain text."""
        out: list[tuple[str, Any]] = []
        if self._special_re is None:
            return [("text", text)] if text else []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                out.append(("text", text[pos : m.start()]))
            out.append(("special", self._special[m.group()]))
            pos = m.end()
        if pos < len(text):
            out.append(("text", text[pos:]))
        return out

    def _to_ids(self, pieces: list[tuple[str, Any]]) -> list[int]:
        tok = self.tokenizer
        ids: list[int] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                ids.extend(tok.encode("".join(run), add_bos=False, parse_special=False))
                run.clear()

        for kind, v in pieces:
            if kind == "text":
                run.append(v)
            else:
                flush()
                if kind == "special":
                    ids.append(v)
                else:
                    ids.extend(v)
        flush()
        if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
            ids.insert(0, tok.bos_id)
        return ids

    def stop_ids(self) -> set[int]:
        """Control tokens that end an assistant turn in this template (besides EOS/EOT)."""
        out: set[int] = set()
        for s in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>",
                  "<|endoftext|>"):
            tid = self._special.get(s)
            if tid is not None and (s in self.source or self.name != "file"):
                out.add(tid)
        return out


def _special_table(tokenizer) -> tuple[dict[str, int], re.Pattern[str] | None]:
    """Surface text -> id of the vocabulary's control tokens (what only a template emits)."""
    table: dict[str, int] = {}
    llama = tokenizer.kind == "llama"
    for i, ty in enumerate(tokenizer.token_types.tolist()):
        if ty not in (TokenType.CONTROL, TokenType.UNKNOWN):
            continue
        s = tokenizer.tokens[i]
        if llama:
            s = s.replace("\u2581", " ")
        if s and s not in table:
            table[s] = i
    if not table:
        return table, None
    alts = sorted(table, key=len, reverse=True)
    return table, re.compile("|".join(re.escape(s) for s in alts))


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TemplateError(f"message {i} must be a mapping with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise TemplateError(f"message {i} has no role")
        if not isinstance(content, str):
            raise TemplateError(f"message {i} content must be a string")
        out.append({"role": role, "content": content})
    return out
