"""A run's folder: made and locked (``<run>/.lock``) by the one process writing in it, or filled with weights alone.

Training opens the folder with :class:`RunFolder` (refusing one that holds anything unless it
resumes, then loading its newest readable checkpoint); ``tinylm import`` fills a new one with
:func:`save_weights`. The step folders inside are :mod:`tinylm.training.checkpoint`'s.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config, to_toml
from ..errors import TinyLMError
from ..fileio import MADE, claim_folder, made_folder, write_failure, write_text_atomic
from ..tokenizer import Tokenizer
from .checkpoint import TOKENIZER, WEIGHTS_ONLY, load_latest, save_checkpoint, step_dirs

LOCK = ".lock"
LOCK_TEXT = b"tinylm pid "  # how the lock file starts: it names the holder (see RunLock)


class RunLock:
    """An exclusive OS lock on ``<run>/.lock`` while a process trains in the run folder; the file
    exists only while it is held (:meth:`release` removes it).

    ``flock`` belongs to the open file, so the kernel drops it when the process ends, crash or
    SIGKILL included: a run folder is never left locked (a killed process leaves the file, which
    the next start locks again). The file names the holder for the process that is refused.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_failure(e, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise TinyLMError(f"run folder {run_dir} is in use by {holder}; wait for it to end (or stop it), "
                                  f"or choose another --run.name") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed that file as it let go: lock the one at the path now
        self._fd: int | None = fd
        try:  # who holds it, for the message above; the lock works without it (e.g. on a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, LOCK_TEXT + f"{os.getpid()} on {socket.gethostname()} since "
                                     f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order: a process that opened the file meanwhile sees,
        once it holds the lock, that the path no longer names it, and starts again)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._fd, self.path):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd``."""
    try:
        st, own = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class RunFolder:
    """A training run's folder: made (with any missing parents) and locked by the process that
    trains in it; :meth:`discard` leaves no trace of a start refused before training."""

    def __init__(self, path: Path):
        self.path = path
        # the folders this start creates (the run folder first): discard() removes them again
        self.new_dirs = list(itertools.takewhile(lambda p: not p.exists(), (path, *path.parents)))
        self.lock: RunLock | None = None

    def open(self, cfg: Config, resume: bool, log: Callable[[str], None] = print) -> tuple[Path, dict] | None:
        """Create and lock the folder; under ``--resume`` also load its newest readable checkpoint (see
        :func:`load_latest`): (step folder, its parts). Without ``--resume`` a folder holding anything is refused;
        with it, one holding anything that is not a run folder. The folder is marked as tinylm's (a run folder).

        ``--resume`` on a run that died before its first checkpoint starts it again from step 0.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            file = next((p for p in (self.path, *self.path.parents) if p.exists() and not p.is_dir()), self.path)
            raise TinyLMError(f"{file} is a file, not a folder; --run.dir {cfg.run.dir} --run.name {cfg.run.name} "
                              f"must name a folder: choose another --run.dir") from None
        except OSError as e:
            raise write_failure(e, self.path) from None
        self._refuse_foreign(cfg)
        self.lock = RunLock(self.path)
        try:
            if not resume and any(p.name not in (LOCK, MADE) for p in self.path.iterdir()):
                raise TinyLMError(f"run folder {self.path} already exists; pass --resume to continue it, "
                                  f"or choose another --run.name")
            if not made_folder(self.path):
                claim_folder(self.path)
        except OSError as e:
            self.close()
            raise write_failure(e, self.path) from None
        except BaseException:
            self.close()
            raise
        try:
            return load_latest(self.path / "checkpoints", log) if resume else None
        except OSError as e:  # reading, not writing: a checkpoints folder it may not list, say
            self.close()
            raise TinyLMError(f"cannot read {e.filename or self.path / 'checkpoints'}: {e.strerror or e}; give your "
                              f"user read access to it (chmod, chown) and resume again") from None
        except BaseException:
            self.close()
            raise

    def _refuse_foreign(self, cfg: Config) -> None:
        """Refuse a folder that holds anything but is not a run folder: tinylm did not make it (see
        :func:`tinylm.fileio.claim_folder`) and it holds no tinylm checkpoint (a run of an older tinylm). A
        lone lock file that tinylm wrote is a run killed before it wrote anything."""
        if made_folder(self.path) or step_dirs(self.path / "checkpoints"):
            return
        names = sorted(p.name for p in self.path.iterdir())
        if not names or (names == [LOCK] and _our_lock(self.path / LOCK)):
            return
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise TinyLMError(f"{self.path} holds files tinylm did not write ({listed}) and is not a tinylm run folder, "
                          f"so train does not write in it; choose another --run.name (or --run.dir {cfg.run.dir}), "
                          f"or move those files away")

    def close(self) -> None:
        """Unlock the folder and remove its lock file (the OS unlocks it too if the process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard(self) -> None:
        """Unlock (which removes the lock file), then remove each folder this start made, as long as nothing
        else was written there."""
        self.close()
        try:
            if self.new_dirs:  # the run folder itself: its mark that tinylm made it goes too
                (self.path / MADE).unlink(missing_ok=True)
            for folder in self.new_dirs:
                folder.rmdir()
        except OSError:  # not empty (something else was written), or never made: keep the rest
            pass


def _our_lock(path: Path) -> bool:
    """Whether the lock file ``path`` is tinylm's: it names a holder (or is empty: killed before it could)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LOCK_TEXT))
    except OSError:
        return False
    return head in (b"", LOCK_TEXT)


def save_weights(cfg: Config, state: dict, tokenizer: Tokenizer, source: str) -> Path:
    """A new run folder ``cfg.run_dir`` holding weights alone (what `tinylm import` makes): one step-0
    checkpoint with model.pt, the tokenizer and meta.json, beside config.toml. Sample, info, export and
    eval read it like any run; ``--train.init_from`` fine-tunes from it. Returns the step folder.

    A folder that exists and holds anything is refused (tinylm replaces only what it made).
    """
    if cfg.run_dir.is_dir() and any(cfg.run_dir.iterdir()):  # refused before the lock file is made in it
        raise TinyLMError(f"run folder {cfg.run_dir} already exists; choose another --out")
    folder = RunFolder(cfg.run_dir)
    try:
        folder.open(cfg, resume=False)
        step_dir = save_checkpoint(cfg.run_dir / "checkpoints", 0, {"model": state},
                                   {"tokens_seen": 0, "val_loss": None, "best_val_loss": None,
                                    "config": cfg.to_dict(), WEIGHTS_ONLY: True, "imported_from": source},
                                   files={TOKENIZER: tokenizer.file_text().encode("utf-8")})
        write_text_atomic(cfg.run_dir / "config.toml", to_toml(cfg))
    except OSError as e:
        folder.discard()
        raise write_failure(e, cfg.run_dir) from None
    except BaseException:
        folder.discard()
        raise
    folder.close()
    return step_dir
