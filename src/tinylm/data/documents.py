"""Reading a corpus's text: UTF-8 chunks cut where pre-tokenization cannot notice, documents, byte caps.

Text is read with :func:`iter_chunks`, which streams a file as UTF-8 text in chunks cut only where
regex pre-tokenization cannot notice the cut (the tokenizer's :mod:`~tinylm.tokenizer.pretokenize`
says where that is), so a tokenizer can be trained on a file larger than memory and still see
exactly the tokens it would see in the whole file. :func:`iter_documents` is the one place that
decides where documents begin and end; :func:`iter_corpus` joins them for a tokenizer trainer.
Which files a corpus is (names, paths, downloads) is :mod:`tinylm.data.corpora`'s.
"""
from __future__ import annotations

import codecs
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TinyLMError
from ..tokenizer.base import ENDOFTEXT
from ..tokenizer.pretokenize import iter_blocks, last_cut

if TYPE_CHECKING:
    from .corpora import Corpus


# --------------------------------------------------------------------------- chunks


def iter_chunks(path: Path, *, chunk_chars: int = 1 << 20, errors: str = "strict",
                max_bytes: int | None = None) -> Iterator[str]:
    """Stream a UTF-8 file as text chunks of about ``chunk_chars`` characters.

    ``"".join(iter_chunks(p)) == p.read_text("utf-8")`` (less a leading byte-order mark), but
    the file is never in memory whole. Chunks end only at line breaks where GPT-2's and GPT-4's
    split patterns end a piece whatever follows (:func:`tinylm.tokenizer.pretokenize.last_cut`
    with ``at_spaces=False``), so pre-tokenizing the chunks one by one gives exactly the pieces of
    the whole file: ``"...Citizen:\n" | "Before..."``, ``"...proceed" | "\r\nAll:..."``. A chunk
    is the text up to the last cut within ``chunk_chars``, else up to the last cut read so far;
    so indented code is cut only before top-level lines, and a file with no cut at all comes as
    one chunk. ``max_bytes`` reads only the file's first bytes (cut at a character boundary).

    ``errors="strict"`` raises TinyLMError at the first byte that is not UTF-8, naming the
    file and byte offset; ``errors="replace"`` puts U+FFFD in its place. A multi-byte character
    split between two reads is decoded whole (incremental decoder).
    """
    if errors not in ("strict", "replace"):
        raise TinyLMError(
            f"Unknown encoding error policy {errors!r}; use 'strict' or 'replace' (--data.encoding_errors)."
        )
    if chunk_chars < 1:
        raise TinyLMError(f"chunk_chars must be at least 1, got {chunk_chars}.")
    # one read yields about one chunk (fewer chars when the text is multi-byte)
    texts = _decoded(Path(path), read_bytes=chunk_chars, errors=errors, max_bytes=max_bytes)
    yield from iter_blocks(texts, block_chars=chunk_chars, at_spaces=False, force=False)


