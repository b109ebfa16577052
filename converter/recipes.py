"""Which ggml type each tensor gets, per ``--type``.

* ``f32`` / ``f16`` / ``bf16``: every 2-D weight in that type;
* ``q8_0``: every 2-D weight Q8_0;
* ``q4_0`` / ``q4_1``: 2-D weights in that type, except the output head (``output.weight``,
  or ``token_embd.weight`` when the embeddings are tied) in Q8_0;
* norms (1-D) always F32. A 2-D weight whose rows are not a multiple of 32 elements cannot
  be block-quantized and falls back to F16 (as llama.cpp does).
"""

from __future__ import annotations

from cpullm.gguf.constants import GGMLType

RECIPES = ("q4_0", "q4_1", "q8_0", "f16", "bf16", "f32")

_MAIN = {
    "q4_0": GGMLType.Q4_0, "q4_1": GGMLType.Q4_1, "q8_0": GGMLType.Q8_0,
    "f16": GGMLType.F16, "bf16": GGMLType.BF16, "f32": GGMLType.F32,
}
# llama.cpp's general.file_type (llama_ftype)
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "bf16": 32}


def tensor_type(recipe: str, name: str, shape: tuple[int, ...], tied: bool) -> GGMLType:
    if recipe not in _MAIN:
        raise ValueError(f"unknown type {recipe!r}; choose one of {', '.join(RECIPES)}")
    if len(shape) == 1:
        return GGMLType.F32
    t = _MAIN[recipe]
    head = "token_embd.weight" if tied else "output.weight"
    if recipe in ("q4_0", "q4_1") and name == head:
        t = GGMLType.Q8_0
    if t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0) and shape[-1] % 32:
        t = GGMLType.F16
    return t
