"""Byte-level BPE: a fast deterministic trainer, a reference encoder and a tiktoken fast path.

The vocabulary is the 256 byte values, then one token per merge (``id = 256 + merge index``),
then the special tokens. Text is cut into pre-tokens by a split regex (GPT-2's by default) and
BPE runs inside each pre-token, so no token crosses a pre-token or a special token.

Encoding semantics are tiktoken's: inside a pre-token, repeatedly join the adjacent pair whose
*joined bytes* have the lowest id (leftmost on ties). ``encode`` runs that in Rust through a
``tiktoken.Encoding`` built from our ranks; ``encode_reference`` is the same thing in readable
Python, and the tests hold the two to identical ids.

Training (``BPETokenizer.train``), worked by hand::

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
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import regex

from ..corpora import iter_chunks
from ..errors import TinyLMError
from .base import ENDOFTEXT, Tokenizer, register

# GPT-2's split pattern as tiktoken spells it (r50k): the original
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ with possessive
# quantifiers; it splits every text identically and is faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (cl100k_base): case-insensitive contractions, digits in groups of at most 3.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
#: named split patterns; ``pattern=`` also takes any ``regex``-module pattern
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "gpt4": CL100K_PATTERN}

# A cut just before a space that follows a non-space character never changes how the built-in
# patterns split: no pre-token of theirs contains "<non-space><space>", and they only look
# ahead. The trainer and the streaming encoder cut text there; for the built-in patterns the
# trainer also counts the space-separated pieces first and runs the regex once per distinct
# piece (exact, and 5x fewer regex calls on English).
_CUT_BEFORE = re.compile(r"(?<=\S) ")  # stdlib \s is a superset of Unicode White_Space: safe
_SPACES_AFTER_SPACE = regex.compile(r"\s( +)")  # spaces that must not be cut before
_SENTINELS = "\ue000\ue001\U000f0000\U000f0001"  # private-use stand-ins for those spaces
_BLOCK_CHARS = 1 << 19  # the trainer pre-tokenizes ~512K-character blocks (one task per worker)
_FORCE_CUT_CHARS = 1 << 22


def resolve_pattern(pattern: str) -> str:
    """``"gpt2"`` / ``"cl100k"`` / ``"gpt4"`` -> the regex; any other string must compile."""
    pat = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pat)
    except regex.error as e:
        raise TinyLMError(f"invalid split pattern {pattern!r}: {e}; use one of {sorted(PATTERNS)} "
                          f"or a pattern the `regex` package compiles") from None
    return pat


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise TinyLMError(f"special token {s!r} must be a non-empty string; remove it from "
                              f"--special-tokens")
    dup = sorted({s for s in specials if specials.count(s) > 1})
    if dup:
        raise TinyLMError(f"special tokens {dup} are listed more than once; list each once")
    return specials


def _special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    """Regex matching any of ``specials``, longest first (so "<|a|>x" beats "<|a|>")."""
    specials = sorted(set(specials), key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: replace them with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ---------------------------------------------------------------------------- pre-tokenization

def _safe_cut(buf: str, lo: int, hi: int, specials: Sequence[str] = ()) -> int:
    """The last index in ``(lo, hi]`` where ``buf`` can be cut without changing its pre-tokens,
    or -1. ``_safe_cut("one two thr", 0, 11) -> 7`` (before " thr").

    Safe (for the built-in patterns): before a space that follows a non-space, or after a
    newline that sits between two non-spaces (text without spaces, e.g. Chinese, has those).
    Never inside a special token, nor inside a possibly incomplete one at the end of ``buf``.
    """
    hi = min(hi, len(buf) - 1)  # buf[hi] must exist: it is the first character after the cut
    best = -1
    i = hi + 1
    while True:  # rule 1: "x| y"
        i = buf.rfind(" ", lo + 1, i)
        if i < 0:
            break
        if not buf[i - 1].isspace() and not _in_special(buf, i, specials):
            best = i
            break
    k = hi
    while True:  # rule 2: "x\n|y", only if later than the rule-1 cut
        k = buf.rfind("\n", max(lo, best), k)
        if k < 1:
            break
        if not buf[k - 1].isspace() and not buf[k + 1].isspace() and not _in_special(buf, k + 1, specials):
            return k + 1
    return best


def _in_special(buf: str, i: int, specials: Sequence[str]) -> bool:
    """Does an occurrence of a special token (or a prefix of one at the end) contain buf[i-1:i+1]?"""
    for s in specials:
        for j in range(max(0, i - len(s) + 1), i):
            if buf.startswith(s, j) or (len(buf) - j < len(s) and s.startswith(buf[j:])):
                return True
    return False


def iter_blocks(texts: Iterable[str], specials: Sequence[str] = (),
                block_chars: int = _BLOCK_CHARS) -> Iterator[str]:
    """Re-cut a stream of text chunks into blocks of about ``block_chars`` at safe points.

    Concatenating the blocks gives back the text, and pre-tokenizing block by block gives the
    same pre-tokens as pre-tokenizing the whole text at once (for the built-in patterns; for
    other patterns it is exact as long as they never match across ``x| y`` or ``x\\n|y``).
    Text with no safe point for 16 blocks and 4M characters (no space or line break in
    megabytes) is cut anyway, so memory stays bounded; pre-tokens at such a cut may differ.
    """
    if isinstance(texts, str):
        texts = [texts]
    buf: list[str] = []
    size = 0
    for chunk in texts:
        if not isinstance(chunk, str):
            raise TinyLMError(f"expected text chunks (str), got {type(chunk).__name__}; decode "
                              f"files as UTF-8 before passing them to the tokenizer")
        buf.append(chunk)
        size += len(chunk)
        if size < block_chars:
            continue
        text = "".join(buf)
        start = 0
        while len(text) - start >= block_chars:
            cut = _safe_cut(text, start, start + block_chars, specials)
            if cut < 0:  # none in this block: take the first one after it
                cut = _safe_cut(text, start, len(text), specials)
                if cut < 0:
                    if len(text) - start < max(16 * block_chars, _FORCE_CUT_CHARS):
                        break  # wait for more text
                    cut = start + block_chars
            yield text[start:cut]
            start = cut
        buf, size = [text[start:]], len(text) - start
    text = "".join(buf)
    if text:
        yield text


class _PreTokenizer:
    """Counts pre-tokens in a block of text (picklable: it is sent to worker processes)."""

    def __init__(self, pattern: str, specials: Sequence[str]):
        self.pattern = pattern
        self.specials = list(specials)
        self._init()

    def _init(self) -> None:
        self._findall = regex.compile(self.pattern).findall
        self._split_specials = _special_splitter(self.specials)
        self._piecewise = self.pattern in PATTERNS.values()

    def __getstate__(self) -> dict:
        return {"pattern": self.pattern, "specials": self.specials}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init()

    def count(self, block: str) -> dict[str, int]:
        """``count("the cat the") -> {"the": 1, " cat": 1, " the": 1}``"""
        words: dict[str, int] = defaultdict(int)
        parts = self._split_specials.split(block) if self._split_specials else [block]
        findall = self._findall
        for part in parts:
            if not part:
                continue
            if not self._piecewise:
                for w in findall(part):
                    words[w] += 1
                continue
            pieces, mark = _split_at_spaces(part)
            counts = Counter(pieces)
            # the first piece has no space of its own; the last may end with whitespace, so
            # it is not safe to join: both go on their own
            ends = [pieces[0]] + ([" " + pieces[-1]] if len(pieces) > 1 else [])
            counts[pieces[0]] -= 1
            if len(pieces) > 1:
                counts[pieces[-1]] -= 1
            # every other piece ends with a non-space, so " " + piece for many pieces joined
            # together pre-tokenizes like each one alone: one regex call per distinct count
            by_count: dict[int, list[str]] = defaultdict(list)
            for piece, n in counts.items():
                if n:
                    by_count[n].append(piece)
            for n, group in by_count.items():
                text = " " + " ".join(group)
                for w, c in Counter(findall(text.replace(mark, " ") if mark else text)).items():
                    words[w] += c * n
            for text in ends:
                for w in findall(text.replace(mark, " ") if mark else text):
                    words[w] += 1
        words.pop("", None)
        return words


def _split_at_spaces(text: str) -> tuple[list[str], str]:
    """Cut ``text`` before every space that follows a non-space (see ``_CUT_BEFORE``).

    ``str.split(" ")`` is 4x faster than a regex split, so the few spaces that follow whitespace
    ("a  b", "\\n  b") are first replaced by a private-use character absent from the text,
    which the caller turns back into a space: ``_split_at_spaces("a  b c") -> (["a", "\\ue000b", "c"], "\\ue000")``.
    """
    spots = [j for m in _SPACES_AFTER_SPACE.finditer(text) for j in range(m.start(1), m.end(1))]
    if not spots:
        return text.split(" "), ""
    mark = next((c for c in _SENTINELS if c not in text), "")
    if not mark:
        return _CUT_BEFORE.split(text), ""
    parts, prev = [], 0
    for j in spots:
        parts.append(text[prev:j])
        prev = j + 1
    parts.append(text[prev:])
    return mark.join(parts).split(" "), mark


def count_pretokens(texts: Iterable[str], pattern: str = "gpt2", special_tokens: Sequence[str] = (),
                    workers: int | None = None, progress: bool = False,
                    block_chars: int = _BLOCK_CHARS) -> dict[str, int]:
    """Pre-token -> count over a stream of text, in bounded memory, on ``workers`` processes.

    ``count_pretokens(["the cat<|endoftext|>the"], special_tokens=["<|endoftext|>"])
    -> {"the": 2, " cat": 1}`` (special tokens are cut out first).
    """
    pre = _PreTokenizer(resolve_pattern(pattern), check_special_tokens(special_tokens))
    blocks = iter_blocks(texts, pre.specials, block_chars)
    workers = _cores() if workers is None else workers
    if workers < 1:
        raise TinyLMError(f"workers must be >= 1 (got {workers})")
    total: Counter[str] = Counter()
    bar = _progress_bar(progress, desc="pre-tokenizing", unit="char", unit_scale=True)
    first = next(blocks, None)
    second = next(blocks, None) if first is not None else None
    if workers == 1 or second is None:  # small input: a process pool would cost more than it saves
        for block in (b for b in (first, second) if b is not None):
            total.update(pre.count(block))
            bar.update(len(block))
        for block in blocks:
            total.update(pre.count(block))
            bar.update(len(block))
    else:
        for counts, n in _map_bounded(pre.count, itertools.chain([first, second], blocks), workers):
            total.update(counts)
            bar.update(n)
    bar.close()
    return dict(total)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def _map_bounded(fn, items: Iterable[str], workers: int) -> Iterator[tuple[Any, int]]:
    """``fn`` over ``items`` in a process pool, at most 2 tasks per worker in flight (bounded
    memory for any corpus size). Results come back in completion order."""
    import concurrent.futures as cf
    import multiprocessing as mp
    # fork starts workers in milliseconds; elsewhere use the platform default
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        pending: set = set()
        sizes: dict = {}
        for item in items:
            fut = ex.submit(fn, item)
            sizes[fut] = len(item)
            pending.add(fut)
            if len(pending) >= 2 * workers:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    yield f.result(), sizes.pop(f)
        for f in cf.as_completed(pending):
            yield f.result(), sizes.pop(f)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, **kw):
    if not enabled:
        return _NoBar()  # importing tqdm costs ~0.1 s; skip it when nothing is shown
    from tqdm.auto import tqdm
    return tqdm(**kw)


# ---------------------------------------------------------------------------- trainer

def _inverted(b: bytes) -> str:
    """A string whose ascending order is the *descending* order of byte strings.

    Byte c becomes chr(255 - c) and a terminator chr(256) (above every such char) makes the keys
    prefix-free, so ``_inverted(x) + _inverted(y)`` orders pairs like ``(x, y)``, reversed:
    ``_inverted(b"ab") < _inverted(b"a") < _inverted(b"A")``.
    """
    return "".join(chr(255 - c) for c in b) + "\u0100"


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
    heap = [(-c, inv[ord(p[0])] + inv[ord(p[1])], p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = _progress_bar(progress and n_tokens > 0, total=n_tokens, desc="merging", unit="merge")
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
                    p = nw[j:j + 2]
                    counts[p] += f
                    if new in p:
                        grown.add(p)
                        where[p].add(wi)
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


def merge_naive(word_counts: Mapping[bytes, int], n_tokens: int,
                vocab: list[bytes] | None = None) -> list[tuple[int, int]]:
    """The textbook algorithm: recount every pair of every word before each merge.

    O(merges x corpus) -- kept as the readable specification that :func:`merge_incremental`
    must agree with (tested), and as the benchmark's baseline.
    """
    vocab = [bytes([i]) for i in range(256)] if vocab is None else list(vocab)
    token_id = {b: i for i, b in enumerate(vocab)}
    words = [(list(w), n) for w, n in word_counts.items()]
    merges: list[tuple[int, int]] = []
    while len(merges) < n_tokens:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for w, n in words:
            for pair in zip(w, w[1:]):
                counts[pair] += n
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
        for k, (w, n) in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = (out, n)
    return merges


# ---------------------------------------------------------------------------- the tokenizer

@register
class BPETokenizer(Tokenizer):
    """Byte-level BPE with tiktoken-compatible ranks.

    ``merges[i] = (a, b)`` makes token ``256 + i`` from tokens a and b. ``byte_ids[v]`` is the id
    of the single byte v (the identity for trained tokenizers; GPT-2 orders its bytes
    differently). Special tokens have ids >= 256 + len(merges).
    """

    kind = "bpe"

    def __init__(self, merges: Sequence[tuple[int, int]], special_tokens: Sequence[str] | Mapping[str, int] = (),
                 pattern: str = "gpt2", byte_ids: Sequence[int] | None = None, name: str = ""):
        self.pattern: str = resolve_pattern(pattern)
        self.name = name  # e.g. "gpt2" when loaded from tiktoken; "" when trained
        self.byte_ids: list[int] = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if sorted(self.byte_ids) != list(range(256)):
            raise TinyLMError("byte_ids must be a permutation of 0..255 (each byte value gets one of "
                              "the first 256 ids)")
        vocab: list[bytes] = [b""] * 256  # id -> bytes
        for byte, i in enumerate(self.byte_ids):
            vocab[i] = bytes([byte])
        self.merges: list[tuple[int, int]] = []
        for k, (a, b) in enumerate(merges):
            a, b = int(a), int(b)
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise TinyLMError(f"merge {k} ({a} {b}) uses an id that does not exist yet; the "
                                  f"merges are corrupted -- re-create the tokenizer")
            vocab.append(vocab[a] + vocab[b])
            self.merges.append((a, b))
        self.vocab: list[bytes] = vocab
        self.ranks: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}  # bytes -> id
        if len(self.ranks) != len(vocab):
            dup = next(t for t in vocab if vocab.count(t) > 1)
            raise TinyLMError(f"token {dup!r} is made by two merges; the merges are corrupted -- "
                              f"re-create the tokenizer")
        n = len(vocab)
        if isinstance(special_tokens, Mapping):
            check_special_tokens(special_tokens)
            self.special_tokens = {s: int(i) for s, i in special_tokens.items()}
            ids = list(self.special_tokens.values())
            if len(set(ids)) != len(ids) or any(i < n for i in ids):
                raise TinyLMError(f"special token ids {sorted(ids)} must be distinct and >= {n} "
                                  f"(after the 256 bytes and {len(self.merges)} merges)")
        else:
            self.special_tokens = {s: n + k for k, s in enumerate(check_special_tokens(special_tokens))}
        self._id_to_bytes: list[bytes | None] = vocab + [None] * (
            max(self.special_tokens.values(), default=n - 1) + 1 - n)
        for s, i in self.special_tokens.items():
            self._id_to_bytes[i] = s.encode("utf-8")
        self._cache: dict[bytes, list[int]] = {}
        self._tiktoken = None  # built on first use by _fast()

    # -- sizes and state --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    @property
    def n_merges(self) -> int:
        return len(self.merges)

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: drop caches
        return {"merges": self.merges, "special_tokens": self.special_tokens,
                "pattern": self.pattern, "byte_ids": self.byte_ids, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] | Mapping[str, int] = (ENDOFTEXT,),
              pattern: str = "gpt2", workers: int | None = None, progress: bool = False,
              *, algorithm: str = "incremental") -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from a stream of text chunks.

        ``texts`` is read once, as one continuous text (the chunking does not matter); end
        documents with a newline or a special token. Special tokens (default: ``<|endoftext|>``,
        GPT-2's document separator) are cut out of the text first, so no merge crosses them, and
        get the last ids in the order given (or the ids of a mapping). ``workers`` processes
        pre-tokenize (default: all cores; small inputs use one). ``algorithm="naive"`` recounts
        all pairs per merge (for tests and benchmarks only).

        ``BPETokenizer.train(["ab ab abc"], 259, special_tokens=()).merges
        -> [(97, 98), (32, 256), (257, 99)]``  (see the module docstring)
        """
        specials = check_special_tokens(special_tokens)
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise TinyLMError(f"vocab_size {vocab_size} is too small: byte-level BPE needs the 256 "
                              f"byte tokens plus {len(specials)} special token(s) = "
                              f"{256 + len(specials)} ids; use --vocab-size {256 + len(specials)} or more")
        if isinstance(special_tokens, Mapping):
            want = set(range(vocab_size - len(specials), vocab_size))
            if set(special_tokens.values()) != want:
                raise TinyLMError(f"special token ids {sorted(special_tokens.values())} must be the "
                                  f"last {len(specials)} ids of the vocabulary ({min(want, default=0)}.."
                                  f"{vocab_size - 1}); pass a list to number them automatically")
        pattern = resolve_pattern(pattern)
        words = count_pretokens(texts, pattern, specials, workers, progress)
        if not words:
            raise TinyLMError("cannot train a tokenizer on an empty corpus; check the --corpus "
                              "files (are they empty, or only special tokens?)")
        word_bytes: dict[bytes, int] = {}
        for w, n in words.items():
            word_bytes[w.encode("utf-8", "surrogatepass")] = n
        if algorithm == "incremental":
            merges = merge_incremental(word_bytes, n_merges, progress=progress)
        elif algorithm == "naive":
            merges = merge_naive(word_bytes, n_merges)
        else:
            raise TinyLMError(f"unknown algorithm {algorithm!r}; use 'incremental' or 'naive'")
        if len(merges) < n_merges:
            warnings.warn(f"the corpus only has {len(merges)} distinct merges, fewer than the "
                          f"{n_merges} vocab_size={vocab_size} asks for; the vocabulary has "
                          f"{256 + len(merges) + len(specials)} ids. Train on more text or lower "
                          f"the vocab size.", stacklevel=2)
            if isinstance(special_tokens, Mapping):  # keep the order, close the gap
                special_tokens = sorted(special_tokens, key=special_tokens.get)
        return cls(merges, special_tokens, pattern)

    def truncated(self, vocab_size: int) -> "BPETokenizer":
        """The same tokenizer with only its first merges, so that it has ``vocab_size`` ids.

        BPE merges form a chain, so this *is* the tokenizer training would have given at that
        size (the trainer never looks at the target size until it stops).
        """
        n = vocab_size - 256 - len(self.special_tokens)
        if not 0 <= n <= len(self.merges):
            raise TinyLMError(f"cannot truncate a {self.vocab_size}-id tokenizer to {vocab_size} ids "
                              f"(possible: {256 + len(self.special_tokens)}..{self.vocab_size})")
        specials = sorted(self.special_tokens, key=self.special_tokens.get)
        return BPETokenizer(self.merges[:n], specials, self.pattern, self.byte_ids, self.name)

    # -- encoding ---------------------------------------------------------------------------
    def _allowed(self, allowed_special: str | Iterable[str]) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special == "none":
            return set()
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise TinyLMError(f"allowed_special names {sorted(unknown)}, which are not special tokens "
                              f"of this tokenizer (it has {sorted(self.special_tokens)})")
        return allowed

    def _check_disallowed(self, text: str, allowed: set[str], disallowed_special) -> None:
        if not disallowed_special:
            return
        bad = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special) - allowed
        splitter = _special_splitter(bad)
        m = splitter.search(text) if splitter else None
        if m:
            raise TinyLMError(f"the text contains the special token {m.group()!r} at character "
                              f"{m.start()}, which is disallowed here; pass allowed_special="
                              f"{{{m.group()!r}}} to encode it as a special token, or "
                              f"disallowed_special=() to encode it as plain text")

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none",
               disallowed_special: str | Iterable[str] = ()) -> list[int]:
        """Text -> ids (the fast path: tiktoken's Rust BPE running our ranks).

        Special tokens work as in tiktoken: those in ``allowed_special`` ("all", "none" or a set)
        become their ids; finding one in ``disallowed_special`` ("all" = every special token not
        allowed) is an error. Any other special-token text is encoded as ordinary text (the
        default, so arbitrary documents never fail).
        """
        allowed = self._allowed(allowed_special)
        self._check_disallowed(text, allowed, disallowed_special)
        fast = self._fast()
        if fast is None:
            return self.encode_reference(text, allowed)
        return fast.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, with special-token text encoded as ordinary text."""
        fast = self._fast()
        return fast.encode_ordinary(text) if fast is not None else self.encode_reference(text)

    def encode_batch(self, texts: Sequence[str], allowed_special: str | Iterable[str] = "none",
                     num_threads: int = 8) -> list[list[int]]:
        """Many texts at once on ``num_threads`` threads (tiktoken releases the GIL)."""
        allowed = self._allowed(allowed_special)
        fast = self._fast()
        if fast is None:
            return [self.encode_reference(t, allowed) for t in texts]
        return fast.encode_batch(list(texts), num_threads=num_threads, allowed_special=allowed,
                                 disallowed_special=())

    def encode_iter(self, texts: Iterable[str], allowed_special: str | Iterable[str] = "none") -> Iterator[int]:
        """Stream ids for a stream of text chunks (a huge file) in bounded memory.

        The chunks are one continuous text: ``list(tok.encode_iter(["hel", "lo world"])) ==
        tok.encode("hello world")``. Text is re-cut only where the split pattern cannot join it.
        """
        allowed = self._allowed(allowed_special)
        for block in iter_blocks(texts, sorted(allowed), block_chars=1 << 20):
            yield from self.encode(block, allowed)

    def encode_file(self, path: str | os.PathLike, allowed_special: str | Iterable[str] = "none") -> Iterator[int]:
        """Stream the ids of a UTF-8 text file (see :meth:`encode_iter`)."""
        yield from self.encode_iter(iter_chunks(Path(path)), allowed_special)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Arbitrary bytes (not necessarily UTF-8) -> ids; ``decode_bytes`` gives them back.

        Invalid UTF-8 bytes are pre-tokenized as surrogate escapes (like punctuation), so they
        never join valid characters' pre-tokens but do merge among themselves.
        """
        text = data.decode("utf-8", "surrogateescape")
        findall = self._findall()
        ids: list[int] = []
        for piece in findall(text):
            ids.extend(self._bpe(piece.encode("utf-8", "surrogateescape")))
        return ids

    def encode_reference(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """The readable pure-Python encoder; the specification the fast path is tested against.

        Split out allowed special tokens, cut the rest with the pattern, then BPE each
        pre-token's UTF-8 bytes (:meth:`_bpe`, cached per distinct pre-token).
        """
        allowed = self._allowed(allowed_special) if isinstance(allowed_special, str) else set(allowed_special)
        text = _fix_surrogates(text)
        splitter = _special_splitter(allowed)
        ids: list[int] = []
        start = 0
        for m in (splitter.finditer(text) if splitter else ()):
            ids += self._encode_plain(text[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += self._encode_plain(text[start:])
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._findall()(text):
            ids.extend(self._bpe(piece.encode("utf-8")))
        return ids

    def _findall(self):
        return regex.compile(self.pattern).findall  # `regex` caches compiled patterns

    def _bpe(self, piece: bytes) -> list[int]:
        """BPE on one pre-token: join the adjacent pair whose bytes have the lowest id, repeat.

        With GPT-2's ranks: ``b" hello"`` -> [b" ", b"h", b"e", b"l", b"l", b"o"] -> ... ->
        [b" hello"] -> [23748].
        """
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        ranks = self.ranks
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best_i, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):  # '<': leftmost wins ties
                    best_i, best_rank = i, r
            if best_rank is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        ids = [ranks[p] for p in parts]
        if len(self._cache) > 200_000:  # bound memory on endless streams
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _fast(self):
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

    def to_tiktoken(self):
        """A ``tiktoken.Encoding`` with our ranks, pattern and special tokens."""
        fast = self._fast()
        if fast is None:
            raise TinyLMError("tiktoken cannot compile this tokenizer's split pattern; use a "
                              "pattern without look-behind (e.g. 'gpt2')")
        return fast

    # -- decoding ---------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the exact bytes (special tokens as their UTF-8 text)."""
        table = self._id_to_bytes
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < len(table)
                                              and table[i] is not None))
            raise TinyLMError(f"token id {bad!r} is not in this tokenizer (ids are 0.."
                              f"{self.vocab_size - 1}); were these ids made by another tokenizer?") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files ------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The file body: readable header lines, then one merge per line.

        ::

            pattern "'(?:[sdmt]|ll|ve|re)| ?\\\\p{L}++| ..."
            special_tokens {"<|endoftext|>": 4095}
            byte_ids identity
            name ""
            merges 3839
            32 116
            104 101
            ...

        Merge line k is ``a b``: token ``256 + k`` is token a followed by token b. ``byte_ids``
        is a JSON list (id of each byte value) when the bytes are not ids 0..255 in order (GPT-2).
        """
        byte_ids = "identity" if self.byte_ids == list(range(256)) else json.dumps(self.byte_ids)
        head = [f"pattern {json.dumps(self.pattern)}",
                f"special_tokens {json.dumps(self.special_tokens, ensure_ascii=False)}",
                f"byte_ids {byte_ids}",
                f"name {json.dumps(self.name)}",
                f"merges {len(self.merges)}"]
        return "\n".join(head + [f"{a} {b}" for a, b in self.merges]) + "\n"

    @classmethod
    def from_text(cls, body: str) -> "BPETokenizer":
        lines = body.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            head: dict[str, str] = {}
            i = 0
            while i < len(lines):
                key, _, value = lines[i].partition(" ")
                head[key] = value
                i += 1
                if key == "merges":
                    break
            n = int(head["merges"])
            merges = [_parse_merge(line, k + 2) for k, line in enumerate(lines[i:], start=i)]
            if len(merges) != n:
                raise ValueError(f"the header promises {n} merges but {len(merges)} merge lines follow")
            byte_ids = None if head["byte_ids"] == "identity" else json.loads(head["byte_ids"])
            return cls(merges, json.loads(head["special_tokens"]), json.loads(head["pattern"]),
                       byte_ids, json.loads(head.get("name", '""')))
        except (KeyError, ValueError, TypeError) as e:
            raise TinyLMError(f"the BPE tokenizer file is corrupted ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike, vocab_listing: bool = True) -> None:
        """Write the tokenizer file, and beside it ``<stem>.vocab.txt`` (one line per token)."""
        super().save(path)
        if vocab_listing:
            from ..fileio import write_text_atomic
            write_text_atomic(Path(path).with_suffix(".vocab.txt"), self.vocab_listing())

    def vocab_listing(self) -> str:
        """Human-readable vocabulary: id, token, and what it was merged from.

        ``256  " t"  = 32 " " + 116 "t"``
        """
        out = [f"# {self!r}: id, token (JSON-style escapes; \\xNN = a byte that is not UTF-8 "
               f"on its own), merged from"]
        merged_from = {256 + k: m for k, m in enumerate(self.merges)}
        for i, t in enumerate(self._id_to_bytes):
            if t is None:
                continue
            line = f"{i}\t{_show(t)}"
            if i in merged_from:
                a, b = merged_from[i]
                line += f"\t= {a} {_show(self.vocab[a])} + {b} {_show(self.vocab[b])}"
            elif i >= len(self.vocab):
                line += "\tspecial"
            out.append(line)
        return "\n".join(out) + "\n"

    # -- interop (details in io.py) ----------------------------------------------------------
    @classmethod
    def from_tiktoken(cls, encoding: Any = "gpt2") -> "BPETokenizer":
        """GPT-2's tokenizer (or any tiktoken encoding: a name or a ``tiktoken.Encoding``) as a
        BPETokenizer. Offline with ``TIKTOKEN_CACHE_DIR`` pointing at tiktoken's cached files."""
        from .io import from_tiktoken
        return from_tiktoken(encoding)

    @classmethod
    def from_ranks(cls, ranks: Mapping[bytes, int], special_tokens: Mapping[str, int] | Sequence[str] = (),
                   pattern: str = "gpt2", name: str = "") -> "BPETokenizer":
        """From tiktoken-style ranks (token bytes -> id); the merges are recovered."""
        from .io import from_ranks
        return from_ranks(ranks, special_tokens, pattern, name)


