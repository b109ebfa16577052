"""GGUF: format facts, a validated zero-copy reader and a phased writer."""

from cpullm.gguf.constants import GGMLType, Keys, TokenType, ValueType
from cpullm.gguf.reader import GGUFFile, TensorInfo, read_metadata
from cpullm.gguf.writer import GGUFWriter, write_gguf

__all__ = [
    "GGMLType",
    "GGUFFile",
    "GGUFWriter",
    "Keys",
    "TensorInfo",
    "TokenType",
    "ValueType",
    "read_metadata",
    "write_gguf",
]
