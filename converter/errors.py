"""Errors the converter raises on purpose; all are ``CpullmError`` subclasses, so the CLI
prints them as one ``error:`` line."""

from __future__ import annotations

from cpullm.errors import CpullmError


class ConvertError(CpullmError):
    """Base class of conversion errors."""


class SourceError(ConvertError):
    """The checkpoint folder is missing a file, or a file is malformed or truncated."""


class UnsupportedError(ConvertError):
    """The checkpoint uses an architecture, dtype or feature the converter does not handle."""


class ShapeMismatchError(ConvertError):
    """A tensor's shape disagrees with the model configuration."""


class OutputError(ConvertError):
    """The output file cannot be written."""
