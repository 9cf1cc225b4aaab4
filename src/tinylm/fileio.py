"""Crash-safe file writing: a reader sees the old file or the complete new one, never half."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import TinyLMError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str, then: str = "continue with --resume") -> None:
    """Append to a log file (samples.md), flushed; a failed write is one line (see write_failure)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
    except OSError as e:
        raise write_failure(e, path, then) from None


FULL = (errno.ENOSPC, errno.EDQUOT)  # the errors of a full disk (or quota)


def write_failure(e: BaseException, path: str | os.PathLike, then: str = "run the command again") -> TinyLMError:
    """A failed write of ``path`` as one line for people; a full disk says so, and what to do ``then``.

    Libraries hide the ``OSError`` of a full disk: ``torch.save`` raises ``RuntimeError("... unexpected
    pos ...")`` with the OSError as its context, safetensors an error whose message holds the OS's.
    """
    err: BaseException | None = e
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    if err is not None:
        full, reason = err.errno in FULL, err.strerror or str(err)
    else:
        full, reason = os.strerror(errno.ENOSPC) in str(e), (str(e).strip().splitlines() or [type(e).__name__])[0]
    if full:
        return TinyLMError(f"the disk is full: no space left to write {path}; free some space there and {then}")
    return TinyLMError(f"cannot write {path}: {reason}")


# ---------------------------------------------------------------- what tinylm made: the one rule for replacing
# tinylm replaces a file or folder only when it can prove it made it: a file whose bytes are those it recorded in
# its folder's MADE file when it wrote them (so an edited one is the user's now), or a folder holding a MADE file
# that says tinylm made the folder. A format that names its writer is its own proof instead (an artifact's magic
# bytes, an export's metadata): an export goes where the user says, a folder tinylm has no record in.
MADE = ".tinylm-made"  # JSON: {"folder": true (tinylm made this folder), "files": {name: sha256 of what it wrote}}


def _made(folder: Path) -> dict:
    try:
        made = json.loads((folder / MADE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return made if isinstance(made, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def made_file(path: Path) -> bool:
    """Whether tinylm wrote the file ``path`` as it is now (an edited copy, a symlink or a folder are not)."""
    if path.is_symlink() or not path.is_file():
        return False
    files = _made(path.parent).get("files")
    try:
        return isinstance(files, dict) and files.get(path.name) == _sha256(path)
    except OSError:  # unreadable: nothing proves it is ours
        return False


def made_folder(path: Path) -> bool:
    """Whether tinylm made the folder ``path`` (see :func:`claim_folder`)."""
    return not path.is_symlink() and path.is_dir() and _made(path).get("folder") is True


def claim_file(path: Path) -> None:
    """Record that tinylm wrote ``path`` as it is now, so that a later command may replace it."""
    made = _made(path.parent)
    files = made.get("files") if isinstance(made.get("files"), dict) else {}
    write_text_atomic(path.parent / MADE, json.dumps({**made, "files": {**files, path.name: _sha256(path)}}) + "\n")


def claim_folder(path: Path) -> None:
    """Mark the folder ``path`` (which tinylm made, or found empty) as tinylm's."""
    write_text_atomic(path / MADE, json.dumps({**_made(path), "folder": True}) + "\n")


def check_replaceable(path: Path, fix: str = "choose another --out, or move it away",
                      proof: Callable[[Path], bool] = made_file) -> None:
    """Refuse, in one line naming ``path`` and ``fix``, to replace a file tinylm cannot prove it wrote: by its
    folder's record (:func:`made_file`), or by ``proof``, a test of a format that names its writer."""
    if path.is_dir() and not path.is_symlink():
        raise TinyLMError(f"{path} is a folder, and tinylm writes a file there; {fix}")
    if (path.exists() or path.is_symlink()) and (path.is_symlink() or not proof(path)):
        _refuse(path, fix)


def check_replaceable_folder(path: Path, proof: Callable[[Path], bool],
                             fix: str = "choose another --out (a new or empty folder), or move it away") -> None:
    """Refuse, in one line, to replace the folder ``path`` unless it is absent, empty, or proven tinylm's by
    ``proof`` (:func:`made_folder`, or a test of a folder whose files name their writer)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise TinyLMError(f"{path} is {'a symbolic link' if path.is_symlink() else 'a file'}, and tinylm writes a "
                          f"folder there; {fix}")
    if path.is_dir() and any(path.iterdir()) and not proof(path):
        _refuse(path, fix)


def _refuse(path: Path, fix: str) -> None:
    raise TinyLMError(f"{path} exists and was not written by tinylm (or was changed since), so it is not replaced; "
                      f"{fix}")


class Outputs:
    """Files a command writes (``--out DIR``'s report.md, results.csv, ...), replacing only those tinylm wrote.

    Made before the work, it refuses each file that exists and tinylm did not write (one line, nothing
    computed yet); the writes then happen in ``with outputs:``, after which each file written is recorded as
    tinylm's (see :func:`claim_file`), even when a later write failed. A full disk there is one line.
    """

    def __init__(self, paths: Iterable[Path], fix: str = "choose another --out, or move it away"):
        self.paths, self.fix = list(paths), fix
        self.check()

    def check(self) -> None:
        for path in self.paths:
            check_replaceable(path, self.fix)

    def __enter__(self) -> Outputs:
        self.check()  # again: a file may have appeared during the work
        return self

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> None:
        with contextlib.suppress(OSError):  # a full disk: those files are then not replaced later, which is safe
            for path in self.paths:
                if path.is_file() and not path.is_symlink():
                    claim_file(path)
        if isinstance(e, OSError) and e.errno in FULL:
            raise write_failure(e, e.filename or self.paths[0].parent) from None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without signalling)."""
    if os.name == "nt":  # os.kill there terminates the process instead of probing it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def scratch_sibling(path: Path, kind: str) -> Path:
    """``data/x`` -> ``data/.x.<kind>-<pid>``: a hidden folder beside ``path`` for this process.

    ``kind`` says what it is for: ``tmp`` (being built) or ``old`` (being replaced, see
    :func:`replace_dir`); the pid lets a later run tell a killed process's leftovers from a live one's.
    """
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def replace_dir(tmp: Path, final: Path, old: Path | None = None) -> None:
    """Put the finished folder ``tmp`` in place of ``final`` (which need not exist), durably.

    An existing ``final`` is renamed to ``old`` (default ``scratch_sibling(final, "old")``) and
    removed only after ``tmp`` is in its place, so a crash never leaves a half-written folder at
    ``final``: it holds the old or the new one (or, between the two renames, sits at ``old``).
    """
    if final.exists():
        old = scratch_sibling(final, "old") if old is None else old
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    fsync_dir(final.parent)
