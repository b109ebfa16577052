"""cpullm: quantized llama-architecture language models on a laptop CPU.

    import cpullm
    model = cpullm.load("model.gguf")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ChatSession", "SamplingParams", "__version__", "load"]


def __getattr__(name: str):
    # lazy: `import cpullm` stays cheap (numba loads only when a model is opened)
    if name == "ChatSession":
        from cpullm.chat import ChatSession

        return ChatSession
    if name == "SamplingParams":
        from cpullm.sampler import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'cpullm' has no attribute {name!r}")


def load(path, n_ctx=None, n_threads=None):
    """Map, validate and prepare a GGUF model file; returns a :class:`cpullm.model.Model`."""
    from cpullm.model import Model

    return Model.open(path, n_ctx=n_ctx, n_threads=n_threads)
