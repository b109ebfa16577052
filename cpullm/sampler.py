"""Turn logits into a token id.

    rng = make_rng(seed)                     # same seed, same choices
    tid = sample(logits, temperature, rng)   # temperature 0: argmax

Only temperature sampling for now (top-k / top-p / penalties come later).
"""

from __future__ import annotations

import numpy as np

from cpullm.errors import CpullmError


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A generator seeded with ``seed`` (None: fresh entropy)."""
    return np.random.default_rng(seed)


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64 (temperature > 0)."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    return p


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator | None = None) -> int:
    """One token id: the argmax when ``temperature`` is 0, else a draw from
    softmax(logits / temperature) using ``rng``."""
    if not temperature >= 0:  # also catches NaN
        raise CpullmError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return int(np.argmax(logits))
    if rng is None:
        raise CpullmError("sampling with temperature > 0 needs a random generator")
    p = probabilities(logits, temperature)
    if not np.isfinite(p).all():
        # inf/NaN logits: fall back to the argmax rather than sampling garbage
        return int(np.argmax(logits))
    cdf = np.cumsum(p)
    r = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, r, side="right"), len(cdf) - 1))
