"""Tokenizer built from GGUF metadata alone.

``Tokenizer.from_metadata(md)`` supports ``tokenizer.ggml.model``:

* ``"gpt2"``: byte-level BPE, run by tiktoken (see ``bpe.py``), pre-tokenizer regex chosen
  by ``tokenizer.ggml.pre`` (see ``pretok.py``);
* ``"llama"``: SentencePiece BPE with scores and byte fallback (see ``spm.py``).

Special tokens: CONTROL (and UNKNOWN) token strings in the text are turned into their
ids only with ``parse_special=True``; otherwise they are tokenized as plain text.
USER_DEFINED tokens are ordinary added vocabulary (llama.cpp, HF and sentencepiece all
match them in any text) and are matched in both modes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cpullm.errors import TokenizerError
from cpullm.gguf.constants import Keys, TokenType
from cpullm.tokenizer import cache as bpe_cache
from cpullm.tokenizer.bpe import ByteLevelBPE, token_bytes_table
from cpullm.tokenizer.pretok import pattern_for
from cpullm.tokenizer.specials import LiteralMatcher
from cpullm.tokenizer.spm import BYTE_TOKEN, SPACE, SentencePieceBPE

__all__ = ["Tokenizer"]

_KINDS = ("gpt2", "llama")


def _opt_id(md: Mapping[str, Any], key: str, n: int, default: int | None = None) -> int | None:
    v = md.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TokenizerError(f"{key} must be an integer token id, got {v!r}")
    v = int(v)
    if not 0 <= v < n:
        raise TokenizerError(f"{key}={v} is out of the vocabulary range [0, {n})")
    return v


def _opt_bool(md: Mapping[str, Any], key: str, default: bool) -> bool:
    v = md.get(key)
    if v is None:
        return default
    if not isinstance(v, (bool, np.bool_)):
        raise TokenizerError(f"{key} must be a bool, got {v!r}")
    return bool(v)


class Tokenizer:
    """Encode text to token ids and decode ids back, for one GGUF vocabulary."""

    kind: str
    pre: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    add_bos: bool
    add_space_prefix: bool

    def __init__(self) -> None:  # use from_metadata
        raise TypeError("use Tokenizer.from_metadata(md)")

    @classmethod
    def for_file(cls, f: Any) -> Tokenizer:
        """The tokenizer of an open :class:`cpullm.gguf.GGUFFile`; byte-level BPE tables
        are cached per file (:mod:`cpullm.tokenizer.cache`), so a second start is faster."""
        return cls.from_metadata(f.metadata, cache_key=bpe_cache.key(f.path))

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], cache_key: str | None = None) -> Tokenizer:
        """The tokenizer described by GGUF metadata ``md``. ``cache_key``: where to keep
        (and look for) its byte-level BPE tables, see :meth:`for_file`."""
        self = object.__new__(cls)
        kind = md.get(Keys.TOKENIZER_MODEL)
        if kind is None:
            raise TokenizerError(f"missing metadata key {Keys.TOKENIZER_MODEL}")
        if kind not in _KINDS:
            raise TokenizerError(
                f"unknown tokenizer model {Keys.TOKENIZER_MODEL}={kind!r}; supported: "
                + ", ".join(_KINDS)
            )
        tokens = md.get(Keys.TOKENS)
        if tokens is None:
            raise TokenizerError(f"missing metadata key {Keys.TOKENS}")
        tokens = list(tokens)
        n = len(tokens)
        if n == 0:
            raise TokenizerError(f"{Keys.TOKENS} is empty")
        if set(map(type, tokens)) != {str}:
            raise TokenizerError(f"{Keys.TOKENS} must be a list of strings")

        types = md.get(Keys.TOKEN_TYPE)
        if types is None:
            types = np.full(n, TokenType.NORMAL, dtype=np.int32)
            if kind == "llama":
                for i, t in enumerate(tokens):
                    if BYTE_TOKEN.fullmatch(t):
                        types[i] = TokenType.BYTE
        else:
            types = np.asarray(types, dtype=np.int32).reshape(-1)
            if len(types) != n:
                raise TokenizerError(
                    f"{Keys.TOKEN_TYPE} has {len(types)} entries but {Keys.TOKENS} has {n}"
                )
        scores = md.get(Keys.SCORES)
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float32).reshape(-1)
            if len(scores) != n:
                raise TokenizerError(
                    f"{Keys.SCORES} has {len(scores)} entries but {Keys.TOKENS} has {n}"
                )

        self.kind = kind
        self.vocab_size = n
        self.tokens = tokens
        self.token_types = types
        is_llama = kind == "llama"
        unk_default = None
        if is_llama:
            unk_hits = np.nonzero(types == TokenType.UNKNOWN)[0]
            unk_default = int(unk_hits[0]) if len(unk_hits) else None
        self.unk_id = _opt_id(md, Keys.UNK_ID, n, unk_default)
        self.bos_id = _opt_id(md, Keys.BOS_ID, n)
        self.eos_id = _opt_id(md, Keys.EOS_ID, n)
        self.eot_id = _opt_id(md, Keys.EOT_ID, n)
        self.add_bos = _opt_bool(md, Keys.ADD_BOS, is_llama)
        if self.add_bos and self.bos_id is None:
            if Keys.ADD_BOS in md:
                raise TokenizerError(f"{Keys.ADD_BOS} is true but {Keys.BOS_ID} is missing")
            self.add_bos = False
        self.add_space_prefix = _opt_bool(md, Keys.ADD_SPACE_PREFIX, is_llama) and is_llama

        pre = md.get(Keys.TOKENIZER_PRE)
        self.pre = str(pre) if pre else "default"

        types_l = types.tolist()
        self._control = np.isin(types, (TokenType.CONTROL, TokenType.UNKNOWN))
        if is_llama:
            if scores is None:
                raise TokenizerError(f"llama tokenizer needs {Keys.SCORES}")
            self._backend = SentencePieceBPE(tokens, types, scores, self.unk_id)
            tb = [t.replace(SPACE, " ").encode("utf-8") for t in tokens]
            for i in np.flatnonzero(types == TokenType.BYTE).tolist():
                m = BYTE_TOKEN.fullmatch(tokens[i])
                if m is not None:
                    tb[i] = bytes((int(m.group(1), 16),))
        else:
            merges = md.get(Keys.MERGES)
            if merges is None:
                raise TokenizerError(f"missing metadata key {Keys.MERGES} (gpt2 tokenizer)")
            cached = bpe_cache.load(cache_key, n) if cache_key else None
            tb = cached.tok_bytes if cached else token_bytes_table(tokens, types)
            self._backend = ByteLevelBPE(
                tokens,
                types,
                [] if cached else list(merges),
                tb,
                pattern_for(pre),
                self.unk_id,
                name=f"cpullm-{self.pre}",
                tables=(cached.rank_bytes, cached.rank2id) if cached else None,
            )
            if cache_key and not cached:
                bpe_cache.save(cache_key, bpe_cache.BPETables(
                    list(self._backend.ranks), self._backend.rank2id, tb))
        # rendered bytes: control/unknown tokens give b"" unless render_special
        self._bytes_special = tb
        self._bytes = list(tb)
        for i in np.flatnonzero(self._control).tolist():
            self._bytes[i] = b""

        # special-token splitting: surface text -> id
        surface: dict[str, int] = {}
        always: list[str] = []
        specials = np.isin(types, (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN))
        for i in np.flatnonzero(specials).tolist():
            ty = types_l[i]
            s = tokens[i].replace(SPACE, " ") if is_llama else tokens[i]
            if not s or s in surface:
                continue
            surface[s] = i
            if ty == TokenType.USER_DEFINED:
                always.append(s)
        self._surface = surface
        self._special_matcher = LiteralMatcher(surface)
        self._always_matcher = LiteralMatcher(always)
        return self

    # ---- encoding -------------------------------------------------------------------

    def encode(
        self, text: str, add_bos: bool | None = None, parse_special: bool = False
    ) -> list[int]:
        """Token ids of ``text``; BOS first when ``add_bos`` (None: the model's default).

        ``parse_special=False``: control-token spellings in ``text`` ("<|im_start|>",
        "</s>", ...) are plain text. ``parse_special=True``: they become their ids (for
        chat templates). USER_DEFINED tokens are matched in both modes. For llama
        vocabularies the space prefix goes at the start and after each special token,
        as llama.cpp does.
        """
        if add_bos is None:
            add_bos = self.add_bos
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos requested but the vocabulary has no BOS token")
            out.append(self.bos_id)
        matcher = self._special_matcher if parse_special else self._always_matcher
        if not matcher:
            out.extend(self._encode_text(text, True))
            return out
        pos = 0
        prev_special = True
        for start, end in matcher.spans(text):
            if start > pos:
                out.extend(self._encode_text(text[pos:start], prev_special))
            out.append(self._surface[text[start:end]])
            prev_special = True
            pos = end
        if pos < len(text):
            out.extend(self._encode_text(text[pos:], prev_special))
        return out

    def _encode_text(self, text: str, prefix: bool) -> list[int]:
        if self.kind == "llama":
            if not text:
                return []
            # like llama.cpp: a space prefix at the start and after each special token
            if self.add_space_prefix and prefix:
                text = " " + text
            return self._backend.encode(text.replace(" ", SPACE))
        return self._backend.encode(text)

    # ---- decoding -------------------------------------------------------------------

    def _check(self, tid: int) -> int:
        tid = int(tid)
        if not 0 <= tid < self.vocab_size:
            raise TokenizerError(f"token id {tid} is out of range [0, {self.vocab_size})")
        return tid

    def token_bytes(self, tid: int, render_special: bool = False) -> bytes:
        """The raw bytes token ``tid`` stands for (control tokens: b"" unless render_special)."""
        tid = self._check(tid)
        return (self._bytes_special if render_special else self._bytes)[tid]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (invalid UTF-8 becomes U+FFFD). Control tokens are dropped
        when ``skip_special``, else shown as their text. For llama vocabularies with a
        space prefix, the one space the prefix added at the start is removed."""
        ids = [self._check(t) for t in ids]
        table = self._bytes if skip_special else self._bytes_special
        parts = [table[t] for t in ids]
        if self.add_space_prefix:
            ctl = self._control
            for k, t in enumerate(ids):
                if ctl[t]:
                    continue
                if parts[k]:
                    if parts[k][:1] == b" " and self.token_types[t] != TokenType.BYTE:
                        parts[k] = parts[k][1:]
                    break
        return b"".join(parts).decode("utf-8", errors="replace")

    # ---- lookups --------------------------------------------------------------------

    def is_control(self, tid: int) -> bool:
        """True for CONTROL tokens (BOS, EOS, chat markers, ...)."""
        return bool(self.token_types[self._check(tid)] == TokenType.CONTROL)

    def token_id(self, text: str) -> int | None:
        """Id of the special/added token spelled ``text``, or None."""
        if self.kind == "llama":
            text = text.replace(SPACE, " ")
        return self._surface.get(text)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
            f"bos={self.bos_id}, eos={self.eos_id}, eot={self.eot_id})"
        )
