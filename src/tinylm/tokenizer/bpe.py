"""The byte-level BPE tokenizer object: tiktoken-compatible ranks, encode, decode, and its file.

The vocabulary is the 256 byte values, then one token per merge (``id = 256 + merge index``),
then the special tokens. Text is cut into pre-tokens by a split regex (GPT-2's by default, see
:mod:`.pretokenize`) and BPE runs inside each pre-token, so no token crosses a pre-token or a
special token. Training (learning the merges) is in :mod:`.bpe_train`; other file formats and
Hugging Face export in :mod:`.io`.

How ids are computed is :mod:`.bpe_encode`'s (the merge loop, tiktoken's Rust BPE running our
ranks); :meth:`BPETokenizer.encode_reference` is the readable Python form the fast path is tested
against. The encode methods and their special-token rules
are the :class:`~.base.Tokenizer` interface's (tiktoken's).
:func:`train_bpe` is the functional form: a text file -> ``(vocab, merges)`` as bytes.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TinyLMError
from ..fileio import write_text_atomic
from .base import ENDOFTEXT, Specials, Tokenizer, check_special_tokens, register
from .bpe_encode import RankEncoder, bpe_merge, fix_surrogates
from .bpe_train import learn_merges
from .gpt2_files import bytes_to_unicode, read_gpt2_files, unicode_to_bytes
from .pretokenize import PATTERNS, count_pretokens, resolve_pattern


def recover_merges(ranks: Mapping[bytes, int]) -> tuple[list[int], list[tuple[int, int]]]:
    """Tiktoken ranks -> (byte_ids, merges) in our terms.

    Ranks store only the tokens; the pair each one was made from is found by running BPE on the
    token's bytes with only the lower-ranked tokens: it must stop at exactly two parts.
    ``recover_merges({b"a": 0, ..., b"ab": 256, b"abc": 257})`` gives merges
    ``[(id(a), id(b)), (256, id(c))]``.
    """
    n = len(ranks)
    by_rank: list[bytes | None] = [None] * n
    for t, r in ranks.items():
        if not (isinstance(r, int) and 0 <= r < n) or by_rank[r] is not None:
            raise TinyLMError(f"tiktoken ranks must be the distinct ids 0..{n - 1}; rank {r!r} of "
                              f"{t!r} is not (is this a tiktoken ranks file?)")
        by_rank[r] = t
    if sorted(len(t) for t in by_rank[:256]) != [1] * 256 or len(set(by_rank[:256])) != 256:
        raise TinyLMError("the first 256 ranks must be the 256 single bytes; these ranks are not a "
                          "byte-level BPE vocabulary")
    byte_ids = [0] * 256
    for r in range(256):
        byte_ids[by_rank[r][0]] = r
    merges: list[tuple[int, int]] = []
    for r in range(256, n):
        parts = bpe_merge(by_rank[r], ranks, below=r)
        if len(parts) != 2:
            raise TinyLMError(f"token {by_rank[r]!r} (rank {r}) cannot be made by merging two lower-ranked "
                              f"tokens; these ranks are not a BPE vocabulary")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return byte_ids, merges


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
        self.encoder = RankEncoder(self.ranks, self.pattern, self.special_tokens, self.vocab_size)

    # -- sizes and state --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    @property
    def n_merges(self) -> int:
        return len(self.merges)

    def __getstate__(self) -> dict:  # prepare's encoding processes get a copy: what __init__ takes, no caches
        return {"merges": self.merges, "special_tokens": self.special_tokens,
                "pattern": self.pattern, "byte_ids": self.byte_ids, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] | Mapping[str, int] = (ENDOFTEXT,),
              pattern: str = "gpt2", workers: int | None = None, progress: bool = False,
              *, algorithm: str = "incremental") -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from a stream of text chunks.

        ``texts`` is read once, as one continuous text (the chunking does not matter); end
        documents with a newline or a special token. Special tokens (default: ``<|endoftext|>``,
        GPT-2's document separator) are cut out of the text first, so no merge crosses them, and
        get the last ids in the order given (or the ids of a mapping). ``workers`` processes
        pre-tokenize (default: all cores; small inputs use one). ``algorithm="naive"`` recounts
        all pairs per merge (for tests and benchmarks only).

        ``BPETokenizer.train(["ab ab abc"], 259, special_tokens=()).merges
        -> [(97, 98), (32, 256), (257, 99)]``  (worked by hand in :mod:`.bpe_train`)
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
        merges = learn_merges(words, n_merges, algorithm=algorithm, progress=progress)
        if len(merges) < n_merges:
            warnings.warn(f"the corpus only has {len(merges)} distinct merges, fewer than the "
                          f"{n_merges} vocab_size={vocab_size} asks for; the vocabulary has "
                          f"{256 + len(merges) + len(specials)} ids. Train on more text or lower "
                          f"the vocab size.", stacklevel=2)
            if isinstance(special_tokens, Mapping):  # keep the order, close the gap
                special_tokens = sorted(special_tokens, key=special_tokens.get)
        return cls(merges, special_tokens, pattern)

    def truncated(self, vocab_size: int) -> BPETokenizer:
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
    def _encode(self, text: str, allowed: set[str]) -> list[int]:
        """The fast path: tiktoken's Rust BPE running our ranks (:meth:`encode_reference` when it cannot)."""
        fast = self.encoder.fast()
        if fast is None:
            return self.encode_reference(text, allowed)
        return fast.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_reference(self, text: str, allowed_special: Specials = frozenset()) -> list[int]:
        """The readable pure-Python encoder: the specification ``encode`` (tiktoken's Rust BPE
        running our ranks) is tested against, and its fallback for patterns tiktoken cannot compile.

        Split out the allowed special tokens, cut the rest with the pattern, then BPE each
        pre-token's UTF-8 bytes (:func:`.bpe_merge`, cached per distinct pre-token). Special-token
        text that is not allowed is encoded as ordinary text (no disallowed check: that is ``encode``'s).
        """
        allowed = self.allowed_specials(allowed_special)
        return self._encode_with_specials(fix_surrogates(text), allowed, self.encoder.encode_plain)

    def to_tiktoken(self) -> Any:
        """A ``tiktoken.Encoding`` with our ranks, pattern and special tokens."""
        fast = self.encoder.fast()
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

    def token_byte_lengths(self) -> list[int]:
        specials = set(self.special_tokens.values())  # ids without bytes (a gap before a special id) count 0 too
        return [0 if b is None or i in specials else len(b) for i, b in enumerate(self._id_to_bytes)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """A token as GPT-2's ``vocab.json`` and Hugging Face spell it -> its id, None if there is none.

        Bytes are shown as GPT-2's printable characters (:func:`.gpt2_files.bytes_to_unicode`; a space is
        "Ġ"), special tokens as their text: GPT-2's ``token_to_id("Ġworld") -> 995``.
        """
        if token in self.special_tokens:
            return self.special_tokens[token]
        data = unicode_to_bytes(token)
        return None if data is None else self.ranks.get(data)

    def id_to_token(self, id: int) -> str | None:
        """Inverse of :meth:`token_to_id`: GPT-2's ``id_to_token(995) -> "Ġworld"``."""
        if not 0 <= id < len(self._id_to_bytes) or self._id_to_bytes[id] is None:
            return None
        if id >= len(self.vocab):
            return self._id_to_bytes[id].decode("utf-8")
        table = bytes_to_unicode()
        return "".join(table[b] for b in self.vocab[id])

    def same_ids(self, other: Tokenizer) -> bool:
        """Same merges, byte order, special tokens and split pattern (the name does not count)."""
        return (isinstance(other, BPETokenizer) and (self.merges, self.byte_ids, self.special_tokens, self.pattern)
                == (other.merges, other.byte_ids, other.special_tokens, other.pattern))

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
    def from_text(cls, body: str) -> BPETokenizer:
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

    # -- tiktoken ranks ---------------------------------------------------------------------
    @classmethod
    def from_ranks(cls, ranks: Mapping[bytes, int], special_tokens: Mapping[str, int] | Sequence[str] = (),
                   pattern: str = "gpt2", name: str = "") -> BPETokenizer:
        """From tiktoken-style ranks (token bytes -> id, dense from 0); the merges are recovered."""
        byte_ids, merges = recover_merges(ranks)
        return cls(merges, special_tokens, pattern, byte_ids, name)

    @classmethod
    def from_files(cls, vocab: str | os.PathLike | Mapping[int, bytes],
                   merges: str | os.PathLike | Sequence[tuple[bytes, bytes]], pattern: str = "gpt2") -> BPETokenizer:
        """From a vocabulary and its merges, given as files or as byte pairs.

        Files: GPT-2's ``vocab.json`` + ``merges.txt`` (Hugging Face's names; OpenAI's ``encoder.json``
        + ``vocab.bpe`` are the same files), with or without the ``#version`` header line.
        Byte pairs: ``vocab = {id: token bytes}`` and ``merges = [(left bytes, right bytes), ...]``
        in the order learned, as :func:`train_bpe` returns them. Either way the single bytes must
        have ids 0..255, merge k's token id 256 + k, and the special tokens (the other entries,
        UTF-8 text) the ids after those.
        """
        if isinstance(vocab, Mapping):
            return _from_byte_pairs(vocab, merges, pattern, "")
        pairs = read_gpt2_files(vocab, merges)
        try:
            return _from_byte_pairs(*pairs, pattern, "gpt2")
        except TinyLMError as e:  # say which files
            raise TinyLMError(f"{vocab} + {merges}: {e}") from None

    @classmethod
    def from_tiktoken(cls, encoding: Any = "gpt2") -> BPETokenizer:
        """``from_tiktoken("gpt2")``: GPT-2's tokenizer in our class (50,000 merges + ``<|endoftext|>``).

        Takes a tiktoken encoding name or a ``tiktoken.Encoding``. Without network access set
        ``TIKTOKEN_CACHE_DIR`` to a folder holding tiktoken's cached files.
        """
        import tiktoken
        if isinstance(encoding, str):
            try:
                enc = tiktoken.get_encoding(encoding)
            except Exception as e:  # network, cache and name errors all come out differently
                raise TinyLMError(f"cannot load tiktoken's {encoding!r} encoding ({type(e).__name__}: {e}); "
                                  f"without internet set TIKTOKEN_CACHE_DIR to a folder with tiktoken's "
                                  f"cached files") from None
        else:
            enc = encoding
        pattern = enc._pat_str
        name = next((k for k, v in PATTERNS.items() if v == pattern), None)
        return cls.from_ranks(enc._mergeable_ranks, dict(enc._special_tokens), name or pattern, enc.name)


def _from_byte_pairs(vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]], pattern: str,
                     name: str) -> BPETokenizer:
    """``{id: bytes}`` + ``[(left, right), ...]`` -> our terms (byte_ids, merges as id pairs, special tokens)."""
    ids = {t: i for i, t in vocab.items()}  # token bytes -> id
    n = 256 + len(merges)
    try:
        if len(ids) != len(vocab):
            raise ValueError("two ids have the same token")
        byte_ids = [ids[bytes([b])] for b in range(256)]
        id_merges = []
        for k, (a, b) in enumerate(merges):
            if ids.get(a + b) != 256 + k:
                raise ValueError(f"merge {k} ({a!r} + {b!r}) has id {ids.get(a + b)}, not {256 + k}")
            id_merges.append((ids[a], ids[b]))
        specials = {t.decode("utf-8"): i for t, i in ids.items() if i >= n}
    except (KeyError, ValueError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise TinyLMError(f"the vocabulary and merges do not form a byte-level BPE ({type(e).__name__}: {e}); "
                          f"the single bytes need ids 0..255, merge k the id 256 + k, special tokens the "
                          f"ids after those") from None
    return BPETokenizer(id_merges, specials, pattern, byte_ids, name)


def train_bpe(path: str | os.PathLike, vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,), *,
              pattern: str = "gpt2", workers: int | None = None) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train on a UTF-8 text file: the functional form of :meth:`BPETokenizer.train`.

    Returns ``(vocab, merges)``: ``vocab[id]`` is the token's bytes (special tokens as their
    UTF-8, the last ids) and ``merges[k] = (left, right)`` makes token 256 + k, in the order
    learned; ``BPETokenizer.from_files(vocab, merges)`` gives back the tokenizer. A file holding
    ``ab ab abc`` with ``vocab_size=259, special_tokens=()`` gives merges
    ``[(b"a", b"b"), (b" ", b"ab"), (b" ab", b"c")]``.
    """
    path = Path(path)
    if not path.is_file():
        raise TinyLMError(f"{path} is not a file; pass the text file to train on")

    def chunks() -> Iterator[str]:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": keep "\r\n" as written
            yield from iter(lambda: f.read(1 << 20), "")

    try:
        tok = BPETokenizer.train(chunks(), vocab_size, special_tokens, pattern=pattern, workers=workers)
    except UnicodeDecodeError:
        raise TinyLMError(f"{path} is not UTF-8 text; convert it to UTF-8 first") from None
    vocab = {i: t for i, t in enumerate(tok._id_to_bytes) if t is not None}
    return vocab, [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]


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
