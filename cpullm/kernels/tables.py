"""Lookup tables shared by the kernels (built once per process, a few hundred KB)."""

from __future__ import annotations

import numpy as np

from cpullm.gguf.constants import GGMLType

# Type codes the kernels branch on: the ggml ids themselves.
T_F32 = int(GGMLType.F32)
T_F16 = int(GGMLType.F16)
T_BF16 = int(GGMLType.BF16)
T_Q4_0 = int(GGMLType.Q4_0)
T_Q4_1 = int(GGMLType.Q4_1)
T_Q8_0 = int(GGMLType.Q8_0)

QK = 32  # elements per block of every quantized type (and of the int8 activations)


def half_tables() -> np.ndarray:
    """(2, 65536) float32: row 0 maps f16 bit patterns to float, row 1 bf16 bit patterns.

    The kernels read scales and F16/BF16 weights through these (numba has no fast
    half-precision conversion of its own)."""
    bits = np.arange(65536, dtype=np.uint32)
    out = np.empty((2, 65536), dtype=np.float32)
    out[0] = bits.astype(np.uint16).view(np.float16).astype(np.float32)
    out[1] = (bits << 16).view(np.float32)
    return out
