"""Random BF16 checkpoints of any preset, in Hugging Face or Mistral native layout.

    python -m models.make_checkpoint mistral-7b-v0.1 OUT --layout hf [--shards N] [--tiny]

The weights depend only on (preset, seed): tensor ``k`` (in the canonical order of
:func:`tensor_specs`) is drawn from ``numpy.random.default_rng([seed, k])``, so the two
layouts and any sharding hold the same values (HF q/k rows permuted as Hugging Face stores
them). numpy + ml_dtypes only (the safetensors files are written here, streaming, one tensor
at a time), so this module also runs in a reference environment with torch/transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.presets import Preset, get

BF16 = np.dtype(ml_dtypes.bfloat16)
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", BF16: "BF16"}

LAYER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
         "ffn_up", "ffn_down")
HF_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
NATIVE_LAYER = {
    "attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
    "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1", "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2",
}
HF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
             "output": "lm_head"}
NATIVE_GLOBAL = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}


def tensor_specs(p: Preset) -> list[tuple[str, tuple[int, ...], float]]:
    """(GGUF-style name without .weight, shape, scale); scale 0 marks a norm (1 + 0.1 N)."""
    q, kv = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    per = {
        "attn_norm": ((p.dim,), 0.0), "attn_q": ((q, p.dim), p.dim**-0.5),
        "attn_k": ((kv, p.dim), p.dim**-0.5), "attn_v": ((kv, p.dim), p.dim**-0.5),
        "attn_output": ((p.dim, q), q**-0.5), "ffn_norm": ((p.dim,), 0.0),
        "ffn_gate": ((p.ffn_dim, p.dim), p.dim**-0.5), "ffn_up": ((p.ffn_dim, p.dim), p.dim**-0.5),
        "ffn_down": ((p.dim, p.ffn_dim), p.ffn_dim**-0.5),
    }
    out = [("token_embd", (p.vocab_size, p.dim), 1.0)]
    for i in range(p.n_layers):
        out += [(f"blk.{i}.{k}", *per[k]) for k in LAYER]
    out.append(("output_norm", (p.dim,), 0.0))
    if not p.tied:
        out.append(("output", (p.vocab_size, p.dim), 4 * p.dim**-0.5))
    return out


def draw(shape: tuple[int, ...], scale: float, seed: int, k: int, dtype=BF16) -> np.ndarray:
    """Tensor number ``k`` of a checkpoint with ``seed``, GGUF/native row order."""
    rng = np.random.default_rng([seed, k])
    x = rng.standard_normal(shape, dtype=np.float32)
    x = 1.0 + 0.1 * x if scale == 0.0 else x * np.float32(scale)
    return x.astype(dtype)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Native (adjacent-pair RoPE) rows -> Hugging Face (rotate-half) rows."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def src_name(gname: str, layout: str) -> str:
    glob, layer = (HF_GLOBAL, HF_LAYER) if layout == "hf" else (NATIVE_GLOBAL, NATIVE_LAYER)
    if gname.startswith("blk."):
        _, i, k = gname.split(".")
        return (f"model.layers.{i}.{layer[k]}.weight" if layout == "hf"
                else f"layers.{i}.{layer[k]}.weight")
    return glob[gname] + ".weight"


def tensors(p: Preset, layout: str, seed: int = 0, dtype=BF16
            ) -> Iterator[tuple[str, tuple[int, ...], callable]]:
    """(source name, shape, thunk producing the array) in canonical order."""
    for k, (g, shape, scale) in enumerate(tensor_specs(p)):
        heads = 0
        if layout == "hf" and g.endswith(("attn_q", "attn_k")):
            heads = p.n_heads if g.endswith("attn_q") else p.n_kv_heads

        def make(shape=shape, scale=scale, k=k, heads=heads):
            x = draw(shape, scale, seed, k, dtype)
            return permute(x, heads) if heads else x

        yield src_name(g, layout), shape, make


def write_safetensors(path: Path, items: list[tuple[str, tuple[int, ...], callable]],
                      dtype=BF16, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor (one tensor in memory at a time)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, shape, _ in items:
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, make in items:
            x = np.ascontiguousarray(make())
            f.write(x.view(np.uint8).reshape(-1).data)


def config_files(p: Preset, layout: str) -> dict[str, dict]:
    if layout == "hf":
        cfg = {
            "architectures": [p.arch],
            "model_type": "mistral" if p.arch.startswith("Mistral") else "llama",
            "hidden_size": p.dim, "intermediate_size": p.ffn_dim,
            "num_hidden_layers": p.n_layers, "num_attention_heads": p.n_heads,
            "num_key_value_heads": p.n_kv_heads, "head_dim": p.head_dim,
            "max_position_embeddings": p.context_length, "rms_norm_eps": p.rms_eps,
            "rope_theta": p.rope_theta, "sliding_window": p.sliding_window,
            "tie_word_embeddings": p.tied, "vocab_size": p.vocab_size, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        }
        return {"config.json": cfg}
    params = {
        "dim": p.dim, "n_layers": p.n_layers, "head_dim": p.head_dim, "hidden_dim": p.ffn_dim,
        "n_heads": p.n_heads, "n_kv_heads": p.n_kv_heads, "norm_eps": p.rms_eps,
        "vocab_size": p.vocab_size, "rope_theta": p.rope_theta,
    }
    if p.sliding_window:
        params["sliding_window"] = p.sliding_window
    if p.tied:
        params["tied_embeddings"] = True
    return {"params.json": params}


def _copy_tokenizer(p: Preset, out: Path, layout: str) -> None:
    if not p.tokenizer:
        return
    try:
        import mistral_common
    except ImportError:
        return
    src = Path(mistral_common.__file__).parent / "data" / p.tokenizer
    if not src.exists():
        return
    if p.tokenizer.endswith(".json"):
        dst = "tekken.json"
    else:
        dst = "tokenizer.model" if layout == "hf" else "tokenizer.model." + src.suffix[1:]
    shutil.copyfile(src, out / dst)


def make_checkpoint(p: Preset | str, out: str | Path, layout: str = "hf", shards: int = 1,
                    seed: int = 0, dtype=BF16, tokenizer: bool = True) -> Path:
    """Write preset ``p`` with random weights to folder ``out``; returns ``out``."""
    if isinstance(p, str):
        p = get(p)
    if layout not in ("hf", "native"):
        raise ValueError("layout must be 'hf' or 'native'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fname, content in config_files(p, layout).items():
        (out / fname).write_text(json.dumps(content, indent=2) + "\n")
    items = list(tensors(p, layout, seed, np.dtype(dtype)))
    stem = "model" if layout == "hf" else "consolidated"
    if shards <= 1:
        write_safetensors(out / f"{stem}.safetensors", items, np.dtype(dtype))
    else:
        sizes = [math.prod(s) for _, s, _ in items]
        total, acc, groups = sum(sizes), 0, [[] for _ in range(shards)]
        for it, n in zip(items, sizes, strict=True):
            g = min(shards - 1, acc * shards // total)
            groups[g].append(it)
            acc += n
        groups = [g for g in groups if g]
        wm = {}
        for j, g in enumerate(groups, 1):
            fname = f"{stem}-{j:05d}-of-{len(groups):05d}.safetensors"
            write_safetensors(out / fname, g, np.dtype(dtype))
            wm.update({name: fname for name, _, _ in g})
        index = {"metadata": {"total_size": sum(sizes) * np.dtype(dtype).itemsize},
                 "weight_map": wm}
        (out / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer:
        _copy_tokenizer(p, out, layout)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.make_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("out")
    ap.add_argument("--layout", choices=("hf", "native"), default="hf")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    p = get(a.preset, a.tiny)
    make_checkpoint(p, a.out, a.layout, a.shards, a.seed)
    print(f"wrote {a.out}: {p.name}, {p.n_params:,} parameters, {a.layout} layout, BF16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
