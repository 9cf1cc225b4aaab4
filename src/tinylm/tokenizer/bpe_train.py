"""BPE training: learn merges from pre-token counts, the textbook loop and the fast incremental one side by side.

The idea (minbpe's): count every adjacent pair of tokens, turn the most frequent pair into a new
token, repeat. Worked by hand::

    words "ab ab abc" -> pre-tokens {"ab": 1, " ab": 1, " abc": 1}
    pair counts {(a,b): 3, (" ",a): 2, (b,c): 1}     -> merge 1: a+b = "ab"  (id 256)
    pair counts {(" ",ab): 2, (ab,c): 1}             -> merge 2: " "+"ab" = " ab" (id 257)
    pair counts {(" ab",c): 1}                       -> merge 3: " ab"+"c" = " abc" (id 258)

Tie-break (documented, deterministic): among pairs with equal count the winner is the
lexicographically greatest pair of byte strings ``(left_bytes, right_bytes)`` (compare the left
parts, then the right parts). So the same text gives the same merges on every run, with any
number of workers and any chunking of the input.

If a merge would create bytes that already are a token (never seen on real corpora, but not
ruled out), the words are merged into the existing token and the vocabulary does not grow:
the encoder joins any adjacent pair whose bytes are a token, so this mirrors encoding.

:func:`merge_naive` is the readable specification (a few dozen lines); :func:`merge_incremental`
gives the same merges (tested) while touching only the words a merge changes.
"""
from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Mapping

from ..errors import TinyLMError
from .base import progress_bar

Word = tuple[list[int], int]  # (token ids, how often the pre-token occurs)


def learn_merges(words: Mapping[str, int], n_merges: int, *, algorithm: str = "incremental",
                 progress: bool = False) -> list[tuple[int, int]]:
    """Pre-token counts (see :func:`.pretokenize.count_pretokens`) -> up to ``n_merges`` merges.

    ``learn_merges({"ab": 1, " ab": 1, " abc": 1}, 3) -> [(97, 98), (32, 256), (257, 99)]``
    """
    if not words:
        raise TinyLMError("cannot train a tokenizer on an empty corpus; check the --corpus "
                          "files (are they empty, or only special tokens?)")
    word_bytes = {w.encode("utf-8", "surrogatepass"): n for w, n in words.items()}
    if algorithm == "incremental":
        return merge_incremental(word_bytes, n_merges, progress=progress)
    if algorithm == "naive":
        return merge_naive(word_bytes, n_merges)
    raise TinyLMError(f"unknown algorithm {algorithm!r}; use 'incremental' or 'naive'")


