"""SentencePiece BPE (``tokenizer.ggml.model == "llama"``) in pure Python.

Same algorithm as sentencepiece's ``bpe_model.cc``: start from single characters,
repeatedly merge the adjacent pair whose concatenation is a vocabulary piece with the
highest score (ties: leftmost), then map each final symbol to its id, falling back to
``<0xXX>`` byte tokens (or unk) for symbols that are not pieces. Only NORMAL,
USER_DEFINED, UNUSED and UNDEFINED pieces take part (sentencepiece keeps control,
unknown and byte pieces apart), so text such as "</s>" never merges into a control id.
"""

from __future__ import annotations

import heapq
import re

import numpy as np

from cpullm.gguf.constants import TokenType

SPACE = "\u2581"  # "▁"
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_MERGEABLE = (TokenType.NORMAL, TokenType.USER_DEFINED, TokenType.UNUSED, TokenType.UNDEFINED)
_CACHE_MAX = 1 << 16


class SentencePieceBPE:
    """Encodes already-escaped text ("▁" for spaces) into ids."""

    def __init__(
        self, tokens: list[str], types: np.ndarray, scores: np.ndarray, unk_id: int | None
    ) -> None:
        types_l = types.tolist()
        scores_l = scores.tolist()
        self.pieces: dict[str, int] = {}
        self.scores: dict[str, float] = {}
        self.byte_ids: list[int | None] = [None] * 256
        unused: set[str] = set()
        for i, (tok, ty) in enumerate(zip(tokens, types_l, strict=True)):
            if ty == TokenType.BYTE:
                m = BYTE_TOKEN.fullmatch(tok)
                if m is not None and self.byte_ids[int(m.group(1), 16)] is None:
                    self.byte_ids[int(m.group(1), 16)] = i
            elif ty in _MERGEABLE and tok and tok not in self.pieces:
                self.pieces[tok] = i
                self.scores[tok] = scores_l[i]
                if ty == TokenType.UNUSED:
                    unused.add(tok)
        self.unused = unused
        self.unk_id = unk_id
        self.byte_fallback = any(b is not None for b in self.byte_ids)
        # If no piece holds "▁" right after another character, no merge can cross the
        # start of a "▁..." word, so words are encoded (and cached) independently.
        inner_space = re.compile("[^" + SPACE + "]" + SPACE)
        splittable = not any(inner_space.search(p) for p in self.pieces)
        self._word_split = (
            re.compile("(?<=[^" + SPACE + "])(?=" + SPACE + ")") if splittable else None
        )
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if self._word_split is None:
            return self._bpe(text)
        cache = self._cache
        out: list[int] = []
        for word in self._word_split.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe(word)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)
        return out

    def _bpe(self, text: str) -> list[int]:
        syms = list(text)
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        scores = self.scores
        heap = []
        for i in range(n - 1):
            p = syms[i] + syms[i + 1]
            sc = scores.get(p)
            if sc is not None:
                heap.append((-sc, i, p))
        heapq.heapify(heap)
        rev: dict[str, tuple[str, str]] = {}
        while heap:
            _, i, p = heapq.heappop(heap)
            left = syms[i]
            j = nxt[i]
            # stale entry: symbols are contiguous runs of the text starting at their
            # index, so an equal length means the same string
            if not left or j < 0 or len(left) + len(syms[j]) != len(p):
                continue
            if p in self.unused:
                rev[p] = (left, syms[j])
            syms[i] = p
            syms[j] = ""
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                q = p + syms[k]
                sc = scores.get(q)
                if sc is not None:
                    heapq.heappush(heap, (-sc, i, q))
            h = prv[i]
            if h >= 0:
                q = syms[h] + p
                sc = scores.get(q)
                if sc is not None:
                    heapq.heappush(heap, (-sc, h, q))
        out: list[int] = []
        i = 0
        while i >= 0:
            self._emit(syms[i], out, rev)
            i = nxt[i]
        return out

    def _emit(self, piece: str, out: list[int], rev: dict[str, tuple[str, str]]) -> None:
        tid = self.pieces.get(piece)
        if tid is not None:
            if piece in rev:  # an UNUSED piece: resegment into its parts (as sentencepiece)
                left, right = rev[piece]
                self._emit(left, out, rev)
                self._emit(right, out, rev)
            else:
                out.append(tid)
            return
        if self.byte_fallback:
            for b in piece.encode("utf-8"):
                bid = self.byte_ids[b]
                if bid is not None:
                    out.append(bid)
                elif self.unk_id is not None:
                    out.append(self.unk_id)
        elif self.unk_id is not None:
            out.append(self.unk_id)
