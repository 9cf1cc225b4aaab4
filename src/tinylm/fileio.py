"""Crash-safe file writing: a reader sees the old file or the complete new one, never half."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
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


def write_failure(e: BaseException, path: str | os.PathLike, then: str = "run the command again") -> TinyLMError:
    """A failed write of ``path`` as one line for people; a full disk says so, and what to do ``then``.

    Libraries hide the ``OSError`` of a full disk: ``torch.save`` raises ``RuntimeError("... unexpected
    pos ...")`` with the OSError as its context, safetensors an error whose message holds the OS's.
    """
    err: BaseException | None = e
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    if err is not None:
        full, reason = err.errno in (errno.ENOSPC, errno.EDQUOT), err.strerror or str(err)
    else:
        full, reason = os.strerror(errno.ENOSPC) in str(e), (str(e).strip().splitlines() or [type(e).__name__])[0]
    if full:
        return TinyLMError(f"the disk is full: no space left to write {path}; free some space there and {then}")
    return TinyLMError(f"cannot write {path}: {reason}")


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
