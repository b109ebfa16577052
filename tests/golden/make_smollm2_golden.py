"""Make golden greedy-decoding token ids for SmolLM2-135M-Instruct (GGUF) with HF transformers.

This is an independent reference implementation: HF transformers loads the same GGUF file,
dequantizes every tensor to float32 and runs the model on CPU with torch. The output is
``tests/golden/smollm2_greedy.json`` (next to this script), which cpullm tests compare against.

Needs: torch, transformers, accelerate, gguf (not cpullm dependencies; use a separate venv).

Usage::

    /path/to/venv/bin/python tests/golden/make_smollm2_golden.py \
        /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

Records, for each prompt (encoded with no special tokens: SmolLM2 has add_bos_token false):
the prompt ids; greedy decoding of N_NEW tokens with a full forward pass over the whole
sequence each step (no KV cache), each step's chosen id, top-5 ids and float32 logits and the
top1 - top2 margin; the top-20 ids/logits at the last prompt position, and the last prompt
position's logits for a few fixed ids.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
N_NEW = 20
TOP_K_STEP = 5
TOP_K_PROMPT = 20
FIXED_IDS = [0, 1, 2, 13, 198, 330, 1000, 5000, 10000, 20000, 30000, 40000, 49151]
OUT = Path(__file__).resolve().parent / "smollm2_greedy.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_logits(model, ids: list[int]) -> torch.Tensor:
    """Float32 logits at the last position for the full sequence ``ids`` (no cache)."""
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0, -1].to(torch.float32)


def topk(logits: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    vals, idx = torch.topk(logits, k)
    return [int(i) for i in idx], [float(v) for v in vals]


def run_prompt(model, tok, prompt: str) -> dict:
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    default_ids = tok(prompt)["input_ids"]
    if default_ids != prompt_ids:
        print(f"note: default encoding adds special tokens: {default_ids}", file=sys.stderr)

    logits = last_logits(model, prompt_ids)
    p_ids, p_vals = topk(logits, TOP_K_PROMPT)
    prompt_rec = {
        "top20_ids": p_ids,
        "top20_logits": p_vals,
        "fixed_ids": FIXED_IDS,
        "fixed_logits": [float(logits[i]) for i in FIXED_IDS],
    }

    ids = list(prompt_ids)
    steps = []
    for step in range(N_NEW):
        if step > 0:
            logits = last_logits(model, ids)
        t_ids, t_vals = topk(logits, TOP_K_STEP)
        chosen = int(torch.argmax(logits))
        assert chosen == t_ids[0]
        steps.append(
            {
                "id": chosen,
                "top5_ids": t_ids,
                "top5_logits": t_vals,
                "margin": t_vals[0] - t_vals[1],
            }
        )
        ids.append(chosen)

    gen = ids[len(prompt_ids) :]
    margins = [s["margin"] for s in steps]
    min_step = min(range(N_NEW), key=lambda i: margins[i])
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "add_special_tokens": False,
        "n_new": N_NEW,
        "generated_ids": gen,
        "generated_text": tok.decode(gen),
        "full_text": tok.decode(ids),
        "min_margin": margins[min_step],
        "min_margin_step": min_step,
        "prompt_last_logits": prompt_rec,
        "steps": steps,
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} GGUF_PATH")
    gguf = Path(sys.argv[1]).resolve()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32, p.dtype

    with torch.no_grad():
        results = [run_prompt(model, tok, p) for p in PROMPTS]

    data = {
        "source": (
            f"transformers {transformers.__version__}, torch {torch.__version__}, "
            "float32 dequantized from GGUF"
        ),
        "method": "greedy argmax, full forward over the whole sequence each step, no KV cache",
        "file": gguf.name,
        "file_sha256": sha256_file(gguf),
        "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "prompts": results,
    }
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for r in results:
        print(repr(r["prompt"]), r["prompt_ids"])
        print("  ids :", r["generated_ids"])
        print("  text:", repr(r["generated_text"]))
        small = sorted(range(N_NEW), key=lambda i: r["steps"][i]["margin"])[:4]
        for i in small:
            s = r["steps"][i]
            print(f"  step {i:2d} margin {s['margin']:.4f} top5 {s['top5_ids']}")


if __name__ == "__main__":
    main()
