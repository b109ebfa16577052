"""Mistral chat formats at the token level, id-exact with mistral_common.

    fmt = detect_format(model.metadata)                  # "v1", "v3", "v3-tekken" or None
    ids = encode_mistral_chat(model.tokenizer, fmt, messages)

``encode_mistral_chat`` gives the ids mistral_common's
``MistralTokenizer.encode_chat_completion(ChatCompletionRequest(messages=...))`` gives, for text
conversations (system, user and assistant messages whose content is a string):

* **v1** (Mistral 7B v0.1, SentencePiece ``tokenizer.model.v1``): ``[INST]``/``[/INST]`` are
  plain text: each user turn is the text ``"[INST] {content} [/INST]"`` tokenized as a whole;
  the system prompt goes before the *first* user message (``system + "\\n\\n" + content``);
* **v2**/**v3** (Mistral 7B v0.2/v0.3, SentencePiece with control tokens) and **v3-tekken**
  (Mistral NeMo, Tekken): ``[INST]``/``[/INST]`` are control ids around the tokenized content;
  the system prompt goes before the *last* user message; assistant text is right-stripped
  of spaces;

and in all formats: BOS once at the start, each complete assistant turn followed by EOS, a
final assistant message with ``"prefix": True`` (or ``continue_final_message=True``) left
open (no EOS) so that generation continues it. Like mistral_common's request normalizer:
all system messages are joined with ``"\\n\\n"`` into one system prompt; consecutive
messages of the same role are merged (contents joined with ``"\\n\\n"``, empty ones
skipped); a conversation that does not start with a user message gets an empty one first.

Message contents are always tokenized as plain text: "[INST]" or "</s>" typed by a user never
become control tokens.

There is no separate "generation prompt" in these formats: a prompt that ends with a user
turn already ends with ``[/INST]``, after which the model writes its answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cpullm.errors import CpullmError
from cpullm.gguf.constants import Keys, TokenType

FORMATS = ("v1", "v2", "v3", "v3-tekken")
ROLES = ("system", "user", "assistant")
_JOIN = "\n\n"


class MistralChatError(CpullmError, ValueError):
    """The conversation cannot be encoded in the Mistral format (as mistral_common refuses)."""


def detect_format(metadata: Mapping[str, Any]) -> str | None:
    """The Mistral chat format a GGUF vocabulary implies, from its tokenizer metadata alone:
    Tekken (``gpt2`` model, ``tekken`` pre-tokenizer) -> ``"v3-tekken"``; SentencePiece
    (``llama`` model) with control tokens ``[INST]`` and ``[/INST]`` -> ``"v3"``; other
    SentencePiece vocabularies -> ``"v1"``; anything else (no vocabulary, other byte-level
    BPE vocabularies) -> None."""
    kind = metadata.get(Keys.TOKENIZER_MODEL)
    if kind == "gpt2":
        return "v3-tekken" if metadata.get(Keys.TOKENIZER_PRE) == "tekken" else None
    if kind != "llama":
        return None
    tokens = metadata.get(Keys.TOKENS)
    types = metadata.get(Keys.TOKEN_TYPE)
    if tokens is None:
        return None
    tokens = list(tokens)
    control = 0
    for name in ("[INST]", "[/INST]"):
        try:
            i = tokens.index(name)
        except ValueError:
            continue
        if types is None or int(types[i]) == TokenType.CONTROL:
            control += 1
    return "v3" if control == 2 else "v1"


def _content(m: Mapping[str, Any], k: int) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if not isinstance(c, str):
        raise MistralChatError(f"message {k}: content must be a string, got {type(c).__name__}")
    return c


def normalize(
    messages: Sequence[Mapping[str, Any]], continue_final_message: bool = False
) -> tuple[str | None, list[dict[str, Any]]]:
    """(system prompt, user/assistant messages) as mistral_common's request normalizer and
    validator (serving mode) make them. Raises MistralChatError where mistral_common refuses."""
    if not messages:
        raise MistralChatError("the conversation is empty")
    prev = None
    for k, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role not in ROLES:
            raise MistralChatError(f"message {k}: role must be one of {ROLES}, got {role!r}")
        _content(m, k)
        if prev == "assistant" and role == "system":
            raise MistralChatError(f"message {k}: a system message cannot follow an assistant one")
        if m.get("prefix") and (role != "assistant" or k != len(messages) - 1):
            raise MistralChatError(f"message {k}: only a final assistant message can be a prefix")
        prev = role
    system = [_content(m, k) for k, m in enumerate(messages) if m["role"] == "system"]
    system = [s for s in system if s]
    system_prompt = _JOIN.join(system) if system else None

    out: list[dict[str, Any]] = []
    group: list[Mapping[str, Any]] = []

    def flush() -> None:
        if not group or group[0]["role"] == "system":
            return
        parts = [c for c in (_content(m, 0) for m in group) if c]
        msg: dict[str, Any] = {"role": group[0]["role"], "content": _JOIN.join(parts)}
        if msg["role"] == "assistant":
            msg["prefix"] = any(bool(m.get("prefix")) for m in group)
        out.append(msg)

    for m in messages:
        if group and m["role"] != group[0]["role"]:
            flush()
            group = []
        group.append(m)
    flush()
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": ""})
    last = out[-1]
    if last["role"] == "assistant" and continue_final_message:
        last["prefix"] = True
    if last["role"] == "assistant" and not last["prefix"]:
        raise MistralChatError(
            "the conversation ends with a complete assistant message; end it with a user "
            "message, or mark the last assistant message as a prefix to continue it"
        )
    for m in out:
        if m["role"] == "assistant" and not m["content"]:
            raise MistralChatError("an assistant message has no content")
    return system_prompt, out


def encode_mistral_chat(
    tokenizer,
    fmt: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> list[int]:
    """Token ids of ``messages`` (``{"role", "content"[, "prefix"]}`` dicts) in Mistral chat
    format ``fmt`` (see :data:`FORMATS`), equal to mistral_common's ``encode_chat_completion``.

    ``add_generation_prompt`` is accepted for symmetry with chat templates: these formats
    have no tokens for it (a prompt ending with a user turn already ends with ``[/INST]``).
    ``continue_final_message`` (or ``"prefix": True`` on it) leaves a final assistant message
    open, without EOS, so that the model continues it."""
    del add_generation_prompt  # nothing to add in Mistral formats
    if fmt not in FORMATS:
        raise MistralChatError(f"unknown Mistral chat format {fmt!r}; known: {', '.join(FORMATS)}")
    system, msgs = normalize(messages, continue_final_message)
    tok = tokenizer
    if tok.bos_id is None or tok.eos_id is None:
        raise MistralChatError("the vocabulary has no BOS/EOS token")

    def text(s: str) -> list[int]:
        return tok.encode(s, add_bos=False, parse_special=False)

    v1 = fmt == "v1"
    if not v1:
        inst, end_inst = tok.token_id("[INST]"), tok.token_id("[/INST]")
        if inst is None or end_inst is None or not (tok.is_control(inst)
                                                    and tok.is_control(end_inst)):
            raise MistralChatError(
                f"format {fmt} needs the control tokens [INST] and [/INST] in the vocabulary")
    users = [k for k, m in enumerate(msgs) if m["role"] == "user"]
    sys_at = users[0] if v1 else users[-1]
    ids = [tok.bos_id]
    for k, m in enumerate(msgs):
        content = m["content"]
        if m["role"] == "user":
            if k == sys_at and system:
                content = system + _JOIN + content
            if v1:
                ids += text(f"[INST] {content} [/INST]")
            else:
                ids += [inst, *text(content), end_inst]
        else:
            ids += text(content if v1 else content.rstrip(" "))
            if not m["prefix"]:
                ids.append(tok.eos_id)
    return ids


def format_label(metadata: Mapping[str, Any]) -> str:
    """What ``cpullm info`` shows as the chat format: "mistral v1/v3/v3-tekken (token level)"
    where the vocabulary is a Mistral one and the file's template (if any) is the converter's
    built-in Mistral one, else "template in file", else "chatml" (the built-in fallback);
    "none (no vocabulary)" for a file without tokenizer."""
    if metadata.get(Keys.TOKENS) is None:
        return "none (no vocabulary)"
    fmt = detect_format(metadata)
    tmpl = metadata.get(Keys.CHAT_TEMPLATE)
    has_tmpl = isinstance(tmpl, str) and bool(tmpl.strip())
    if fmt is not None and (not has_tmpl or _is_builtin_mistral_template(tmpl)):
        return f"mistral {fmt}"
    if has_tmpl:
        return "template in file"
    return "chatml"


def _is_builtin_mistral_template(tmpl: str) -> bool:
    try:
        from converter.tokenizers import SPM_CHAT_TEMPLATE, TEKKEN_CHAT_TEMPLATE
    except ImportError:  # the converter is not installed with the runtime
        return False
    return tmpl in (SPM_CHAT_TEMPLATE, TEKKEN_CHAT_TEMPLATE)


class MistralTemplate:
    """The chat-template interface (``encode``, ``stop_ids``, ``name``) over
    :func:`encode_mistral_chat`, so a chat with a Mistral model gets exactly the ids
    mistral_common would give."""

    def __init__(self, tokenizer, fmt: str) -> None:
        if fmt not in FORMATS:
            raise MistralChatError(f"unknown Mistral chat format {fmt!r}")
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.name = f"mistral {fmt}"
        self.source = ""

    def encode(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               content_ids: Any = None, **extra: Any) -> list[int]:
        msgs = list(messages)
        if not any(m.get("role") == "user" for m in msgs):
            return [self.tokenizer.bos_id]  # nothing before a user turn is fixed but BOS
        return encode_mistral_chat(self.tokenizer, self.fmt, msgs, add_generation_prompt)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               **extra: Any) -> str:
        return self.tokenizer.decode(self.encode(messages), skip_special=False)

    def stop_ids(self) -> set[int]:
        return set()  # EOS ends an assistant turn in every Mistral format


def template_for(metadata: Mapping[str, Any], tokenizer) -> MistralTemplate | None:
    """A token-level Mistral template when ``cpullm info`` would call the chat format
    Mistral (a Mistral vocabulary without a template of its own), else None."""
    label = format_label(metadata)
    if not label.startswith("mistral "):
        return None
    return MistralTemplate(tokenizer, label.split(" ", 1)[1])
