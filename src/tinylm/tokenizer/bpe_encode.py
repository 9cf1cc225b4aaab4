"""Encoding with BPE ranks: the lowest-rank merge loop, tiktoken's Rust engine on our ranks, the readable reference.

Encoding semantics are tiktoken's: inside a pre-token, repeatedly join the adjacent pair whose
*joined bytes* have the lowest id (leftmost on ties; :func:`bpe_merge`). A tokenizer's
:class:`RankEncoder` runs that in Rust through a ``tiktoken.Encoding`` built from the ranks;
:meth:`.BPETokenizer.encode_reference` is the same thing in readable Python (the fallback for a split pattern
tiktoken cannot compile), and the tests hold the two to identical ids.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import regex


def bpe_merge(piece: bytes, ranks: Mapping[bytes, int], below: int | None = None) -> list[bytes]:
    """Join the adjacent pair whose joined bytes have the lowest rank (leftmost on ties), until
    no pair is a token (of rank < ``below``, when given).

    With GPT-2's ranks: ``b" hello"`` -> [b" ", b"h", b"e", b"l", b"l", b"o"] -> ... -> [b" hello"].
    """
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_i, best_rank = -1, below
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):  # '<': leftmost wins ties
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: replace them with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class RankEncoder:
    """One vocabulary's encoders: tiktoken's (built on first use) and the Python one, with its cache.

    ``ranks`` maps token bytes to ids; ``special_tokens`` text to ids. Nothing here is pickled:
    a tokenizer builds its encoder again when it is unpickled.
    """

    def __init__(self, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int], vocab_size: int):
        self.ranks, self.pattern, self.special_tokens = ranks, pattern, special_tokens
        self.vocab_size = vocab_size
        self._cache: dict[bytes, list[int]] = {}
        self._tiktoken: Any = None  # built on first use by fast(); False: tiktoken cannot run the pattern

    def fast(self) -> Any:
        """The ``tiktoken.Encoding`` for our ranks (None if tiktoken cannot compile the pattern)."""
        if self._tiktoken is None:
            import tiktoken
            try:
                self._tiktoken = tiktoken.Encoding(
                    f"tinylm-bpe-{self.vocab_size}", pat_str=self.pattern,
                    mergeable_ranks=self.ranks, special_tokens=self.special_tokens)
            except ValueError as e:  # e.g. a look-behind tiktoken's regex engine lacks
                warnings.warn(f"tiktoken cannot use the split pattern ({e}); encoding with the "
                              f"slower pure-Python encoder", stacklevel=3)
                self._tiktoken = False
        return self._tiktoken or None

    def encode_plain(self, text: str) -> list[int]:
        """Text without special tokens -> ids in Python: cut with the pattern, then BPE each pre-token's bytes."""
        findall = regex.compile(self.pattern).findall  # `regex` caches compiled patterns
        return [i for piece in findall(text) for i in self._bpe(piece.encode("utf-8"))]

    def _bpe(self, piece: bytes) -> list[int]:
        """The ids of one pre-token (:func:`bpe_merge`), cached per distinct pre-token."""
        ids = self._cache.get(piece)
        if ids is None:
            ids = [self.ranks[p] for p in bpe_merge(piece, self.ranks)]
            if len(self._cache) > 200_000:  # bound memory on endless streams
                self._cache.clear()
            self._cache[piece] = ids
        return ids