def _parse_merge(line: str, line_no: int) -> tuple[int, int]:
    """``_parse_merge("32 116", 7) -> (32, 116)``; anything but two ids names the file line."""
    parts = line.split(" ")
    if len(parts) != 2 or not all(p.isdecimal() for p in parts):
        raise ValueError(f"line {line_no} is {line[:60]!r}, not a merge of two ids")
    return int(parts[0]), int(parts[1])


def _show(t: bytes) -> str:
    """``_show(b" caf\\xc3\\xa9") -> '" café"'``; ``_show(b"\\xe2") -> '"\\\\xe2"'``"""
    s = t.decode("utf-8", "backslashreplace")
    return json.dumps(s, ensure_ascii=False).replace("\\\\x", "\\x")


# ---------------------------------------------------------------------------- for the CLI

def parse_ids(text: str) -> list[int]:
    """``tinylm tokenizer decode`` input: ``"15496, 995"`` or ``"[15496 995]"`` -> [15496, 995]."""
    try:
        return [int(x) for x in re.split(r"[\s,]+", text.strip().strip("[]").strip()) if x]
    except ValueError:
        raise TinyLMError(f"cannot read token ids from {text[:60]!r}; give integers separated "
                          f"by spaces or commas") from None


def token_stats(texts: Iterable[str], vocab_sizes: Sequence[int], width: int, *,
                pattern: str = "gpt2", gpt2: bool = True, eval_texts: Iterable[str] | None = None,
                workers: int | None = None, progress: bool = False) -> list[dict]:
    """``tinylm tokenizer stats``: what each vocabulary size costs and buys on a corpus.

    Trains one BPE tokenizer (no special tokens) on ``texts`` up to ``max(vocab_sizes)`` and
    truncates it to each size (merges form a chain, so that equals training to each size), plus
    GPT-2's own tokenizer when ``gpt2`` (skipped with a note if tiktoken's files are
    unavailable). Each row: tokens per character and bytes per token of ``eval_texts``
    (default: the training text itself) and the embedding parameters ``vocab_size x width``
    (one tied embedding; double it for an untied output layer). Holds the text in memory: pass
    a sample. On English: ~1.0 tokens/char at 256, ~0.35 at 4096, ~0.25 for GPT-2.
    """
    train_texts = [texts] if isinstance(texts, str) else list(texts)
    evals = train_texts if eval_texts is None else ([eval_texts] if isinstance(eval_texts, str) else list(eval_texts))
    n_chars = sum(len(t) for t in evals)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in evals)
    if not n_chars:
        raise TinyLMError("token_stats needs some text; the corpus sample is empty")
    rows: list[dict] = []

    def row(label: str, tok: BPETokenizer, note: str = "") -> dict:
        n_tok = sum(len(ids) for ids in tok.encode_batch(evals))
        return {"tokenizer": label, "vocab_size": tok.vocab_size, "tokens": n_tok, "chars": n_chars,
                "bytes": n_bytes, "tokens_per_char": n_tok / n_chars, "bytes_per_token": n_bytes / n_tok,
                "chars_per_token": n_chars / n_tok, "embedding_params": tok.vocab_size * width,
                "note": note}

    sizes = sorted(set(vocab_sizes))
    if sizes:
        if sizes[0] < 256:
            raise TinyLMError(f"vocab size {sizes[0]} is below 256 (the byte tokens); use 256 or more")
        with warnings.catch_warnings():  # too few merges for the largest size: noted per row
            warnings.simplefilter("ignore")
            big = BPETokenizer.train(train_texts, sizes[-1], special_tokens=(), pattern=pattern,
                                     workers=workers, progress=progress)
        for v in sizes:
            if v > big.vocab_size:  # the corpus ran out of pairs: report the largest there is
                rows.append(row(f"bpe-{v}", big, f"capped: the corpus has only {big.n_merges} merges"))
            else:
                rows.append(row(f"bpe-{v}", big.truncated(v), "trained on this corpus"))
    if gpt2:
        try:
            rows.append(row("gpt2", BPETokenizer.from_tiktoken("gpt2"), "GPT-2's (tiktoken)"))
        except TinyLMError as e:  # offline without TIKTOKEN_CACHE_DIR: report, don't fail
            rows.append({"tokenizer": "gpt2", "vocab_size": 50257, "tokens": None, "chars": n_chars,
                         "bytes": n_bytes, "tokens_per_char": None, "bytes_per_token": None,
                         "chars_per_token": None, "embedding_params": 50257 * width,
                         "note": f"unavailable: {type(e).__name__} (set TIKTOKEN_CACHE_DIR)"})
    return rows


def format_token_stats(rows: Sequence[dict], width: int | None = None) -> str:
    """The :func:`token_stats` rows as a Markdown table (what ``tinylm tokenizer stats`` prints)."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)
    head = ["tokenizer", "vocab", "tokens/char", "bytes/token", "tokens", "embedding params"
            + (f" (d={width})" if width else ""), "note"]
    body = [[r["tokenizer"], f"{r['vocab_size']:,}", num(r["tokens_per_char"], ".3f"),
             num(r["bytes_per_token"], ".2f"), num(r["tokens"], ","), f"{r['embedding_params']:,}",
             r.get("note", "")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in body])