def pair_counts(words: list[Word]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs, weighted by word count.

    ``pair_counts([([1, 2, 3, 1, 2], 1)]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``
    """
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for ids, n in words:
        for pair in itertools.pairwise(ids):
            counts[pair] += n
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair``, left to right: ``merge_pair([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]``"""
    a, b = pair
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_naive(word_counts: Mapping[bytes, int], n_tokens: int,
                vocab: list[bytes] | None = None) -> list[tuple[int, int]]:
    """The textbook algorithm: recount every pair of every word before each merge.

    O(merges x corpus) -- kept as the readable specification that :func:`merge_incremental`
    must agree with (tested), and as the benchmark's baseline.
    """
    vocab = [bytes([i]) for i in range(256)] if vocab is None else list(vocab)
    token_id = {b: i for i, b in enumerate(vocab)}
    words: list[Word] = [(list(w), n) for w, n in word_counts.items()]
    merges: list[tuple[int, int]] = []
    while len(merges) < n_tokens:
        counts = pair_counts(words)
        if not counts:
            break
        # highest count; ties -> lexicographically greatest (left bytes, right bytes)
        a, b = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        new_id = token_id.get(vocab[a] + vocab[b])
        if new_id is None:
            new_id = len(vocab)
            vocab.append(vocab[a] + vocab[b])
            token_id[vocab[-1]] = new_id
            merges.append((a, b))
        words = [(merge_pair(ids, (a, b), new_id), n) for ids, n in words]
    return merges


# ---------------------------------------------------------------------------- the fast version

def _inverted(b: bytes) -> str:
    """A string whose ascending order is the *descending* order of byte strings.

    Byte c becomes chr(255 - c) and a terminator chr(256) (above every such char) makes the keys
    prefix-free, so ``_inverted(x) + _inverted(y)`` orders pairs like ``(x, y)``, reversed:
    ``_inverted(b"ab") < _inverted(b"a") < _inverted(b"A")``.
    """
    return "".join(chr(255 - c) for c in b) + "\u0100"


def _index_words(word_counts: Mapping[bytes, int]) -> tuple[list[str], list[int], dict[str, int], dict[str, set[int]]]:
    """The words as strings (one char per token id), their counts, the pair counts, and where each pair is."""
    words: list[str] = []                     # word id -> its tokens, one char per id
    freqs: list[int] = []                     # word id -> count
    for w, n in word_counts.items():
        if len(w) >= 2:
            words.append(w.decode("latin-1"))  # byte b -> chr(b) == token id b
            freqs.append(n)
    counts: dict[str, int] = defaultdict(int)  # pair (2 chars) -> count
    where: dict[str, set[int]] = defaultdict(set)  # pair -> ids of words that (may) contain it
    for wi, w in enumerate(words):
        f = freqs[wi]
        for j in range(len(w) - 1):
            p = w[j:j + 2]
            counts[p] += f
            where[p].add(wi)
    return words, freqs, counts, where


def _note_pairs_with(new: str, word: str, wi: int, where: dict[str, set[int]]) -> set[str]:
    """The pairs of ``word`` that contain the token ``new``; each is noted as occurring in word ``wi``."""
    pairs = {word[j:j + 2] for j in range(len(word) - 1) if new in word[j:j + 2]}
    for p in pairs:
        where[p].add(wi)
    return pairs


def merge_incremental(word_counts: Mapping[bytes, int], n_tokens: int, vocab: list[bytes] | None = None,
                      progress: bool = False) -> list[tuple[int, int]]:
    """Learn merges until ``n_tokens`` new tokens exist (or no pair is left).

    The incremental algorithm: count each pair once, then at each merge update only the words
    that contain the merged pair (``where``: pair -> word ids) and the counts of the pairs those
    words gain or lose. A max-heap of (count, tie-break key) picks the best pair; entries go
    stale when a count drops and are re-pushed with the current count when popped (counts of a
    pair only fall after the step that created it, so the first fresh entry popped is the max).

    Words are ``str`` with one character per token id (``chr(id)``), so a merge inside a word is
    ``str.replace`` (leftmost, non-overlapping: BPE's rule) and a pair is a 2-character string.
    ``merge_incremental({b"abab": 1}, 2) -> [(97, 98), (256, 256)]``.
    """
    vocab = [bytes([i]) for i in range(256)] if vocab is None else list(vocab)
    token_id = {b: i for i, b in enumerate(vocab)}
    inv = [_inverted(b) for b in vocab]       # tie-break key per token id
    words, freqs, counts, where = _index_words(word_counts)
    heap = [(-c, inv[ord(p[0])] + inv[ord(p[1])], p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = progress_bar(progress and n_tokens > 0, total=n_tokens, desc="merging", unit="merge")
    made = 0
    while made < n_tokens and heap:
        negc, key, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c != -negc:  # stale entry: the pair lost occurrences since it was pushed
            if c > 0:
                heapq.heappush(heap, (-c, key, pair))
            continue
        a, b = ord(pair[0]), ord(pair[1])
        new_bytes = vocab[a] + vocab[b]
        new_id = token_id.get(new_bytes)
        fresh = new_id is None
        if fresh:  # the usual case: a new token
            new_id = len(vocab)
            vocab.append(new_bytes)
            token_id[new_bytes] = new_id
            inv.append(inv[a][:-1] + inv[b])
            merges.append((a, b))
            made += 1
            bar.update(1)
        new = chr(new_id)
        grown: set[str] = set()  # pairs that gained occurrences: pushed once their count is final
        for wi in where.pop(pair, ()):
            w = words[wi]
            i = w.find(pair)
            if i < 0:  # the word lost this pair to an earlier merge
                continue
            f = freqs[wi]
            nw = w.replace(pair, new)
            words[wi] = nw
            if not fresh:  # merged into an existing token: recount this word's pairs
                for j in range(len(w) - 1):
                    counts[w[j:j + 2]] -= f
                for j in range(len(nw) - 1):
                    counts[nw[j:j + 2]] += f
                grown.update(_note_pairs_with(new, nw, wi, where))
                continue
            # pairs lost: the neighbours of each occurrence (once if two occurrences share one)
            last = len(w) - 2
            shared = -1
            while i >= 0:
                if i > 0 and i - 1 != shared:
                    counts[w[i - 1:i + 1]] -= f
                if i < last:
                    counts[w[i + 1:i + 3]] -= f
                    shared = i + 1
                i = w.find(pair, i + 2)
            # pairs gained: those with the new token (all of its occurrences come from here)
            k = nw.find(new)
            last = len(nw) - 1
            shared = -1
            while k >= 0:
                if k > 0 and k - 1 != shared:
                    p = nw[k - 1:k + 1]
                    counts[p] += f
                    grown.add(p)
                    where[p].add(wi)
                if k < last:
                    p = nw[k:k + 2]
                    counts[p] += f
                    grown.add(p)
                    where[p].add(wi)
                    shared = k
                k = nw.find(new, k + 1)
        del counts[pair]
        for p in grown:
            heapq.heappush(heap, (-counts[p], inv[ord(p[0])] + inv[ord(p[1])], p))
    bar.close()
    return merges
