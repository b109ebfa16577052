"""Typed errors raised at cpullm's edges.

Every error a user can trigger (a bad file, a bad argument, a bad request) is a
``CpullmError`` whose message says what is wrong and, where it helps, what to do.
"""

from __future__ import annotations


class CpullmError(Exception):
    """Base class of every error cpullm raises on purpose."""


class GGUFError(CpullmError):
    """A GGUF file is malformed, truncated, or uses something cpullm does not support."""


class ConfigError(CpullmError):
    """Model metadata is missing a key or holds an inconsistent value."""


class TokenizerError(CpullmError):
    """Tokenizer metadata is missing or inconsistent."""


class ModelNotFoundError(CpullmError):
    """A model name or path could not be resolved to a file."""
