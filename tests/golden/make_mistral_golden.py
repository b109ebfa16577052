"""Golden logits for tests/test_mistral_models.py: transformers' MistralForCausalLM with eager
attention (which applies Mistral's sliding window) on the deterministic tiny checkpoints that
``models.make_checkpoint`` builds (same presets, same seed, so the same BF16 weights the test
converts). Float32 compute on the BF16 weights.

Run with a Python that has torch + transformers (+ numpy, ml_dtypes):

    /tmp/refvenv/bin/python tests/golden/make_mistral_golden.py

Writes ``tests/golden/mistral_logits.npz``:

* ``window/ids``, ``window/logits`` (40, 512): tiny Mistral 7B v0.1 (sliding window 8) over 40
  positions, 5x the window;
* ``nemo/ids`` (43 Tekken ids: a v3-tekken chat that mistral_common encodes identically, see
  ``NEMO_CHAT``), ``nemo/cols`` (1024 vocabulary columns: a fixed random draw plus every
  position's top 8), ``nemo/logits`` (43, 1024) those columns, ``nemo/top`` (43,) the argmax
  over the whole vocabulary and ``nemo/gap`` (43,) its margin over the runner-up: tiny NeMo
  (head_dim 32 with dim 64 and 4 heads, rope theta 1e6) with the full Tekken vocabulary of
  131072 rows (full logits would be 22 MB).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from models.make_checkpoint import make_checkpoint  # noqa: E402
from models.presets import tiny  # noqa: E402

SEED = 0
WINDOW_T = 40
# mistral_common's encode_chat_completion of this conversation with tekken_240718.json
# (checked by tests/test_mistral_models.py against the converted GGUF's tokenizer)
NEMO_CHAT = [
    {"role": "system", "content": "Réponds brièvement."},
    {"role": "user", "content": "Quelle est la capitale de la France ? 東京は？"},
    {"role": "assistant", "content": "Paris. 東京は日本の首都です。"},
    {"role": "user", "content": "Merci ! Et la Grèce ?"},
    {"role": "assistant", "content": "Athènes", "prefix": True},
]
NEMO_IDS = [1, 3, 6605, 2755, 1709, 1427, 40694, 1311, 1427, 5498, 3082, 48798, 2312, 1719, 4,
            42572, 1046, 48798, 2312, 10008, 2439, 17606, 16834, 8745, 1320, 2, 3, 92894, 3869,
            1115, 58105, 60164, 1338, 44345, 2253, 2662, 8338, 1427, 79149, 3082, 4, 122852,
            24488]
N_COLS = 1024


def window_preset():
    p = tiny("mistral-7b-v0.1")
    assert p.sliding_window == 8 and p.context_length >= WINDOW_T
    return p


def nemo_preset():
    p = tiny("mistral-nemo-12b")
    assert p.head_dim * p.n_heads != p.dim and p.rope_theta == 1e6
    return replace(p, vocab_size=131072, tokenizer="tekken_240718.json")


def window_ids() -> np.ndarray:
    return np.random.default_rng(4242).integers(0, window_preset().vocab_size, WINDOW_T)


def _run(p, ids: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as d:
        make_checkpoint(p, d, "hf", seed=SEED, tokenizer=False)
        model = transformers.MistralForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        assert model.config.sliding_window == p.sliding_window
        with torch.no_grad():
            return model(torch.tensor(ids[None])).logits[0].numpy().astype(np.float32)


def main() -> None:
    import torch
    import transformers

    out = {}
    ids = window_ids()
    logits = _run(window_preset(), ids)
    out["window/ids"] = ids.astype(np.int64)
    out["window/logits"] = logits
    print("window", logits.shape, float(np.abs(logits).mean()))

    ids = np.asarray(NEMO_IDS, dtype=np.int64)
    full = _run(nemo_preset(), ids)
    order = np.argsort(-full, axis=1)
    top8 = np.unique(order[:, :8])
    rand = np.random.default_rng(7).choice(full.shape[1], N_COLS, replace=False)
    cols = np.unique(np.concatenate([top8, rand[~np.isin(rand, top8)][: N_COLS - len(top8)]]))
    assert len(cols) == N_COLS
    out["nemo/ids"] = ids
    out["nemo/cols"] = cols.astype(np.int64)
    out["nemo/logits"] = full[:, cols]
    out["nemo/top"] = order[:, 0].astype(np.int64)
    out["nemo/gap"] = (full[np.arange(len(ids)), order[:, 0]]
                       - full[np.arange(len(ids)), order[:, 1]]).astype(np.float32)
    print("nemo", full.shape, float(np.abs(full).mean()), "min gap", out["nemo/gap"].min())

    path = Path(__file__).with_name("mistral_logits.npz")
    np.savez_compressed(path, **out)
    print("wrote", path, path.stat().st_size, "bytes", "transformers", transformers.__version__,
          "torch", torch.__version__)


if __name__ == "__main__":
    main()
