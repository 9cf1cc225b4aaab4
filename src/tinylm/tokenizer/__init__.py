"""Tokenizers: the interface (:class:`Tokenizer`), character level, and byte-level BPE."""
from .base import Tokenizer, load_tokenizer, register
from .bpe import BPETokenizer
from .char import CharTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "load_tokenizer", "register"]
