"""Golden logits for tests/test_convert.py: transformers' own model classes on the tiny
random checkpoints that ``models.make_checkpoint`` builds (the same seed, so the same BF16
weights the test converts).

Run with a Python that has torch + transformers (+ numpy, ml_dtypes), e.g.

    /tmp/refvenv/bin/python tests/golden/make_convert_golden.py

Writes ``tests/golden/convert_logits.npz``: for each preset, the token ids and the float32
logits (T, vocab) of MistralForCausalLM / LlamaForCausalLM, eager attention (which applies
Mistral's sliding window), float32 compute on the BF16 weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from models.make_checkpoint import make_checkpoint  # noqa: E402
from models.presets import tiny  # noqa: E402

PRESETS = ("mistral-7b-v0.1", "mistral-nemo-12b", "smollm2-135m")
SEED = 0
T = 16


def token_ids(vocab: int) -> np.ndarray:
    return np.random.default_rng(1234).integers(0, vocab, T)


def main() -> None:
    import torch
    import transformers

    out = {}
    for name in PRESETS:
        p = tiny(name)
        with tempfile.TemporaryDirectory() as d:
            make_checkpoint(p, d, "hf", seed=SEED)
            cls = getattr(transformers, p.arch)
            model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            model.eval()
            ids = token_ids(p.vocab_size)
            with torch.no_grad():
                logits = model(torch.tensor(ids[None])).logits[0].numpy().astype(np.float32)
        out[f"{name}/ids"] = ids.astype(np.int64)
        out[f"{name}/logits"] = logits
        print(name, logits.shape, float(np.abs(logits).mean()))
    path = Path(__file__).with_name("convert_logits.npz")
    np.savez_compressed(path, **out)
    print("wrote", path, path.stat().st_size, "bytes", "transformers", transformers.__version__,
          "torch", torch.__version__)


if __name__ == "__main__":
    main()
