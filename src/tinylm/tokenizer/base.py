"""The tokenizer interface (char, BPE, GPT-2): file header, registry, and the special-token rules they share.

A tokenizer file is UTF-8 text whose first line is a header ``tinylm-<kind> <version>``;
:func:`tinylm.tokenizer.load_tokenizer` reads that line and hands the file to the class
registered for ``<kind>``. Everything after the header belongs to that class.

The interface is tiktoken's (``encode``, ``encode_ordinary``, ``encode_batch``, ``decode``,
``decode_bytes``, ``decode_single_token_bytes``, ``n_vocab``, ``eot_token``) plus Hugging Face's
``vocab_size``, ``token_to_id`` and ``id_to_token``, with tiktoken's special-token rules for every
tokenizer: ``encode`` turns the special tokens in ``allowed_special`` into their ids and raises
:class:`DisallowedSpecial` when the text contains any other (``disallowed_special="all"``);
``encode_ordinary`` encodes all special-token text as ordinary text. Also here: the small helpers
the tokenizer modules share (reading ids typed by a person, an optional progress bar).
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from ..errors import TinyLMError
from ..fileio import write_text_atomic

#: the special token that separates documents in every tokenizer tinylm trains (char and BPE)
ENDOFTEXT = "<|endoftext|>"

#: ``allowed_special`` / ``disallowed_special``: "all" or a set of special-token texts (tiktoken's types)
Specials = Literal["all"] | Collection[str]


class DisallowedSpecial(TinyLMError, ValueError):
    """``encode`` met a special token's text it was not allowed to encode as that token.

    A ValueError like tiktoken's, so ``except ValueError`` code written for tiktoken still works;
    a TinyLMError, so the CLI prints the message as one line. ``token`` and ``position`` say
    which special token and where (a character index).
    """

    def __init__(self, token: str, position: int):
        self.token, self.position = token, position
        super().__init__(f"the text contains the special token {token!r} at character {position}, which is "
                         f"disallowed here; pass allowed_special={{{token!r}}} to encode it as that token, or "
                         f"use encode_ordinary (or disallowed_special=()) to encode it as plain text")


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses set ``kind``, implement the abstract methods and register
    themselves with ``@register``; the encode variants are built here on :meth:`_encode`."""

    kind: str = ""
    #: special token text -> id, e.g. {"<|endoftext|>": 50256}
    special_tokens: dict[str, int]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (ordinary tokens + special tokens); every id is < vocab_size."""

    @property
    def n_vocab(self) -> int:
        """tiktoken's name for :attr:`vocab_size`."""
        return self.vocab_size

    @property
    def eot_token(self) -> int | None:
        """Id of ``<|endoftext|>`` (the document separator), as tiktoken's ``eot_token``; None when the
        tokenizer has no such token (tiktoken raises instead)."""
        return self.special_tokens.get(ENDOFTEXT)

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, *, allowed_special: Specials = frozenset(),
               disallowed_special: Specials = "all") -> list[int]:
        """Text -> ids, with tiktoken's rules and defaults for special tokens.

        The special tokens in ``allowed_special`` ("all" or a set of their texts) become their ids.
        Text matching one in ``disallowed_special`` ("all" = every special token not allowed) raises
        :class:`DisallowedSpecial`; text matching neither is encoded as ordinary text. So with the
        defaults ``encode("a<|endoftext|>")`` raises, ``encode("a<|endoftext|>", allowed_special="all")``
        gives ``[..., eot_token]`` and ``encode_ordinary("a<|endoftext|>")`` encodes the characters.
        """
        allowed = self.allowed_specials(allowed_special)
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:  # tiktoken's rule: the texts given, as they are
            disallowed = set(_special_set(disallowed_special, "disallowed_special"))
        splitter = special_splitter(disallowed)
        if splitter is not None and (m := splitter.search(text)):
            raise DisallowedSpecial(m.group(), m.start())
        return self._encode(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, special-token text encoded as ordinary text (never raises on it): the
        encoding for documents, which never contain special tokens (they sit between documents)."""
        return self._encode(text, set())

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8, allowed_special: Specials = frozenset(),
                     disallowed_special: Specials = "all") -> list[list[int]]:
        """:meth:`encode` each text, on ``num_threads`` threads (tiktoken's BPE releases the GIL);
        ``encode_batch(texts, disallowed_special=())`` is ``encode_ordinary`` for each."""
        def one(text: str) -> list[int]:
            return self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)

        if num_threads <= 1 or len(texts) <= 1:
            return [one(t) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(one, texts))

    @abstractmethod
    def _encode(self, text: str, allowed: set[str]) -> list[int]:
        """Text -> ids: the special tokens in ``allowed`` become their ids, all other text is
        encoded as ordinary text (the disallowed check is done by :meth:`encode`)."""

    def allowed_specials(self, allowed_special: Specials) -> set[str]:
        """``"all"`` or a set of special-token texts -> that set; an unknown name is an error."""
        if allowed_special == "all":
            return set(self.special_tokens)
        allowed = set(_special_set(allowed_special, "allowed_special"))
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise TinyLMError(f"allowed_special names {sorted(unknown)}, which are not special tokens "
                              f"of this tokenizer (it has {sorted(self.special_tokens)})")
        return allowed

    def _encode_with_specials(self, text: str, allowed: set[str],
                              encode_plain: Callable[[str], list[int]]) -> list[int]:
        """The allowed special tokens in ``text`` become their ids, the text between them goes
        through ``encode_plain``: ``"a<|endoftext|>b"`` -> ``encode_plain("a") + [eot] + encode_plain("b")``."""
        splitter = special_splitter(allowed)
        ids: list[int] = []
        start = 0
        for m in (splitter.finditer(text) if splitter else ()):
            ids += encode_plain(text[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += encode_plain(text[start:])
        return ids

    # -- decoding and lookup ----------------------------------------------------------------
    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (ids that do not form valid UTF-8 are replaced by U+FFFD)."""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> UTF-8 bytes. A byte-level tokenizer overrides this: its tokens can split a
        character, so the bytes of a few tokens need not be valid UTF-8 on their own."""
        return self.decode(ids).encode("utf-8")

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes one id stands for (a special token's: its text): GPT-2's 995 -> ``b" world"``."""
        if not 0 <= token < self.vocab_size:
            raise TinyLMError(f"token id {token!r} is not in this tokenizer (ids are 0..{self.vocab_size - 1})")
        return self.decode_bytes([token])

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """A token as the vocabulary spells it (Hugging Face's ``token_to_id``) -> its id; None if
        there is none."""

    @abstractmethod
    def id_to_token(self, id: int) -> str | None:
        """Inverse of :meth:`token_to_id`; None for an id outside the vocabulary."""

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for, by id; 0 for special tokens, which are not text.

        What bits per byte divides by: a split's bytes are the sum over its tokens.
        """
        specials = set(self.special_tokens.values())
        return [0 if i in specials else len(self.decode_single_token_bytes(i)) for i in range(self.vocab_size)]

    @abstractmethod
    def to_text(self) -> str:
        """The file body after the header line (see :meth:`save`)."""

    @classmethod
    @abstractmethod
    def from_text(cls, body: str) -> Tokenizer:
        """Inverse of :meth:`to_text`."""

    format_version: int = 1

    def file_text(self) -> str:
        """The whole tokenizer file: the header line, then :meth:`to_text`."""
        return f"tinylm-{self.kind} {self.format_version}\n" + self.to_text()

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer file atomically (temp file in the same folder, then rename)."""
        write_text_atomic(Path(path), self.file_text())

    def same_ids(self, other: Tokenizer) -> bool:
        """Do both tokenizers give every text the same ids (same kind and vocabulary; a name does not count)?"""
        return type(self) is type(other) and self.to_text() == other.to_text()

    def describe(self) -> str:
        """One line for messages: ``bpe 'gpt2' (50257 ids)``, ``char (66 ids)``."""
        name = getattr(self, "name", "")
        return f"{self.kind}{f' {name!r}' if name else ''} ({self.vocab_size} ids)"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special={list(self.special_tokens)})"


def _special_set(specials: Collection[str], name: str) -> Collection[str]:
    """A set of special-token texts; a lone string (other than "all") is refused: set("<|endoftext|>")
    would be a set of characters."""
    if isinstance(specials, str):
        raise TinyLMError(f"{name} is 'all' or a set of special-token texts, not the string {specials!r}; "
                          f"write {name}={{{specials!r}}}")
    return specials


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """The special tokens as a list; an empty, non-string or repeated one is an error."""
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise TinyLMError(f"special token {s!r} must be a non-empty string; remove it from "
                              f"--special-tokens")
    dup = sorted({s for s in specials if specials.count(s) > 1})
    if dup:
        raise TinyLMError(f"special tokens {dup} are listed more than once; list each once")
    return specials


def special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    """Regex matching any of ``specials``, longest first (so "<|a|>x" beats "<|a|>"); None for none."""
    specials = sorted(set(specials), key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def parse_ids(text: str) -> list[int]:
    """``tinylm tokenizer decode`` input: ``"15496, 995"`` or ``"[15496 995]"`` -> [15496, 995]."""
    try:
        return [int(x) for x in re.split(r"[\s,]+", text.strip().strip("[]").strip()) if x]
    except ValueError:
        raise TinyLMError(f"cannot read token ids from {text[:60]!r}; give integers separated "
                          f"by spaces or commas") from None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **kw: Any) -> Any:
    """A tqdm bar, or a stand-in with the same two methods when nothing is shown."""
    if not enabled:
        return _NoBar()  # importing tqdm costs ~0.1 s; skip it when nothing is shown
    from tqdm.auto import tqdm
    return tqdm(**kw)


_REGISTRY: dict[str, type[Tokenizer]] = {}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make ``cls`` loadable by :func:`load_tokenizer` under ``cls.kind``."""
    _REGISTRY[cls.kind] = cls
    return cls


DATA_FOLDER_FIX = "restore it, or re-create it (`tinylm prepare --force` remakes a data folder's)"


def load_tokenizer(path: str | os.PathLike, fix: str = DATA_FOLDER_FIX) -> Tokenizer:
    """Read a tokenizer file written by :meth:`Tokenizer.save`; ``fix`` ends the message when the
    file is damaged (a checkpoint's tokenizer has another remedy than a data folder's)."""
    path = Path(path)
    if not path.is_file():
        raise TinyLMError(f"tokenizer file {path} does not exist; run `tinylm prepare` or "
                          f"`tinylm tokenizer train` to create it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TinyLMError(f"{path} is not a tinylm tokenizer file (byte {e.start} is not UTF-8 text); {fix}") from None
    return parse_tokenizer(text, path, fix)


def parse_tokenizer(text: str, path: str | os.PathLike, fix: str = DATA_FOLDER_FIX) -> Tokenizer:
    """A tokenizer file's text (what :meth:`Tokenizer.file_text` gives) -> the tokenizer; ``path`` names where
    the text came from in messages (a file, or the file that holds it, such as a quantized artifact)."""
    header, _, body = text.partition("\n")
    parts = header.split()
    if len(parts) != 2 or not parts[0].startswith("tinylm-"):
        raise TinyLMError(f"{path} is not a tinylm tokenizer file (first line {header[:60]!r}; "
                          f"expected 'tinylm-<kind> <version>'); {fix}")
    kind, version = parts[0][len("tinylm-"):], parts[1]
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise TinyLMError(f"{path}: unknown tokenizer kind {kind!r}; known kinds: {sorted(_REGISTRY)}")
    if version != str(cls.format_version):
        raise TinyLMError(f"{path}: tokenizer format version {version} is not supported "
                          f"(this tinylm reads version {cls.format_version})")
    try:
        return cls.from_text(body)
    except TinyLMError as e:  # the class knows what is wrong, only the caller knows which file
        raise TinyLMError(f"{path}: {e}; {fix}") from None
