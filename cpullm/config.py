"""``ModelConfig``: the model's shape, read from GGUF metadata keys only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cpullm.errors import ConfigError
from cpullm.gguf.constants import Keys

SUPPORTED_ARCHITECTURES = ("llama",)


def _int(md: Mapping[str, Any], key: str, default: int | None = None) -> int:
    v = md.get(key, default)
    if v is None:
        raise ConfigError(f"model metadata lacks the required key {key!r}")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"metadata {key!r} must be an integer, got {v!r}")
    return int(v)


def _float(md: Mapping[str, Any], key: str, default: float) -> float:
    v = md.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"metadata {key!r} must be a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a llama-architecture model."""

    arch: str
    dim: int  # embedding width
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # may differ from dim // n_heads (Mistral NeMo: 5120 / 32 heads, head_dim 128)
    ffn_dim: int
    vocab_size: int
    context_length: int
    rope_dim: int  # leading dimensions of each head that RoPE rotates
    rope_theta: float
    rms_eps: float
    sliding_window: int = 0  # 0: full attention
    name: str = ""

    def __post_init__(self) -> None:
        for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                  "vocab_size", "context_length", "rope_dim"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"model config {f} must be positive, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"head count {self.n_heads} is not a multiple of the kv head count "
                f"{self.n_kv_heads}"
            )
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ConfigError(
                f"rope dimension count {self.rope_dim} must be even and at most head_dim "
                f"{self.head_dim}"
            )
        if self.sliding_window < 0:
            raise ConfigError(f"sliding window must be >= 0, got {self.sliding_window}")
        if not self.rope_theta > 0 or not self.rms_eps > 0:
            raise ConfigError("rope freq base and rms epsilon must be positive")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], vocab_size: int | None = None) -> ModelConfig:
        """Build from GGUF metadata. ``vocab_size`` (from ``token_embd``) is used when
        the file has no ``{arch}.vocab_size`` key."""
        arch = md.get(Keys.ARCHITECTURE)
        if arch is None:
            raise ConfigError(f"model metadata lacks {Keys.ARCHITECTURE!r}")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architecture {arch!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)})"
            )

        def k(key: str) -> str:
            return key.format(arch=arch)

        dim = _int(md, k(Keys.EMBEDDING_LENGTH))
        n_heads = _int(md, k(Keys.HEAD_COUNT))
        n_kv = _int(md, k(Keys.HEAD_COUNT_KV), n_heads)
        if n_heads <= 0 or dim % n_heads and k(Keys.KEY_LENGTH) not in md:
            raise ConfigError(f"embedding length {dim} is not divisible by head count {n_heads}")
        head_dim = _int(md, k(Keys.KEY_LENGTH), dim // max(n_heads, 1))
        v_len = _int(md, k(Keys.VALUE_LENGTH), head_dim)
        if v_len != head_dim:
            raise ConfigError(f"value length {v_len} differs from key length {head_dim}")
        if vocab_size is None:
            vocab_size = _int(md, k(Keys.VOCAB_SIZE), len(md.get(Keys.TOKENS, ())) or None)
        window = md.get(k(Keys.SLIDING_WINDOW), 0)
        return cls(
            arch=arch,
            dim=dim,
            n_layers=_int(md, k(Keys.BLOCK_COUNT)),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            ffn_dim=_int(md, k(Keys.FEED_FORWARD_LENGTH)),
            vocab_size=vocab_size,
            context_length=_int(md, k(Keys.CONTEXT_LENGTH), 4096),
            rope_dim=_int(md, k(Keys.ROPE_DIMENSION_COUNT), head_dim),
            rope_theta=_float(md, k(Keys.ROPE_FREQ_BASE), 10000.0),
            rms_eps=_float(md, k(Keys.RMS_EPS), 1e-5),
            sliding_window=_int(md, k(Keys.SLIDING_WINDOW), 0) if window is not None else 0,
            name=str(md.get(Keys.NAME, "")),
        )
