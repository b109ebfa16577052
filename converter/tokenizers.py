"""Tokenizer files -> GGUF tokenizer metadata (the keys ``cpullm.tokenizer`` and llama.cpp read).

* ``tekken.json`` (Mistral Tekken, tiktoken-style ranks) -> ``gpt2`` with pre ``tekken``:
  special tokens first, as CONTROL; the other tokens as GPT-2 byte-level strings, with merges
  derived from the ranks so that a merge-based BPE reproduces tiktoken's ranking exactly;
* ``tokenizer.json`` (Hugging Face byte-level BPE) -> ``gpt2`` with its merges; the pre
  name is chosen from the pre-tokenizer;
* ``tokenizer.model`` / ``tokenizer.model.v1`` / ``.v3`` (SentencePiece) -> ``llama``
  with scores and token types, parsed from the protobuf directly (no sentencepiece needed).

Chat template: ``tokenizer_config.json`` (or ``chat_template.jinja``), else a built-in
Mistral format chosen by tokenizer kind.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import SourceError, UnsupportedError
from cpullm.gguf.constants import Keys, TokenType
from cpullm.tokenizer import pretok
from cpullm.tokenizer.bpe import BYTE_TO_UNICODE

TEKKEN_DEFAULT_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
]

# Mistral instruct formats (system prompt joined to the first user turn)
_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.sys = m['content'] + '\\n\\n' %}"
    "{% elif m['role'] == 'user' %}{{ '[INST]' + SP + ns.sys + m['content'] + SP + '[/INST]' }}"
    "{% set ns.sys = '' %}{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
SPM_CHAT_TEMPLATE = _MISTRAL_TEMPLATE.replace("SP", "' '")
TEKKEN_CHAT_TEMPLATE = _MISTRAL_TEMPLATE.replace(" + SP + ", " + ")


def _b2u(b: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[x] for x in b)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None


# ---- SentencePiece protobuf -------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            v, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v, pos = buf[pos : pos + n], pos + n
            if pos > len(buf):
                raise ValueError("truncated field")
        elif wt == 5:
            v, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_sentencepiece(data: bytes) -> dict[str, Any]:
    """Pieces (text, score, type) and the trainer/normalizer settings of a ``.model`` file."""
    pieces: list[tuple[str, float, int]] = []
    trainer = {"model_type": 1, "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    add_dummy_prefix = True
    for num, wt, v in _fields(data):
        if num == 1 and wt == 2:
            text, score, ty = "", 0.0, 1
            for n2, w2, v2 in _fields(v):
                if n2 == 1 and w2 == 2:
                    text = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    (score,) = struct.unpack("<f", v2)
                elif n2 == 3 and w2 == 0:
                    ty = v2
            pieces.append((text, score, ty))
        elif num == 2 and wt == 2:
            names = {3: "model_type", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
            for n2, w2, v2 in _fields(v):
                if n2 in names and w2 == 0:
                    trainer[names[n2]] = _signed(v2)
        elif num == 3 and wt == 2:
            for n2, w2, v2 in _fields(v):
                if n2 == 3 and w2 == 0:
                    add_dummy_prefix = bool(v2)
    return {"pieces": pieces, "add_dummy_prefix": add_dummy_prefix, **trainer}


def from_sentencepiece(path: Path) -> dict[str, Any]:
    try:
        sp = parse_sentencepiece(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot parse SentencePiece model {path}: {e}") from None
    if not sp["pieces"]:
        raise SourceError(f"{path} holds no SentencePiece pieces")
    if sp["model_type"] != 2:
        raise UnsupportedError(
            f"{path}: SentencePiece model type {sp['model_type']} is not supported (only BPE)"
        )
    n = len(sp["pieces"])
    md: dict[str, Any] = {
        Keys.TOKENIZER_MODEL: "llama",
        Keys.TOKENIZER_PRE: "default",
        Keys.TOKENS: [p[0] for p in sp["pieces"]],
        Keys.SCORES: np.array([p[1] for p in sp["pieces"]], dtype=np.float32),
        Keys.TOKEN_TYPE: np.array([p[2] for p in sp["pieces"]], dtype=np.int32),
        Keys.ADD_BOS: True,
        Keys.ADD_EOS: False,
        Keys.ADD_SPACE_PREFIX: sp["add_dummy_prefix"],
    }
    for key, k in ((Keys.BOS_ID, "bos_id"), (Keys.EOS_ID, "eos_id"), (Keys.UNK_ID, "unk_id"),
                   (Keys.PAD_ID, "pad_id")):
        if 0 <= sp[k] < n:
            md[key] = sp[k]
    md[Keys.CHAT_TEMPLATE] = SPM_CHAT_TEMPLATE
    return md


# ---- Tekken -----------------------------------------------------------------------------


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """How tiktoken's BPE splits ``token`` using only ranks below ``max_rank`` (llama.cpp's
    ``QwenModel.bpe``): the last merge made is the one a merge list must name."""
    parts = [bytes((b,)) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def from_tekken(path: Path) -> dict[str, Any]:
    d = _load_json(path)
    try:
        cfg = d["config"]
        n_special = int(cfg.get("default_num_special_tokens", 1000))
        vocab_size = int(cfg.get("default_vocab_size", n_special + len(d["vocab"])))
        entries = d["vocab"][: vocab_size - n_special]
        inner = [base64.b64decode(e["token_bytes"]) for e in entries]
        pattern = cfg.get("pattern")
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{path}: not a Tekken tokenizer file ({e})") from None
    if pattern and pattern != pretok.TEKKEN:
        raise UnsupportedError(f"{path}: unknown Tekken pre-tokenizer pattern {pattern!r}")
    specials = [t["token_str"] for t in d.get("special_tokens") or []]
    specials = specials or list(TEKKEN_DEFAULT_SPECIALS)
    specials += [f"<SPECIAL_{i}>" for i in range(len(specials), n_special)]
    ranks = {b: i for i, b in enumerate(inner)}
    merges: list[str] = []
    for r, b in enumerate(inner):
        if len(b) < 2:
            continue
        parts = _bpe_split(ranks, b, r)
        if len(parts) == 2:
            merges.append(_b2u(parts[0]) + " " + _b2u(parts[1]))
    tokens = specials + [_b2u(b) for b in inner]
    types = np.full(len(tokens), TokenType.NORMAL, dtype=np.int32)
    types[:n_special] = TokenType.CONTROL
    md: dict[str, Any] = {
        Keys.TOKENIZER_MODEL: "gpt2",
        Keys.TOKENIZER_PRE: "tekken",
        Keys.TOKENS: tokens,
        Keys.TOKEN_TYPE: types,
        Keys.MERGES: merges,
        Keys.ADD_BOS: True,
        Keys.ADD_EOS: False,
    }
    for key, s in ((Keys.BOS_ID, "<s>"), (Keys.EOS_ID, "</s>"), (Keys.UNK_ID, "<unk>"),
                   (Keys.PAD_ID, "<pad>")):
        if s in specials:
            md[key] = specials.index(s)
    md[Keys.CHAT_TEMPLATE] = TEKKEN_CHAT_TEMPLATE
    return md


# ---- Hugging Face tokenizer.json ----------------------------------------------------------

_KNOWN_SPLITS = {
    pretok.LLAMA3: "llama-bpe",
    pretok.QWEN2: "qwen2",
    pretok.TEKKEN: "tekken",
    pretok.GPT2: "gpt2",
}


def _flatten(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        out = []
        for sub in node.get("pretokenizers", []):
            out += _flatten(sub)
        return out
    return [node]


def detect_pre(pre_tokenizer: dict | None) -> str:
    """``tokenizer.ggml.pre`` for a tokenizer.json pre-tokenizer."""
    nodes = _flatten(pre_tokenizer)
    splits = [n["pattern"].get("Regex") for n in nodes if n.get("type") == "Split"
              and isinstance(n.get("pattern"), dict)]
    byte_level = [n for n in nodes if n.get("type") == "ByteLevel"]
    digits = any(n.get("type") == "Digits" and n.get("individual_digits") for n in nodes)
    if splits:
        name = _KNOWN_SPLITS.get(splits[0])
        if name is None or len(splits) > 1:
            raise UnsupportedError(f"unknown pre-tokenizer split pattern {splits[0]!r}")
        return name
    if byte_level and byte_level[0].get("use_regex", True):
        return "smollm" if digits else "gpt2"
    raise UnsupportedError(f"unsupported pre-tokenizer {pre_tokenizer!r}")


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def from_tokenizer_json(path: Path, tok_cfg: dict) -> dict[str, Any]:
    tj = _load_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{path}: tokenizer model {model.get('type')!r} (only BPE)")
    nodes = _flatten(tj.get("pre_tokenizer")) + _flatten(tj.get("decoder"))
    if not any(n.get("type") == "ByteLevel" for n in nodes):
        raise UnsupportedError(
            f"{path} is not a byte-level BPE tokenizer (a SentencePiece-style tokenizer.json "
            "needs its tokenizer.model next to it)"
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    added = tj.get("added_tokens") or []
    n = max([*vocab.values(), *(a["id"] for a in added)], default=-1) + 1
    tokens: list[str | None] = [None] * n
    types = np.full(n, TokenType.NORMAL, dtype=np.int32)
    for t, i in vocab.items():
        tokens[i] = t
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    md: dict[str, Any] = {
        Keys.TOKENIZER_MODEL: "gpt2",
        Keys.TOKENIZER_PRE: detect_pre(tj.get("pre_tokenizer")),
        Keys.TOKENS: tokens,
        Keys.TOKEN_TYPE: types,
        Keys.MERGES: merges,
    }
    index = {t: i for i, t in enumerate(tokens)}
    for key, k in ((Keys.BOS_ID, "bos_token"), (Keys.EOS_ID, "eos_token"),
                   (Keys.UNK_ID, "unk_token"), (Keys.PAD_ID, "pad_token")):
        s = _token_text(tok_cfg.get(k))
        if s is not None and s in index:
            md[key] = index[s]
    add_bos = tok_cfg.get("add_bos_token")
    if add_bos is None:
        single = ((tj.get("post_processor") or {}).get("single")) or []
        add_bos = bool(single) and "SpecialToken" in single[0] and Keys.BOS_ID in md
    md[Keys.ADD_BOS] = bool(add_bos) and Keys.BOS_ID in md
    md[Keys.ADD_EOS] = False
    return md


# ---- choosing -----------------------------------------------------------------------------


def _hf_chat_template(root: Path, tok_cfg: dict) -> str | None:
    t = tok_cfg.get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    if isinstance(t, str) and t:
        return t
    jinja = root / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    return None


def tokenizer_metadata(root: Path, vocab_size: int, bos_id: int | None = None,
                       eos_id: int | None = None) -> tuple[dict[str, Any], str | None]:
    """(GGUF tokenizer metadata, the file it came from); ({}, None) when the folder has none.

    The vocabulary is padded with UNUSED tokens up to the model's ``vocab_size``."""
    cfg_path = root / "tokenizer_config.json"
    tok_cfg = _load_json(cfg_path) if cfg_path.exists() else {}
    spm = sorted(root.glob("tokenizer.model*"))
    md: dict[str, Any]
    if (root / "tekken.json").exists():
        src = root / "tekken.json"
        md = from_tekken(src)
    elif (root / "tokenizer.json").exists() and not spm:
        src = root / "tokenizer.json"
        md = from_tokenizer_json(src, tok_cfg)
        if bos_id is not None and Keys.BOS_ID not in md:
            md[Keys.BOS_ID] = bos_id
        if eos_id is not None and Keys.EOS_ID not in md:
            md[Keys.EOS_ID] = eos_id
    elif spm:
        src = spm[-1]  # tokenizer.model, else the newest .vN
        if (root / "tokenizer.model").exists():
            src = root / "tokenizer.model"
        md = from_sentencepiece(src)
    else:
        return {}, None
    tmpl = _hf_chat_template(root, tok_cfg)
    if tmpl is not None:
        md[Keys.CHAT_TEMPLATE] = tmpl
    n = len(md[Keys.TOKENS])
    if n > vocab_size:
        raise SourceError(
            f"{src.name} has {n} tokens but the model's vocabulary has only {vocab_size} rows"
        )
    if n < vocab_size:
        md[Keys.TOKENS] = list(md[Keys.TOKENS]) + [f"[PAD{i}]" for i in range(n, vocab_size)]
        md[Keys.TOKEN_TYPE] = np.concatenate(
            [md[Keys.TOKEN_TYPE], np.full(vocab_size - n, TokenType.UNUSED, dtype=np.int32)])
        if Keys.SCORES in md:
            md[Keys.SCORES] = np.concatenate(
                [md[Keys.SCORES], np.full(vocab_size - n, -1e9, dtype=np.float32)])
    return md, src.name
