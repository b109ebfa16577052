"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``) run by tiktoken.

GGUF stores GPT-2 style vocabularies: every byte is shown as one printable unicode
character (space -> "Ġ", newline -> "Ċ", ...), and merges are "left right" pairs in
priority order. tiktoken wants ``bytes -> rank`` where a lower rank merges first, so:

* ranks 0..255 are the 256 single bytes (their order never matters: a rank is only
  consulted for the concatenation of two parts, which is at least two bytes long);
* then each merge, in merge order, gives its result the next rank (the first merge
  producing a given byte string wins).

A numpy table maps rank -> GGUF token id.
"""

from __future__ import annotations

import re
from itertools import repeat

import numpy as np
import tiktoken

from cpullm.errors import TokenizerError
from cpullm.gguf.constants import TokenType


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    bs += list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
# str.translate table: byte-level character -> the character whose code is the byte value
_TO_LATIN1 = {ord(c): b for b, c in BYTE_TO_UNICODE.items()}
# Separates tokens joined into one string: not a byte-level character, and not one that
# translation to bytes can produce (those are all below U+0100).
_SEP = "\uffff"
# any character outside the 256 byte-level characters (the separator is let through)
_NOT_BYTE_LEVEL = re.compile(
    "[^" + _SEP + "".join(re.escape(c) for c in BYTE_TO_UNICODE.values()) + "]"
)


def token_bytes_table(tokens: list[str], types: np.ndarray) -> list[bytes]:
    """Raw bytes of each token: byte-level decoded for normal tokens; control,
    user-defined and unknown tokens are stored as plain text (llama.cpp convention), and
    so is any token holding a character outside the byte-level alphabet."""
    raw = np.isin(types, (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN))
    # translate all tokens in one C call, joined by a separator
    joined = _SEP.join(tokens)
    pieces = joined.translate(_TO_LATIN1).split(_SEP)
    bad = raw.copy()
    if len(pieces) != len(tokens):  # a token holds the separator: go one by one
        pieces = [t.translate(_TO_LATIN1) for t in tokens]
        bad |= np.array([_SEP in t for t in tokens], dtype=bool)
    hits = [m.start() for m in _NOT_BYTE_LEVEL.finditer(joined)]
    if hits:
        ends = np.cumsum([len(t) + 1 for t in tokens])
        bad[np.searchsorted(ends, np.asarray(hits), side="right")] = True
    out = list(map(str.encode, pieces, repeat("latin-1")))
    for i in np.flatnonzero(bad).tolist():
        out[i] = tokens[i].encode("utf-8")
    return out


class ByteLevelBPE:
    """Encodes text without special tokens into GGUF ids through a tiktoken Encoding."""

    def __init__(
        self,
        tokens: list[str],
        types: np.ndarray,
        merges: list[str],
        tok_bytes: list[bytes],
        pat_str: str,
        unk_id: int | None,
        name: str = "cpullm-bpe",
        tables: tuple[list[bytes], np.ndarray] | None = None,
    ) -> None:
        """``tables``: (rank bytes in rank order, rank -> token id) from an earlier build
        of the same vocabulary (see :mod:`cpullm.tokenizer.cache`), else built here."""
        if tables is not None:
            rank_bytes, rank2id = tables
            ranks = dict(zip(rank_bytes, range(len(rank_bytes)), strict=True))
        else:
            ranks, rank2id = _build_ranks(tokens, types, merges, tok_bytes, unk_id)
        self.ranks = ranks
        self.rank2id = np.asarray(rank2id, dtype=np.int64)
        self._has_missing = bool((self.rank2id < 0).any())
        try:
            self.enc = tiktoken.Encoding(
                name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens={}
            )
        except Exception as e:  # tiktoken raises ValueError for a bad regex
            raise TokenizerError(f"cannot build the BPE encoder: {e}") from e

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        ranks = self.enc.encode_ordinary(text)
        ids = self.rank2id[np.asarray(ranks, dtype=np.int64)]
        if self._has_missing:
            ids = ids[ids >= 0]
        return ids.tolist()


def _build_ranks(
    tokens: list[str], types: np.ndarray, merges: list[str], tok_bytes: list[bytes],
    unk_id: int | None,
) -> tuple[dict[bytes, int], list[int]]:
    """tiktoken's ``bytes -> rank`` table and the token id of each rank."""
    tok2id = dict(zip(tokens, range(len(tokens)), strict=True))
    is_control = types == TokenType.CONTROL
    ranks: dict[bytes, int] = {}
    rank2id: list[int] = []
    # 256 single bytes
    for b in range(256):
        tid = tok2id.get(BYTE_TO_UNICODE[b])
        if tid is None or is_control[tid]:
            tid = -1 if unk_id is None else unk_id
        ranks[bytes((b,))] = b
        rank2id.append(tid)
    # merge results in merge order. Byte-level merges hold exactly one literal space
    # and no newline, so all "left right" -> "leftright" strings come from one C call.
    joined = "\n".join(merges)
    if joined.count(" ") == len(merges) and joined.count("\n") == len(merges) - 1:
        concat = joined.replace(" ", "").split("\n") if merges else []
    else:
        concat = []
        for k, m in enumerate(merges):
            parts = m.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"tokenizer.ggml.merges[{k}]={m!r} is not 'left right'")
            concat.append(parts[0] + parts[1])
    # token id of each merge result; one that is not a token, or is a control token,
    # is skipped (HF refuses such a file; we just never produce that token)
    tids = np.fromiter(map(tok2id.get, concat, repeat(-1)), np.int64, len(concat))
    keep = tids >= 0
    keep[keep] = ~is_control[tids[keep]]
    tids = tids[keep]
    # the first merge producing a given token wins
    _, first = np.unique(tids, return_index=True)
    tids = tids[np.sort(first)].tolist()
    new = [tok_bytes[t] for t in tids]
    if len(set(new)) == len(new) and min(map(len, new), default=2) > 1:
        ranks.update(zip(new, range(256, 256 + len(new)), strict=True))
        rank2id.extend(tids)
    else:  # two tokens with the same bytes: the first merge producing them wins
        for tid, bts in zip(tids, new, strict=True):
            if bts not in ranks:
                ranks[bts] = len(rank2id)
                rank2id.append(tid)
    return ranks, rank2id
