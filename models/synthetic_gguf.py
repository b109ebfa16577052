"""Shape-exact synthetic GGUF files with random weights, for benchmarks.

    python -m models.synthetic_gguf mistral-7b-v0.1 --type q4_0 -o /tmp/mistral7b-q4_0.gguf

Every 2-D weight is ``--type`` (random blocks with sane scales, so activations stay
finite), norms are F32 ones. The tokenizer is a byte-level stand-in (256 byte tokens,
the rest unused control tokens) so ``cpullm generate`` runs on the file; the text is
noise, the speed is real. Written tensor by tensor in bounded memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from cpullm.gguf import GGMLType, GGUFWriter, TokenType, ValueType
from cpullm.gguf.constants import BLOCK_LAYOUT
from models.presets import Preset, get

TYPES = {"q4_0": GGMLType.Q4_0, "q4_1": GGMLType.Q4_1, "q8_0": GGMLType.Q8_0,
         "f16": GGMLType.F16, "f32": GGMLType.F32}
CHUNK_BYTES = 64 << 20


def _byte_tokens(vocab: int) -> tuple[list[str], np.ndarray]:
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to 256+
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    tokens = [table[b] for b in range(256)] + [f"<unused{i}>" for i in range(vocab - 256)]
    types = np.full(vocab, int(TokenType.CONTROL), np.int32)
    types[:256] = int(TokenType.NORMAL)
    return tokens, types


def _random_blocks(rng: np.random.Generator, n_rows: int, cols: int, qtype: GGMLType,
                   scale: float) -> np.ndarray:
    """Random (n_rows, row_bytes) data of ``qtype`` whose values have std about ``scale``."""
    bs, ts = BLOCK_LAYOUT[qtype]
    if qtype in (GGMLType.F16, GGMLType.F32):
        dt = np.float16 if qtype == GGMLType.F16 else np.float32
        return (rng.standard_normal((n_rows, cols), np.float32) * scale).astype(dt).view(np.uint8)
    nb = cols // bs
    raw = rng.integers(0, 256, (n_rows, nb, ts), dtype=np.uint8)
    step = {GGMLType.Q4_0: scale / 4.6, GGMLType.Q4_1: scale / 4.6, GGMLType.Q8_0: scale / 73}
    d = np.full((n_rows, nb), step[qtype], np.float16).view(np.uint8).reshape(n_rows, nb, 2)
    raw[:, :, 0:2] = d
    if qtype == GGMLType.Q4_1:  # m = -7.5 d centres the nibbles
        raw[:, :, 2:4] = np.full((n_rows, nb), -7.5 * step[qtype], np.float16).view(
            np.uint8).reshape(n_rows, nb, 2)
    return raw.reshape(n_rows, nb * ts)


def write_synthetic(p: Preset, out: str | Path, qtype: GGMLType, seed: int = 0,
                    progress: bool = True) -> Path:
    """Write preset ``p`` with random ``qtype`` weights to ``out``."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out)
    arch = "llama"
    md = {
        "general.architecture": arch, "general.name": f"{p.name} synthetic {qtype.name}",
        f"{arch}.context_length": p.context_length, f"{arch}.embedding_length": p.dim,
        f"{arch}.block_count": p.n_layers, f"{arch}.feed_forward_length": p.ffn_dim,
        f"{arch}.attention.head_count": p.n_heads, f"{arch}.attention.head_count_kv": p.n_kv_heads,
        f"{arch}.attention.key_length": p.head_dim, f"{arch}.attention.value_length": p.head_dim,
        f"{arch}.rope.dimension_count": p.head_dim, f"{arch}.rope.freq_base": float(p.rope_theta),
        f"{arch}.attention.layer_norm_rms_epsilon": float(p.rms_eps),
        f"{arch}.vocab_size": p.vocab_size,
        "general.file_type": {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2,
                              GGMLType.Q4_1: 3, GGMLType.Q8_0: 7}[qtype],
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.add_bos_token": False,
    }
    if p.sliding_window:
        md[f"{arch}.attention.sliding_window"] = p.sliding_window
    tokens, types = _byte_tokens(p.vocab_size)
    md["tokenizer.ggml.tokens"] = tokens
    md["tokenizer.ggml.token_type"] = types
    md["tokenizer.ggml.bos_token_id"] = 256
    md["tokenizer.ggml.eos_token_id"] = 257
    for k, v in md.items():
        w.add(k, v)
    w.add("tokenizer.ggml.merges", [], item_type=ValueType.STRING)
    q, kv = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    plan: list[tuple[str, tuple[int, ...], GGMLType, float]] = [
        ("token_embd.weight", (p.vocab_size, p.dim), qtype, 1.0)]
    for i in range(p.n_layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (p.dim,), GGMLType.F32, 1.0),
            (b + "attn_q.weight", (q, p.dim), qtype, p.dim**-0.5),
            (b + "attn_k.weight", (kv, p.dim), qtype, p.dim**-0.5),
            (b + "attn_v.weight", (kv, p.dim), qtype, p.dim**-0.5),
            (b + "attn_output.weight", (p.dim, q), qtype, q**-0.5),
            (b + "ffn_norm.weight", (p.dim,), GGMLType.F32, 1.0),
            (b + "ffn_gate.weight", (p.ffn_dim, p.dim), qtype, p.dim**-0.5),
            (b + "ffn_up.weight", (p.ffn_dim, p.dim), qtype, p.dim**-0.5),
            (b + "ffn_down.weight", (p.dim, p.ffn_dim), qtype, p.ffn_dim**-0.5),
        ]
    plan.append(("output_norm.weight", (p.dim,), GGMLType.F32, 1.0))
    if not p.tied:
        plan.append(("output.weight", (p.vocab_size, p.dim), qtype, p.dim**-0.5))
    for name, shape, t, _ in plan:
        w.add_tensor_info(name, shape, t)
    w.write_header()
    t0, done, shown = time.time(), 0, 0.0
    try:
        for i, (name, shape, t, scale) in enumerate(plan):
            if len(shape) == 1:
                w.write_tensor_data(name, np.ones(shape, np.float32))
                continue
            rows, cols = shape
            row_bytes = cols // BLOCK_LAYOUT[t][0] * BLOCK_LAYOUT[t][1]
            per = max(1, CHUNK_BYTES // row_bytes)
            parts = [_random_blocks(rng, min(per, rows - r), cols, t, scale)
                     for r in range(0, rows, per)]
            w.write_tensor_data(name, np.concatenate(parts))
            done += rows * row_bytes
            if progress and (time.time() - shown > 0.5 or i + 1 == len(plan)):
                shown = time.time()
                print(f"\r{i + 1}/{len(plan)} tensors, {done / 2**30:.2f} GiB, "
                      f"{time.time() - t0:.0f} s", end="", file=sys.stderr, flush=True)
        path = w.finish()
    except BaseException:
        w.abort()
        raise
    if progress:
        print(file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", help="mistral-7b-v0.1, mistral-7b-v0.3, mistral-nemo-12b, "
                    "smollm2-135m (add -tiny for a test-sized one)")
    ap.add_argument("--type", default="q4_0", choices=sorted(TYPES))
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    path = write_synthetic(get(a.preset), a.output, TYPES[a.type], a.seed)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
