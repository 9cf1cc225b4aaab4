"""Pre-tokenization: the split patterns, where text may be cut safely, and parallel pre-token counting.

BPE never merges across a pre-token, so the split regex decides what a token can be. Long text
is handled in pieces (a corpus file is read in chunks, the trainer counts blocks on several
processes, a corpus is encoded chunk by chunk), and a piece may end only where the regex would end a
pre-token whatever follows. This module is the one place that knows where that is
(:func:`last_cut`); :func:`iter_blocks` re-cuts any stream of text there.

For the built-in patterns a cut is safe (no pre-token of theirs spans it, and they look ahead
only across whitespace):

* right after a ``"\\n"`` with non-whitespace on both sides: ``"Citizen:\\n|Before"``;
* right before a ``"\\r\\n"`` that follows a letter or digit and precedes non-whitespace:
  ``"proceed|\\r\\nAll:"`` (GPT-2 splits ``"\\r\\n"`` in two and GPT-4 keeps it whole, so only a
  cut in front of it is safe, and only after a letter or digit: GPT-4 glues punctuation to the
  line break that follows it);
* with ``at_spaces``, right before a space that follows a non-space: ``"one| two"`` (no
  pre-token contains "non-space, space"). Not before a space that follows whitespace: GPT-2
  splits ``"a \\nb"`` into ``"a", " ", "\\n", "b"`` but ``"a \\n"`` alone into ``"a", " \\n"``.

``str.isspace`` counts a few characters (U+001C..U+001F) that Unicode's White_Space (the
``regex`` module's ``\\s``) does not, so the rules err on the side of not cutting.
"""
from __future__ import annotations

import itertools
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import regex

from ..errors import TinyLMError
from .base import check_special_tokens, progress_bar, special_splitter

# GPT-2's split pattern as tiktoken spells it (r50k): the original
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ with possessive
# quantifiers; it splits every text identically and is faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (cl100k_base): case-insensitive contractions, digits in groups of at most 3.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
#: named split patterns; ``pattern=`` also takes any ``regex``-module pattern
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "gpt4": CL100K_PATTERN}

# The trainer counts the space-separated pieces of a block first and runs the regex once per
# distinct piece (exact for the built-in patterns, see above, and 5x fewer regex calls on English).
_CUT_BEFORE = re.compile(r"(?<=\S) ")  # stdlib \s is a superset of Unicode White_Space: safe
_SPACES_AFTER_SPACE = regex.compile(r"\s( +)")  # spaces that must not be cut before
_SENTINELS = "\ue000\ue001\U000f0000\U000f0001"  # private-use stand-ins for those spaces
_BLOCK_CHARS = 1 << 19  # the trainer pre-tokenizes ~512K-character blocks (one task per worker)
_FORCE_CUT_CHARS = 1 << 22
_UNDECIDED = 3  # a cut this close to the end of the text read so far may need the next characters


def resolve_pattern(pattern: str) -> str:
    """``"gpt2"`` / ``"cl100k"`` / ``"gpt4"`` -> the regex; any other string must compile."""
    pat = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pat)
    except regex.error as e:
        raise TinyLMError(f"invalid split pattern {pattern!r}: {e}; use one of {sorted(PATTERNS)} "
                          f"or a pattern the `regex` package compiles") from None
    return pat


# ---------------------------------------------------------------------------- safe cuts

def last_cut(text: str, lo: int, hi: int, *, at_spaces: bool = True, specials: Sequence[str] = ()) -> int:
    """The largest safe cut ``c`` with ``lo < c <= hi`` (``text[c]`` starts the next piece), or -1.

    ``last_cut("one two thr", 0, 11) -> 7`` (before " thr"); ``at_spaces=False`` -> -1 (no line
    break). Never inside one of ``specials``, nor inside a possibly incomplete one at the end.
    """
    hi = min(hi, len(text) - 1)  # the character after a cut must have been read
    best = -1
    i = hi + 1
    while at_spaces and (i := text.rfind(" ", lo + 1, i)) > 0:  # "x| y"
        if not text[i - 1].isspace() and not _in_special(text, i, specials):
            best = i
            break
    j = hi + 2  # the "\n" of a "\r\n" at hi gives the cut hi
    while (j := text.rfind("\n", max(lo, best), j)) > 0:  # "x\n|y", "x|\r\ny"; later "\n", later cut
        cut = _newline_cut(text, j)
        if max(lo, best) < cut <= hi and not _in_special(text, cut, specials):
            return cut
    return best


