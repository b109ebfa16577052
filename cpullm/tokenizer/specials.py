"""Finding special-token spellings ("<|im_start|>", "[INST]", ...) in text.

A vocabulary can hold thousands of them (Tekken reserves 1000, Mistral v0.3 has ~770
control tokens): one regex alternation of them all takes Python's ``re`` about a second
to compile. :class:`LiteralMatcher` finds the same matches, leftmost and then longest,
with a regex of their first characters and set lookups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator


class LiteralMatcher:
    """Matches of any of a set of literal strings, scanning left to right: at each
    position the longest string that starts there; no overlaps."""

    def __init__(self, strings: Iterable[str]) -> None:
        self._strings = frozenset(s for s in strings if s)
        lengths: dict[str, set[int]] = {}
        for s in self._strings:
            lengths.setdefault(s[0], set()).add(len(s))
        # per first character, the lengths to try, longest first
        self._lengths = {c: sorted(ls, reverse=True) for c, ls in lengths.items()}
        firsts = "".join(re.escape(c) for c in sorted(lengths))
        self._starts = re.compile(f"[{firsts}]") if firsts else None

    def __bool__(self) -> bool:
        return bool(self._strings)

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, end) of each match in ``text``, in order."""
        if self._starts is None:
            return
        search, strings, lengths = self._starts.search, self._strings, self._lengths
        size = len(text)
        pos = 0
        while (m := search(text, pos)) is not None:
            i = m.start()
            for n in lengths[text[i]]:
                if i + n <= size and text[i : i + n] in strings:
                    yield i, i + n
                    pos = i + n
                    break
            else:
                pos = i + 1
