"""Tokenizers: the interface (:class:`Tokenizer`), character level, and byte-level BPE.

Layout: ``base`` (interface, special-token rules), ``char``, ``pretokenize`` (split patterns,
safe cut points, parallel pre-token counting), ``bpe_train`` (learning merges), ``bpe`` (the
tokenizer object), ``io`` (tiktoken / GPT-2 / Hugging Face files), ``stats`` (vocabulary-size report).
"""
from .base import ENDOFTEXT, Tokenizer, load_tokenizer, register
from .bpe import BPETokenizer
from .char import CharTokenizer

__all__ = ["ENDOFTEXT", "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "register"]