def _newline_cut(text: str, j: int) -> int:
    """Where a piece may end near the ``"\\n"`` at ``text[j]``, or -1 (also while ``text[j + 1]`` is unread)."""
    if j + 1 >= len(text) or text[j + 1].isspace():
        return -1
    before = text[j - 1] if j >= 1 else " "
    if not before.isspace():
        return j + 1
    if before == "\r" and j >= 2 and unicodedata.category(text[j - 2])[0] in "LN":
        return j - 1
    return -1


def _in_special(text: str, i: int, specials: Sequence[str]) -> bool:
    """Does an occurrence of a special token (or a prefix of one at the end) contain text[i-1:i+1]?"""
    for s in specials:
        for j in range(max(0, i - len(s) + 1), i):
            if text.startswith(s, j) or (len(text) - j < len(s) and s.startswith(text[j:])):
                return True
    return False


def iter_blocks(texts: Iterable[str], specials: Sequence[str] = (), block_chars: int = _BLOCK_CHARS, *,
                at_spaces: bool = True, force: bool = True) -> Iterator[str]:
    """Re-cut a stream of text chunks into blocks of about ``block_chars`` at safe cuts.

    Concatenating the blocks gives back the text, and pre-tokenizing block by block gives the
    same pre-tokens as pre-tokenizing the whole text at once (for the built-in patterns; for
    other patterns it is exact as long as they never match across the cuts of :func:`last_cut`).
    A block is the text up to the last cut within ``block_chars``, else up to the last cut read
    so far. With ``force``, text with no cut for 16 blocks and 4M characters (no space or line
    break in megabytes) is cut anyway, so memory stays bounded; pre-tokens at such a cut may
    differ. Without it such text comes as one block.
    """
    if isinstance(texts, str):
        texts = [texts]
    force_at = max(16 * block_chars, _FORCE_CUT_CHARS) if force else None
    undecided = _UNDECIDED + max(map(len, specials), default=0)
    buf = ""
    searched = 0  # buf[block_chars:searched] holds no cut: do not scan it again
    for chunk in texts:
        if not isinstance(chunk, str):
            raise TinyLMError(f"expected text chunks (str), got {type(chunk).__name__}; decode "
                              f"files as UTF-8 before passing them to the tokenizer")
        buf += chunk
        while len(buf) > block_chars:
            cut = last_cut(buf, 0, block_chars, at_spaces=at_spaces, specials=specials)
            if cut < 0:  # none in this block: take the last one read so far
                cut = last_cut(buf, max(block_chars, searched), len(buf), at_spaces=at_spaces, specials=specials)
            if cut < 0:
                if force_at is None or len(buf) < force_at:
                    searched = len(buf) - undecided
                    break  # wait for more text
                cut = block_chars
            yield buf[:cut]
            buf = buf[cut:]
            searched = 0
    if buf:
        yield buf


# ---------------------------------------------------------------------------- counting

class _PreTokenizer:
    """Counts pre-tokens in a block of text (picklable: it is sent to worker processes)."""

    def __init__(self, pattern: str, specials: Sequence[str]):
        self.pattern = pattern
        self.specials = list(specials)
        self._init()

    def _init(self) -> None:
        self._findall = regex.compile(self.pattern).findall
        self._split_specials = special_splitter(self.specials)
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
        for part in parts:
            if not part:
                continue
            if self._piecewise:
                self._count_piecewise(part, words)
            else:
                for w in self._findall(part):
                    words[w] += 1
        words.pop("", None)
        return words

    def _count_piecewise(self, part: str, words: dict[str, int]) -> None:
        """Add the pre-tokens of ``part`` to ``words``, one regex call per distinct piece count."""
        findall = self._findall
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
    first = next(blocks, None)
    second = next(blocks, None) if first is not None else None
    blocks = itertools.chain((b for b in (first, second) if b is not None), blocks)
    total: Counter[str] = Counter()
    bar = progress_bar(progress, desc="pre-tokenizing", unit="char", unit_scale=True)
    # small input: a process pool would cost more than it saves
    results = (((pre.count(b), len(b)) for b in blocks) if workers == 1 or second is None
               else _map_bounded(pre.count, blocks, workers))
    for counts, n in results:
        total.update(counts)
        bar.update(n)
    bar.close()
    return dict(total)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def _map_bounded(fn: Callable[[str], dict[str, int]], items: Iterable[str],
                 workers: int) -> Iterator[tuple[dict[str, int], int]]:
    """``(fn(item), len(item))`` over ``items`` in a process pool, at most 2 tasks per worker in
    flight (bounded memory for any corpus size). Results come back in completion order; the workers die
    with this process, however it ends."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from ..workers import watch_parent
    # fork starts workers in milliseconds; elsewhere use the platform default
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=watch_parent, initargs=(os.getpid(),)) as ex:
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
