"""Shape presets of the architectures cpullm targets, and tiny variants of them for tests.

Full presets are shape-exact (used for benchmarks with synthetic weights); ``tiny(name)``
keeps each preset's distinguishing features (GQA, head_dim != dim/heads, sliding window,
tied embeddings, RoPE theta) at a size that converts and runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str  # Hugging Face architecture class
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    sliding_window: int | None
    tied: bool
    tokenizer: str | None  # file name inside mistral_common's data folder, if any

    @property
    def n_params(self) -> int:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        layer = 2 * self.dim + 2 * self.dim * q + 2 * self.dim * kv + 3 * self.dim * self.ffn_dim
        head = 0 if self.tied else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * layer + self.dim + head


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("mistral-7b-v0.1", "MistralForCausalLM", 4096, 32, 32, 8, 128, 14336, 32000,
               32768, 10000.0, 1e-5, 4096, False, "tokenizer.model.v1"),
        Preset("mistral-7b-v0.3", "MistralForCausalLM", 4096, 32, 32, 8, 128, 14336, 32768,
               32768, 1e6, 1e-5, None, False, "mistral_instruct_tokenizer_240323.model.v3"),
        Preset("mistral-nemo-12b", "MistralForCausalLM", 5120, 40, 32, 8, 128, 14336, 131072,
               1024000, 1e6, 1e-5, None, False, "tekken_240718.json"),
        Preset("smollm2-135m", "LlamaForCausalLM", 576, 30, 9, 3, 64, 1536, 49152, 8192,
               100000.0, 1e-5, None, True, None),
    )
}


def tiny(name: str) -> Preset:
    """A tiny variant of preset ``name`` (random-test sized; no tokenizer)."""
    p = get(name)
    kw = dict(name=f"{p.name}-tiny", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
              ffn_dim=128, vocab_size=512, context_length=128, tokenizer=None)
    if p.name == "mistral-nemo-12b":
        kw["head_dim"] = 32  # head_dim * heads != dim, like NeMo
    if p.name == "smollm2-135m":
        kw.update(dim=96, n_heads=6, n_kv_heads=2, head_dim=16)  # 3:1 GQA like 9/3
    if p.sliding_window:
        kw["sliding_window"] = 8  # shorter than the test prompts, so the window matters
    return replace(p, **kw)


def get(name: str, is_tiny: bool = False) -> Preset:
    if name.endswith("-tiny"):
        return tiny(name[: -len("-tiny")])
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return tiny(name) if is_tiny else PRESETS[name]
