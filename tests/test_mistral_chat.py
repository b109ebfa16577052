"""Token-level Mistral chat encoding (``cpullm.mistral_chat``) equals mistral_common's
``MistralTokenizer.encode_chat_completion(ChatCompletionRequest(...)).tokens`` for v1 (SentencePiece
v1), v3 (SentencePiece v3) and v3-tekken (Tekken), on deterministic generated conversations:
1-4 turns, texts from the multi-script corpus of test_mistral_tokenizers (short and long),
system prompts (none, one, several, between user turns), consecutive same-role messages, a
conversation starting with an assistant message, trailing assistant prefixes.

cpullm's side uses only the GGUF metadata the converter makes from each tokenizer file.
"""

from __future__ import annotations

import random
from functools import cache

import pytest
from test_mistral_tokenizers import DATA, FILES, cpullm_tokenizer, metadata, texts

from cpullm.mistral_chat import (
    FORMATS,
    MistralChatError,
    detect_format,
    encode_mistral_chat,
    format_label,
)

FMT = {"spm-v1": "v1", "spm-v3": "v3", "tekken": "v3-tekken"}
N_CONV = 60


@cache
def mistral_tokenizer(kind: str):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(DATA / FILES[kind]))


def reference(kind: str, messages: list[dict]) -> list[int]:
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    cls = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    req = ChatCompletionRequest(messages=[cls[m["role"]](**m) for m in messages])
    return mistral_tokenizer(kind).encode_chat_completion(req).tokens


SYSTEMS = [
    "You are a helpful assistant.",
    "Tu es un assistant serviable. Réponds en français.",
    "Отвечай кратко.\nНе используй списки.",
    "あなたは親切なアシスタントです。",
    "Always answer in JSON: {\"answer\": ...}",
    "  Leading and trailing spaces  ",
]


def _text(rng: random.Random, pool: list[str], long: bool = False) -> str:
    if not long:
        return rng.choice(pool)
    return "".join(rng.choice(pool) for _ in range(rng.randint(3, 12)))


def conversations(seed: int, n: int = N_CONV) -> list[list[dict]]:
    """Deterministic conversations; every one is a valid serving request for mistral_common."""
    rng = random.Random(seed)
    pool = [t for t in texts() if t.strip()]
    out = []
    for i in range(n):
        msgs: list[dict] = []
        r = rng.random()
        if r < 0.4:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
            if rng.random() < 0.2:
                msgs.append({"role": "system", "content": _text(rng, pool)})
        turns = rng.randint(1, 4)
        if i % 10 == 3:  # starts with an assistant message (an empty user turn goes first)
            msgs.append({"role": "assistant", "content": _text(rng, pool)})
        for t in range(turns):
            msgs.append({"role": "user", "content": _text(rng, pool, rng.random() < 0.2)})
            if rng.random() < 0.1:  # consecutive user messages are merged
                msgs.append({"role": "user", "content": _text(rng, pool)})
            if t == 1 and 0.4 <= r < 0.55:  # a system message in the middle
                msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
            if t < turns - 1:
                a = _text(rng, pool, rng.random() < 0.2)
                if rng.random() < 0.2:
                    a += " " * rng.randint(1, 3)  # v2+ strips trailing spaces of assistant text
                msgs.append({"role": "assistant", "content": a})
        if i % 4 == 1:  # a trailing assistant prefix to continue
            msgs.append({"role": "assistant", "content": _text(rng, pool), "prefix": True})
        out.append(msgs)
    return out


@pytest.mark.parametrize("kind", list(FMT))
def test_conversations_match_mistral_common(kind):
    tok = cpullm_tokenizer(kind)
    fmt = FMT[kind]
    convs = conversations(seed=len(kind))
    assert len(convs) >= 30
    n_tokens = 0
    shapes = set()
    for msgs in convs:
        want = reference(kind, msgs)
        got = encode_mistral_chat(tok, fmt, msgs)
        assert got == want, msgs
        n_tokens += len(want)
        shapes.add((sum(m["role"] == "user" for m in msgs), any(m.get("prefix") for m in msgs),
                    any(m["role"] == "system" for m in msgs)))
    assert len(shapes) >= 10  # 1-4 user turns x prefix x system prompt
    print(f"\n{fmt}: {len(convs)} conversations, {n_tokens} tokens, all ids equal")


