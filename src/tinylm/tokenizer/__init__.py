"""Tokenizers: the interface (:class:`Tokenizer`, tiktoken's methods), character level, and byte-level BPE.

Layout: ``base`` (interface, special-token rules), ``char``, ``pretokenize`` (split patterns,
safe cut points, parallel pre-token counting), ``bpe_train`` (learning merges), ``bpe_encode``
(the merge loop, tiktoken's engine on our ranks), ``bpe`` (the tokenizer object, its Python
reference encoder, ``train_bpe``), ``gpt2_files`` (GPT-2's vocab.json + merges.txt), ``io``
(tiktoken and Hugging Face files), ``stats`` (vocabulary-size report).
"""
from .base import ENDOFTEXT, DisallowedSpecial, Tokenizer, load_tokenizer, register
from .bpe import BPETokenizer, train_bpe
from .char import CharTokenizer

__all__ = ["ENDOFTEXT", "BPETokenizer", "CharTokenizer", "DisallowedSpecial", "Tokenizer", "load_tokenizer",
           "register", "train_bpe"]
