"""Tokenizers: the interface (:class:`Tokenizer`), character level, and byte-level BPE."""
from .base import Tokenizer, load_tokenizer, register
from .char import CharTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "load_tokenizer", "register"]