def _decoded(path: Path, *, read_bytes: int, errors: str, max_bytes: int | None = None) -> Iterator[str]:
    """The file's text (its first ``max_bytes``), one decoded read at a time, without a leading byte-order mark."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    consumed = 0  # bytes handed to the decoder so far
    first = True
    with open(path, "rb") as f:
        while True:
            want = read_bytes if max_bytes is None else min(read_bytes, max_bytes - consumed)
            block = f.read(want) if want > 0 else b""
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the last read
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                offset = consumed - pending + e.start
                bad = e.object[e.start : e.end].hex(" ")
                raise TinyLMError(
                    f"{path} is not valid UTF-8: byte offset {offset} (bytes {bad}: {e.reason}). "
                    f"Convert the file to UTF-8, or pass --data.encoding_errors replace to read "
                    f"undecodable bytes as U+FFFD."
                ) from None
            consumed += len(block)
            if first and text:
                text = text.removeprefix("\ufeff")  # a BOM marks the encoding; it is not text
                first = False
            if text:
                yield text
            if not block:
                return


# --------------------------------------------------------------------------- documents

#: --data.doc_separator -> what ends a document inside a file (a file's end always ends one).
#: eot: an <|endoftext|> marker, as TinyStories and most pretraining dumps write them; blank: a
#: blank line (whitespace-only lines count); line: a single line break, while two or more (an empty
#: line) are a paragraph break inside the document; file: nothing, one document per file.
DOC_SEPARATORS: dict[str, re.Pattern[str] | None] = {
    "eot": re.compile(re.escape(ENDOFTEXT)),
    "blank": re.compile(r"\n[ \t\r\f\v]*\n"),
    "line": re.compile(r"(?<![\r\n])\r?\n(?!\r?\n)"),
    "file": None,
}


def iter_documents(corpus: Corpus, *, errors: str = "strict", doc_separator: str = "eot",
                   max_bytes: int | None = None, chunk_chars: int = 1 << 20) -> Iterator[Iterator[str]]:
    """Each document's text chunks, in corpus order.

    The one place that decides where documents begin and end: tokenizer training and ``tinylm
    prepare`` (which puts an end-of-text id after every document) both read through it.
    ``doc_separator`` is a key of :data:`DOC_SEPARATORS`; the separator itself is never text.
    A document has no leading or trailing whitespace: the line breaks around a separator (the
    marker's own line, the blank line) are layout, not story, so ``"story.\n<|endoftext|>\nOnce"``
    is ``"story."`` and ``"Once"``, and a model learns to end a story with its last word. A
    document with no text left (markers in a row, a trailing marker) is skipped. Text inside a
    document is kept exactly, and it is cut only where :func:`iter_chunks` cuts, so encoding the
    chunks one by one gives the ids of the whole document.

    ``max_bytes`` reads the corpus's first bytes, up to the last document end within them
    (:func:`byte_limits`).
    """
    if doc_separator not in DOC_SEPARATORS:
        raise TinyLMError(f"--data.doc_separator {doc_separator!r} is not one of {', '.join(DOC_SEPARATORS)}")
    limits = byte_limits(corpus, max_bytes, doc_separator) if max_bytes is not None else [None] * len(corpus.files)
    for path, limit in zip(corpus.files, limits, strict=True):
        if limit != 0:
            chunks = iter_chunks(path, errors=errors, chunk_chars=chunk_chars, max_bytes=limit)
            yield from _grouped(_document_pieces(chunks, doc_separator))


def _document_pieces(chunks: Iterable[str], doc_separator: str) -> Iterator[str | None]:
    """One file's documents (see :func:`iter_documents`) as text pieces, None after each one's last piece.

    ``["a\n<|endoftext|>\nb", "c\n"] -> "a", None, "bc", None`` (held text joins the next chunk).
    The end of what has been read is undecided while it is whitespace or a marker's first
    characters: the next chunk may make it a document's end. It is held, with the text back to the
    last cut of :func:`iter_chunks` before it, so pieces are cut only at such cuts and documents' edges.
    """
    sep = DOC_SEPARATORS[doc_separator]
    marker = ENDOFTEXT if doc_separator == "eot" else ""
    held = ""  # the current document's text read but not yielded yet
    started = False  # a piece of the current document has been yielded
    for chunk in itertools.chain(chunks, [None]):
        buf = held + (chunk or "")
        decided = len(buf) if chunk is None else _decided(buf, marker)
        pos = 0  # where the current document's unyielded text starts in buf
        for m in sep.finditer(buf) if sep is not None else ():
            if m.end() > decided:
                break
            text = buf[pos:m.start()].rstrip()
            text = text if started else text.lstrip()
            if text:
                yield text
            if started or text:
                yield None
            started, pos = False, m.end()
        rest = buf[pos:] if started else buf[pos:].lstrip()
        if chunk is None:
            rest = rest.rstrip()
            if rest:
                yield rest
            if started or rest:
                yield None
            return
        safe = decided - (len(buf) - len(rest))  # the decided part of rest
        cut = last_cut(rest, 0, safe, at_spaces=False) if safe > 0 else -1
        if cut > 0:
            yield rest[:cut]
            started, rest = True, rest[cut:]
        held = rest


def _decided(buf: str, marker: str) -> int:
    """Where the undecided end of ``buf`` starts: its trailing whitespace and any start of ``marker``."""
    end = len(buf)
    for k in range(min(len(marker) - 1, end), 0, -1):
        if buf.endswith(marker[:k]):
            end -= k
            break
    return len(buf[:end].rstrip())


def _grouped(pieces: Iterable[str | None]) -> Iterator[Iterator[str]]:
    """``["a", "b", None, "c", None] -> iter(["a", "b"]), iter(["c"])``: one iterator per document."""
    pieces = iter(pieces)

    def document(first: str) -> Iterator[str]:
        yield first
        for p in pieces:
            if p is None:
                return
            yield p

    for first in pieces:
        doc = document(first)
        yield doc
        for _ in doc:  # the caller may leave a document unread: skip the rest of it
            pass


def byte_limits(corpus: Corpus, max_bytes: int, doc_separator: str) -> list[int]:
    """Bytes to read from each of ``corpus.files`` so that the corpus is cut at its last document end
    within its first ``max_bytes`` bytes: whole files, then part of one, then nothing.

    ``byte_limits(<one file "a<|endoftext|>bb<|endoftext|>ccc">, 20, "eot") -> [16]`` (the text
    up to the second marker: "ccc" would not fit). Found by searching back from the cap, so only a
    few kilobytes of a large file are read.
    """
    limits, left = [], max_bytes
    for path in corpus.files:
        size = path.stat().st_size
        limits.append(size if size <= left else _last_document_end(path, left, doc_separator))
        left = max(left - size, 0) if size <= left else 0
    if not any(limits):
        raise TinyLMError(f"--data.max_bytes {max_bytes} holds no whole document of {corpus.name!r} "
                          f"(--data.doc_separator {doc_separator}): raise it above the first document's size")
    return limits


def _last_document_end(path: Path, cap: int, doc_separator: str) -> int:
    """The start of the last separator that starts within ``path``'s first ``cap`` bytes, or 0."""
    sep = DOC_SEPARATORS[doc_separator]
    if sep is None:
        return 0
    pattern = re.compile(sep.pattern.encode())  # the same pattern, on bytes (separators are ASCII)
    span = 1 << 16
    with open(path, "rb") as f:
        while True:
            lo = max(cap - span, 0)
            f.seek(lo)
            window = f.read(cap - lo + len(ENDOFTEXT) + 2)  # a separator may run past the cap
            # a match at the window's very start may be part of a longer separator (or miss a look-behind)
            starts = [lo + m.start() for m in pattern.finditer(window) if lo + m.start() <= cap
                      and (m.start() > 0 or lo == 0)]
            if starts:
                return starts[-1]
            if lo == 0:
                return 0
            span *= 4


def head(corpus: Corpus, max_chars: int) -> list[str]:
    """The corpus's first chunks (see :func:`iter_corpus`), until they hold at least ``max_chars``
    characters: a sample to study a tokenizer on without reading a large corpus whole."""
    chunks, n = [], 0
    for chunk in iter_corpus(corpus):
        if n >= max_chars:
            break
        chunks.append(chunk)
        n += len(chunk)
    return chunks


def iter_corpus(corpus: Corpus, *, errors: str = "strict", separator: str = "\n\n", doc_separator: str = "eot",
                max_bytes: int | None = None) -> Iterator[str]:
    """Every document's chunks in corpus order, ``separator`` between documents so no word joins
    two (pass ``"<|endoftext|>"`` to a BPE trainer, which never merges across it; ``""`` for none).
    ``doc_separator`` and ``max_bytes``: see :func:`iter_documents`."""
    docs = iter_documents(corpus, errors=errors, doc_separator=doc_separator, max_bytes=max_bytes)
    for i, chunks in enumerate(docs):
        if i and separator:
            yield separator
        yield from chunks
