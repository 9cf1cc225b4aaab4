"""The tokenizer interface (char, BPE, GPT-2): file header, registry, and the special-token rules they share.

A tokenizer file is UTF-8 text whose first line is a header ``tinylm-<kind> <version>``;
:func:`tinylm.tokenizer.load_tokenizer` reads that line and hands the file to the class
registered for ``<kind>``. Everything after the header belongs to that class.

Special tokens follow tiktoken's rules for every tokenizer: the ones in ``allowed_special`` become
their ids, and the text of any other is encoded as ordinary text. Also here: the small helpers the
tokenizer modules share (reading ids typed by a person, an optional progress bar).
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import TinyLMError
from ..fileio import write_text_atomic

#: the special token that separates documents in every tokenizer tinylm trains (char and BPE)
ENDOFTEXT = "<|endoftext|>"


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses set ``kind`` and register themselves with ``@register``."""

    kind: str = ""
    #: special token text -> id, e.g. {"<|endoftext|>": 50256}
    special_tokens: dict[str, int]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (ordinary tokens + special tokens); every id is < vocab_size."""

    @abstractmethod
    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """Text -> ids. ``allowed_special`` is "all", "none" or a set of special-token texts;
        a special token's text that is not allowed is encoded as ordinary text."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (ids that do not form valid UTF-8 are replaced by U+FFFD)."""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> UTF-8 bytes. A byte-level tokenizer overrides this: its tokens can split a
        character, so the bytes of a few tokens need not be valid UTF-8 on their own."""
        return self.decode(ids).encode("utf-8")

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for, special tokens 0: what bits per byte divides by.

        Character level: ``len("é".encode())`` = 2; byte-level BPE: the token's bytes (a token may
        hold part of a character). Special tokens such as ``<|endoftext|>`` separate documents and
        stand for no text of theirs.
        """
        specials = set(self.special_tokens.values())
        return [0 if i in specials else len(self.decode_bytes([i])) for i in range(self.vocab_size)]

    @abstractmethod
    def to_text(self) -> str:
        """The file body after the header line (see :meth:`save`)."""

    @classmethod
    @abstractmethod
    def from_text(cls, body: str) -> Tokenizer:
        """Inverse of :meth:`to_text`."""

    format_version: int = 1

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` when the tokenizer has it (document separator), else None."""
        return self.special_tokens.get(ENDOFTEXT)

    def allowed_specials(self, allowed_special: str | Iterable[str]) -> set[str]:
        """``"all"`` / ``"none"`` / a set of special-token texts -> that set; an unknown name is an error."""
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


def progress_bar(enabled: bool, **kw):
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
    header, _, body = text.partition("\n")
    parts = header.split()
    if len(parts) != 2 or not parts[0].startswith("tinylm-"):
        raise TinyLMError(f"{path} is not a tinylm tokenizer file (first line {header[:60]!r}; "
                          f"expected 'tinylm-<kind> <version>')")
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