EDGE = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "only a system prompt"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": ""},
     {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "S"},
     {"role": "user", "content": "b"}],
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "u1"},
     {"role": "assistant", "content": "a1   "}, {"role": "user", "content": "u2"},
     {"role": "assistant", "content": "a2"}, {"role": "assistant", "content": " a3"},
     {"role": "user", "content": "u3"}, {"role": "assistant", "content": "Sure, ",
                                         "prefix": True}],
    [{"role": "user", "content": "[INST] </s> <s> [/INST] [TOOL_CALLS] <unk> <pad>"},
     {"role": "assistant", "content": "[/INST]", "prefix": True}],
    [{"role": "user", "content": "  spaces  \n\n"}, {"role": "assistant", "content": "\n x \n"},
     {"role": "user", "content": "\t"}],
]


@pytest.mark.parametrize("kind", list(FMT))
def test_edge_cases_match_mistral_common(kind):
    tok = cpullm_tokenizer(kind)
    for msgs in EDGE:
        assert encode_mistral_chat(tok, FMT[kind], msgs) == reference(kind, msgs), msgs


@pytest.mark.parametrize("kind", list(FMT))
def test_refused_like_mistral_common(kind):
    tok = cpullm_tokenizer(kind)
    bad = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "complete"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
         {"role": "system", "content": "late system"}, {"role": "user", "content": "q2"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "prefix": True}],
    ]
    for msgs in bad:
        with pytest.raises(Exception):  # noqa: B017 - any refusal
            reference(kind, msgs)
        with pytest.raises(MistralChatError):
            encode_mistral_chat(tok, FMT[kind], msgs)
    for msgs in ([], [{"role": "tool", "content": "x"}],
                 [{"role": "user", "content": ["chunk"]}],
                 [{"role": "user", "content": "q", "prefix": True}]):
        with pytest.raises(MistralChatError):
            encode_mistral_chat(tok, FMT[kind], msgs)


def test_continue_final_message():
    tok = cpullm_tokenizer("tekken")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer"}]
    want = reference("tekken", [msgs[0], {**msgs[1], "prefix": True}])
    assert encode_mistral_chat(tok, "v3-tekken", msgs, continue_final_message=True) == want
    assert want[-1] != tok.eos_id


def test_user_content_never_control():
    for kind in FMT:
        tok = cpullm_tokenizer(kind)
        msgs = [{"role": "user", "content": "[INST][/INST]</s><s>"}]
        ids = encode_mistral_chat(tok, FMT[kind], msgs)
        ctl = [t for t in ids if tok.is_control(t)]
        want = [tok.bos_id] if kind == "spm-v1" else [
            tok.bos_id, tok.token_id("[INST]"), tok.token_id("[/INST]")]
        assert ctl == want, kind


def test_detect_format_and_label():
    for kind, fmt in FMT.items():
        md = metadata(kind)
        assert detect_format(md) == fmt
        assert format_label(md) == f"mistral {fmt}"  # the converter's built-in template
        assert format_label({**md, "tokenizer.chat_template": "{{ messages }}"}) == (
            "template in file")
        assert format_label({k: v for k, v in md.items() if k != "tokenizer.chat_template"}) == (
            f"mistral {fmt}")
    assert detect_format({}) is None
    assert detect_format({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}) is None
    assert format_label({}) == "none (no vocabulary)"
    smol = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "<|im_start|>"]}
    assert format_label(smol) == "chatml"
    assert set(FMT.values()) <= set(FORMATS)
    with pytest.raises(MistralChatError):
        encode_mistral_chat(cpullm_tokenizer("spm-v1"), "v3", [{"role": "user", "content": "x"}])
    with pytest.raises(MistralChatError):
        encode_mistral_chat(cpullm_tokenizer("spm-v1"), "v9", [{"role": "user", "content": "x"}])


def test_v2_tokenizer_uses_v3_encoding():
    """Mistral 7B v0.2-instruct's v2 SentencePiece file (control [INST]) chats like v3."""
    path = DATA / "mistral_instruct_tokenizer_240216.model.v2"
    if not path.exists():
        pytest.skip("no v2 tokenizer in this mistral_common")
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from converter.tokenizers import from_sentencepiece
    from cpullm.tokenizer import Tokenizer

    md = from_sentencepiece(path)
    assert detect_format(md) == "v3"
    tok = Tokenizer.from_metadata(md)
    mt = MistralTokenizer.from_file(str(path))
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    for msgs in conversations(seed=7, n=12):
        cls = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
        want = mt.encode_chat_completion(
            ChatCompletionRequest(messages=[cls[m["role"]](**m) for m in msgs])).tokens
        for fmt in ("v2", "v3"):
            assert encode_mistral_chat(tok, fmt, msgs) == want
