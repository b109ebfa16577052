"""Offline conversion of safetensors checkpoints (Hugging Face or Mistral native layout) to
GGUF. The runtime never imports this package; ``cpullm convert`` imports it lazily.

    from converter.convert import convert
    convert("path/to/Mistral-7B", "mistral-7b.q4_0.gguf", "q4_0")
"""

from converter.errors import (
    ConvertError,
    OutputError,
    ShapeMismatchError,
    SourceError,
    UnsupportedError,
)

__all__ = [
    "ConvertError",
    "OutputError",
    "ShapeMismatchError",
    "SourceError",
    "UnsupportedError",
]
