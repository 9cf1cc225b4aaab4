"""A generic HTTP downloader: resume with Range requests, retry transient failures, verify sha256.

``download(url, dest, sha256=...)`` leaves ``dest`` either absent or complete and verified; the
bytes go to ``<dest>.part`` first, so an interrupted transfer resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import TinyLMError
from ..fileio import fsync_dir

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
    processes fetching the same ``dest`` at once: let one process (rank 0) prepare data. A failed
    download removes the folders it made (an empty cache folder would look like a half-fetched corpus),
    except one that keeps a ``.part`` to resume.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    # the folders this call makes (the innermost first): a failed download removes them again if empty
    made = list(itertools.takewhile(lambda p: not p.exists(), dest.parents))
    try:
        return _download(url, dest, part, sha256=sha256, progress=progress, timeout=timeout)
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (a .part kept to resume) or never made
                break
        raise


def _download(url: str, dest: Path, part: Path, *, sha256: str | None, progress: bool, timeout: float) -> Path:
    """:func:`download`'s work, once ``part`` is named: attempts with retries, then the digest check."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        open(part, "ab").close()  # fail now, not after the download, if the folder is read-only
    except OSError as e:
        raise TinyLMError(f"cannot write {part} ({e.strerror}); set TINYLM_DATA_DIR to a writable folder, "
                          f"or place the file at {dest} yourself") from None
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
        kept = f" (the {part.stat().st_size:,} bytes received are kept in {part})" if part.exists() else ""
        again = "run again to resume" if kept else "run again"
        raise TinyLMError(f"downloading {url} failed after {len(_RETRY_DELAYS_S) + 1} attempts: {last}{kept}; check "
                          f"your network connection and {again}, or download the file yourself and place it at {dest}")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise TinyLMError(f"downloaded {url} but its sha256 is {got}, expected {sha256} (changed upstream or "
                              f"damaged on the way; nothing was kept); run again to retry, or place a correct copy "
                              f"at {dest}")
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
        raise TinyLMError(f"downloading {url} failed: HTTP {e.code} {e.reason}; check the address and your network, "
                          f"or download the file yourself and place it at {dest}") from None
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
                    raise TinyLMError(f"cannot write {part} ({e.strerror}); free some space or set TINYLM_DATA_DIR "
                                      f"to another folder, then run again to resume") from None
                written += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())  # what the next attempt resumes from must really be on disk
        if total is not None and written < total:
            raise _Retry(f"the connection closed after {written:,} of {total:,} bytes")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
