"""A per-file cache of the byte-level BPE tables, so a second start skips building them.

Building tiktoken's rank table from a GGUF vocabulary (49k tokens, 48k merges for
SmolLM2) and the bytes of every token takes about 0.1 s, a sixth of ``cpullm generate``'s
time to the first token. The result depends only on the file and on this code, so it is
kept in ``$CPULLM_CACHE/tokenizers/KEY.npz`` (numpy arrays, no pickle), KEY hashing the
file's path, size, mtime and inode (as Python's own .pyc files do) and this package's
sources. A missing, unreadable or inconsistent entry is rebuilt; a cache folder that
cannot be written is simply not used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

FORMAT = 1
_STAMP: str | None = None


class BPETables(NamedTuple):
    rank_bytes: list[bytes]  # tiktoken's mergeable ranks, in rank order
    rank2id: np.ndarray  # (n_ranks,) i64: GGUF token id of each rank (-1: none)
    tok_bytes: list[bytes]  # raw bytes of every token


def _code_stamp() -> str:
    global _STAMP
    if _STAMP is None:
        h = hashlib.sha1()
        for src in sorted(Path(__file__).parent.glob("*.py")):
            h.update(src.read_bytes())
        _STAMP = h.hexdigest()
    return _STAMP


def key(path: str | os.PathLike) -> str | None:
    """Cache key of the GGUF file at ``path`` (None when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
        real = os.path.realpath(path)
    except OSError:
        return None
    ident = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{FORMAT}\0{_code_stamp()}"
    return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()


def _entry(k: str) -> Path:
    from cpullm.hub import cache_dir

    return cache_dir() / "tokenizers" / f"{k}.npz"


def _pack(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(items) + 1, np.int64)
    np.cumsum([len(b) for b in items], out=off[1:])
    return np.frombuffer(b"".join(items), np.uint8), off


def _unpack(blob: np.ndarray, off: np.ndarray) -> list[bytes]:
    raw = blob.tobytes()
    o = off.tolist()
    return [raw[a:b] for a, b in zip(o[:-1], o[1:], strict=True)]


def load(k: str, n_tokens: int) -> BPETables | None:
    """The tables stored under ``k`` for a vocabulary of ``n_tokens``, or None."""
    names = ("rank_blob", "rank_off", "rank2id", "tok_blob", "tok_off")
    try:
        with np.load(_entry(k), allow_pickle=False) as z:
            rb, ro, r2i, tb, to = (z[n] for n in names)
    except Exception:  # missing, truncated, not a zip, wrong keys: rebuild
        return None
    ok = (
        rb.dtype == np.uint8 and tb.dtype == np.uint8 and ro.dtype == np.int64
        and to.dtype == np.int64 and r2i.dtype == np.int64
        and len(to) == n_tokens + 1 and len(ro) == len(r2i) + 1
        and ro[0] == 0 and to[0] == 0 and ro[-1] == len(rb) and to[-1] == len(tb)
        and bool((np.diff(ro) >= 0).all()) and bool((np.diff(to) >= 0).all())
        and bool((r2i < n_tokens).all()) and bool((r2i >= -1).all())
    )
    if not ok:
        return None
    return BPETables(_unpack(rb, ro), r2i, _unpack(tb, to))


def save(k: str, tables: BPETables) -> None:
    """Store ``tables`` under ``k`` (atomically; silently skipped when it cannot be)."""
    path = _entry(k)
    rb, ro = _pack(tables.rank_bytes)
    tb, to = _pack(tables.tok_bytes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, rank_blob=rb, rank_off=ro, rank2id=np.asarray(tables.rank2id, np.int64),
                     tok_blob=tb, tok_off=to)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
