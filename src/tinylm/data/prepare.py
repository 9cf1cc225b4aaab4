"""``tinylm prepare``: corpus -> tokenizer -> train/val token shards + meta.json, replacing only what tinylm made.

Streams: the corpus is read in chunks, tokens go to a scratch file on disk, and the shards are
cut from it, so memory stays bounded whatever the corpus size. The folder is built under a
scratch name and swapped into place when complete (:func:`tinylm.fileio.replace_dir`).
"""
from __future__ import annotations

import array
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..config import DataConfig, prepared_keys, tokenizer_file
from ..config_check import parse_bytes
from ..errors import TinyLMError
from ..fileio import (
    FULL,
    MADE,
    claim_folder,
    made_folder,
    pid_alive,
    replace_dir,
    scratch_sibling,
    write_bytes_atomic,
    write_failure,
    write_text_atomic,
)
from ..tokenizer import ENDOFTEXT, CharTokenizer, Tokenizer, load_tokenizer
from ..workers import watch_parent
from . import corpora, documents
from .shards import META_FILE, META_FORMAT, SHARD_VERSION, TOKENIZER_FILE, UnreadableMeta, load_meta, write_shard

SHARD_TOKENS = 100_000_000  # tokens per shard file: 200 MB at uint16
# every name prepare writes into a data folder (a BPE tokenizer adds its .vocab.txt listing)
WRITTEN_FILES = re.compile("|".join(re.escape(n) for n in (META_FILE, TOKENIZER_FILE, MADE,
                                                           Path(TOKENIZER_FILE).with_suffix(".vocab.txt").name))
                           + r"|(?:train|val)_\d{6}\.bin|(?:train|val)_docs\.npy")

def _texts(cfg: DataConfig, corpus: corpora.Corpus, separator: str) -> Iterator[str]:
    """The corpus's text as ``cfg`` reads it (documents, cap), ``separator`` between documents."""
    return documents.iter_corpus(corpus, errors=cfg.encoding_errors, separator=separator,
                               doc_separator=cfg.doc_separator, max_bytes=parse_bytes(cfg.max_bytes))


def build_tokenizer(cfg: DataConfig, corpus: corpora.Corpus) -> Tokenizer:
    """Train (char, bpe) or load (gpt2, a tokenizer file) the tokenizer named by ``cfg.tokenizer``.

    Every one has ``<|endoftext|>``: the id :func:`prepare` puts after each document. It learns from
    the training text only, except that a char tokenizer also collects a corpus's own validation
    file's characters (it could not encode the split otherwise; byte-level BPE encodes any text).
    """
    if tokenizer_file(cfg) is not None:
        return file_tokenizer(cfg)
    if cfg.tokenizer == "char":
        # documents are separated by the id, not by characters: the corpus need not contain "\n"
        texts = _texts(cfg, corpus, "")
        val = corpus.validation()
        if val is not None:
            texts = itertools.chain(texts, documents.iter_corpus(val, errors=cfg.encoding_errors, separator="",
                                                               doc_separator=cfg.doc_separator))
        return CharTokenizer.train(texts, special_tokens=[ENDOFTEXT])
    from ..tokenizer.bpe import BPETokenizer
    if cfg.tokenizer == "gpt2":
        return BPETokenizer.from_tiktoken("gpt2")
    # documents separated by <|endoftext|>: the trainer never merges across it
    return BPETokenizer.train(_texts(cfg, corpus, ENDOFTEXT), vocab_size=cfg.vocab_size, special_tokens=[ENDOFTEXT],
                              progress=True)


def file_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer in the file ``--data.tokenizer`` names (another run's, so that its ids carry over)."""
    path = tokenizer_file(cfg)
    tok = load_tokenizer(path, fix="pass --data.tokenizer a file that `tinylm prepare` or `tinylm tokenizer "
                                   "train` wrote, such as another run's data/<name>/tokenizer.txt")
    if tok.eot_token is None:
        raise TinyLMError(f"--data.tokenizer {path} has no {ENDOFTEXT} token, which prepare puts after every "
                          f"document; use a data folder's tokenizer.txt (each has it)")
    return tok


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tok: Tokenizer, parent: int) -> None:
    global _worker_tokenizer  # sent once per worker process, not with every chunk
    _worker_tokenizer = tok
    watch_parent(parent)  # a killed prepare leaves no worker behind


def _encode_in_worker(text: str | None) -> np.ndarray:
    return _encode(_worker_tokenizer, text)


def _encode(tok: Tokenizer, text: str | None) -> np.ndarray:
    """A document's piece -> its ids; None (a document's end) -> the end-of-text id. Documents are
    text between separators: "<|endoftext|>" inside one is its characters, never the separator's id."""
    return np.asarray(tok.encode_ordinary(text) if text is not None else [tok.eot_token], dtype=np.uint32)


def _token_stream(tok: Tokenizer, docs: Iterator[Iterator[str]], workers: int) -> Iterator[np.ndarray]:
    """Token arrays in corpus order, the end-of-text id after every document (see documents.iter_documents).

    Chunks end where the pre-tokenizer would split anyway (see documents.iter_chunks), so encoding
    chunk by chunk gives the same ids as encoding each document whole.
    """
    assert tok.eot_token is not None, "build_tokenizer gives every tokenizer <|endoftext|>"
    pieces = (p for doc in docs for p in itertools.chain(doc, [None]))
    if workers <= 1:
        yield from (_encode(tok, p) for p in pieces)
        return
    pool = get_context("spawn").Pool(workers, _init_worker, (tok, os.getpid()))
    try:  # ordered imap: the same output whatever the worker count; many short documents go per task
        yield from pool.imap(_encode_in_worker, pieces, chunksize=64)
    finally:
        pool.terminate()


def _auto_workers(cfg: DataConfig, corpus: corpora.Corpus) -> int:
    if cfg.num_workers:
        return cfg.num_workers
    # a process pool pays for itself only on big corpora with a slow (pure-Python) encoder
    return min(os.cpu_count() or 1, 8) if corpus.num_bytes > 64 << 20 else 1


def _check_apart(cfg: DataConfig, run_dir: Path | None) -> None:
    """Refuse a ``--data.dir`` that is '.', '..' or '/', or is, contains or sits inside the corpus
    or the run folder: prepare replaces the whole data folder."""
    fix = "choose a folder of its own, e.g. --data.dir data/<name>"
    if Path(cfg.dir).name in ("", ".."):
        raise TinyLMError(f"--data.dir {cfg.dir!r} does not name a folder of its own, and prepare replaces "
                          f"the whole data folder: {fix}")
    here = Path(cfg.dir).resolve()
    others = [(p, f"the corpus {'folder' if p.is_dir() else 'file'} {p} (--data.corpus {cfg.corpus})")
              for p in corpora.corpus_locations(cfg.corpus)]
    if run_dir is not None:
        others.append((Path(run_dir), f"the run folder {run_dir} (--run.dir, --run.name)"))
    for path, what in others:
        there = path.resolve()
        relation = ("is" if here == there else "contains" if here in there.parents
                    else "sits inside" if there in here.parents else "")
        if relation:
            raise TinyLMError(f"--data.dir {cfg.dir} {relation} {what}, and prepare replaces the whole data "
                              f"folder: {fix}")


def _check_replaceable(out: Path, cfg: DataConfig, force: bool) -> None:
    """Refuse to replace anything but a data folder tinylm made (``meta.json`` and tinylm's own
    files, nothing else), and that only with ``force`` or when it was made with these settings.
    A new or empty folder is fine."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symbolic link" if out.is_symlink() else "a file"
        raise TinyLMError(f"--data.dir {out} is {kind}, not a folder; prepare writes only into a folder of its "
                          f"own: choose another --data.dir")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names:
        return
    ours = META_FILE in names  # without meta.json nothing says tinylm made the folder
    foreign = [n for n in names if not (ours and WRITTEN_FILES.fullmatch(n) and (out / n).is_file()
                                        and not (out / n).is_symlink())]
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TinyLMError(f"--data.dir {out} holds files tinylm did not write ({listed}); prepare replaces only "
                          f"a data folder it made: choose another --data.dir (a new or empty folder), or move "
                          f"those files out")
    try:
        meta = load_meta(out)
    except UnreadableMeta:
        if force:  # every file has a name tinylm writes, and the user asked for a rebuild
            return
        raise
    if not force:
        _refuse_stale(meta, cfg)


def _remove_abandoned(out: Path, log: Callable[[str], None]) -> None:
    """Remove the scratch folders (see fileio.scratch_sibling) of prepares that were killed: their process
    is gone, and tinylm made them (fileio.made_folder). One whose process still runs is another prepare at
    work, and a folder of that name that tinylm did not make is someone else's: both are left alone."""
    if not out.parent.is_dir():
        return
    scratch = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d{{1,9}})")  # scratch_sibling's names
    for path in out.parent.iterdir():
        m = scratch.fullmatch(path.name)
        if m and made_folder(path) and not pid_alive(int(m[1])):
            shutil.rmtree(path)
            log(f"prepare: removed {path}, left by a prepare (process {m[1]}) that was killed")


def prepare(cfg: DataConfig, *, force: bool = False, run_dir: Path | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Corpus -> tokenizer -> train/val token shards + meta.json in ``cfg.dir``. Returns the meta.

    Replaces only a data folder tinylm made, and that only with ``force`` or when it was made
    with these settings; a ``cfg.dir`` that overlaps the corpus or ``run_dir`` is refused.
    """
    out = Path(cfg.dir)
    _check_apart(cfg, run_dir)
    _check_replaceable(out, cfg, force)
    _remove_abandoned(out, log)
    corpus = corpora.get_corpus(cfg.corpus, progress=progress)
    if corpus.num_bytes == 0:
        raise TinyLMError(f"corpus {cfg.corpus!r} is empty; point --data.corpus at a file with text")
    if not any(_texts(cfg, corpus, "")):  # reads up to the first text, all of it only when there is none
        files = ", ".join(map(str, corpus.files[:3])) + (f" and {len(corpus.files) - 3} more" if len(corpus.files) > 3
                                                         else "")
        raise TinyLMError(f"corpus {cfg.corpus!r} ({files}) holds no text, only whitespace and document separators "
                          f"({corpus.num_bytes} bytes); point --data.corpus at a file with text")
    t0 = time.time()
    val = corpus.validation()
    cap = f", the first {cfg.max_bytes} ending at a document end" if cfg.max_bytes else ""
    log(f"prepare: corpus {cfg.corpus} ({len(corpus.files)} file(s), {corpus.num_bytes / 1e6:.1f} MB{cap}; "
        f"documents end at {cfg.doc_separator}) -> {out}")
    if val is not None:
        log(f"prepare: validating on the corpus's own {', '.join(p.name for p in val.files)}; "
            f"--data.val_fraction is ignored")
    stamps = corpus_stamps(corpus)  # before reading it: a change from now on shows at the next train
    tok = build_tokenizer(cfg, corpus)
    work = scratch_sibling(out, "tmp")
    if made_folder(work):
        shutil.rmtree(work)  # a leftover of a dead process that had our pid
    elif work.exists() or work.is_symlink():
        raise TinyLMError(f"{work} is in the way: prepare builds the data folder under that name, and tinylm did not "
                          f"make what is there; move it away")
    try:
        work.mkdir(parents=True)
        claim_folder(work)  # so that, should this process be killed, the next prepare knows it may remove it
        meta = _write_folder(work, tok, corpus, cfg, stamps)
        _check_replaceable(out, cfg, force)  # again: files may have appeared while we tokenized
        replace_dir(work, out)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in FULL:
            raise write_failure(e, out, "run `tinylm prepare` again") from None
        raise
    tr, va = meta["train"], meta["val"]
    log(f"prepare: {meta['total_tokens']:,} tokens ({tr['tokens']:,} train in {tr['documents']:,} documents, "
        f"{va['tokens']:,} val in {va['documents']:,}), vocab {tok.vocab_size}, {tok.kind} tokenizer, "
        f"unigram entropy {meta['unigram_entropy']:.3f} nats/token, {time.time() - t0:.1f}s")
    return meta


class _Tokens:
    """A token stream written to a scratch file: its ids (memory-mapped) and where each document ends."""

    def __init__(self, path: Path, tok: Tokenizer, docs: Iterator[Iterator[str]], dtype: type, workers: int):
        n, ends = 0, array.array("q")  # ends: positions of the end-of-text ids, 8 bytes per document
        with open(path, "wb") as f:
            for arr in _token_stream(tok, docs, workers):
                f.write(arr.astype(dtype).tobytes())
                if len(arr) == 1 and arr[0] == tok.eot_token:  # a document's end: text never encodes to it
                    ends.append(n)
                n += len(arr)
        self.n, self.ends = n, np.frombuffer(ends, dtype=np.int64) if ends else np.zeros(0, np.int64)
        self.ids = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)

    def starts(self, lo: int, hi: int) -> np.ndarray:
        """Where documents start in ids[lo:hi], relative to lo; lo itself always (it may be mid-document)."""
        after = self.ends + 1
        return np.concatenate([[0], after[(after > lo) & (after < hi)] - lo]).astype(np.int64)


def _split_point(stream: _Tokens, val_fraction: float) -> int:
    """Where the val split starts: the last val_fraction of the stream, moved back to the start of
    the document it falls in when that moves it by at most a tenth of the split (many short
    documents, TinyStories); else exactly there (a few long ones: tiny Shakespeare is nanoGPT's 90/10)."""
    target = int(stream.n * (1.0 - val_fraction))
    before = stream.ends[stream.ends < target]
    start = int(before[-1]) + 1 if len(before) else 0
    return start if start > 0 and target - start <= (stream.n - target) // 10 else target


def _write_folder(work: Path, tok: Tokenizer, corpus: corpora.Corpus, cfg: DataConfig, stamps: dict) -> dict:
    """Tokenize the corpus into ``work``: shards, document starts, the tokenizer file, then meta.json (returned)."""
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    workers = _auto_workers(cfg, corpus)
    docs = documents.iter_documents(corpus, errors=cfg.encoding_errors, doc_separator=cfg.doc_separator,
                                  max_bytes=parse_bytes(cfg.max_bytes))
    train = _Tokens(work / "train.tokens", tok, docs, dtype, workers)
    val = corpus.validation()
    if val is not None:  # the corpus's own validation text, read whole (max_bytes caps the training text)
        val_docs = documents.iter_documents(val, errors=cfg.encoding_errors, doc_separator=cfg.doc_separator)
        held = _Tokens(work / "val.tokens", tok, val_docs, dtype, workers)
        parts = {"train": (train, 0, train.n), "val": (held, 0, held.n)}
    else:
        cut = _split_point(train, cfg.val_fraction)
        parts = {"train": (train, 0, cut), "val": (train, cut, train.n)}
    nbytes = np.asarray(tok.token_byte_lengths(), dtype=np.int64)
    splits, counts = {}, {}
    for split, (stream, lo, hi) in parts.items():
        names, counts[split] = [], np.zeros(tok.vocab_size, dtype=np.int64)
        for k, start in enumerate(range(lo, max(hi, lo + 1), SHARD_TOKENS)):
            ids = np.asarray(stream.ids[start:min(start + SHARD_TOKENS, hi)])
            names.append(f"{split}_{k:06d}.bin")
            write_shard(work / names[-1], ids)
            counts[split] += np.bincount(ids, minlength=tok.vocab_size)
        starts = stream.starts(lo, hi) if hi > lo else np.zeros(0, np.int64)
        buf = io.BytesIO()
        np.save(buf, starts)
        write_bytes_atomic(work / f"{split}_docs.npy", buf.getvalue())
        splits[split] = {"tokens": hi - lo, "shards": names, "documents": len(starts),
                         "bytes": int(counts[split] @ nbytes), "doc_starts": f"{split}_docs.npy"}
    for scratch in work.glob("*.tokens"):
        scratch.unlink()
    tok.save(work / TOKENIZER_FILE)
    meta = {
        "format": META_FORMAT, "version": SHARD_VERSION,
        "data": {k: asdict(cfg)[k] for k in prepared_keys()},
        "corpus_files": len(corpus.files), "corpus_bytes": corpus.num_bytes, "corpus_stamps": stamps,
        "val_files": [p.name for p in val.files] if val is not None else [],
        "tokenizer_file": TOKENIZER_FILE, "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
        "total_tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        "train": splits["train"], "val": splits["val"],
        "unigram_entropy": unigram_entropy(counts["train"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(work / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats/token of the token frequencies ``counts``: the loss of the best model that ignores
    context, so a training loss still near it after a few hundred steps has learned nothing else.
    ``unigram_entropy(np.array([1, 1])) -> 0.693`` (ln 2)."""
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    return float(-(p * np.log(p)).sum())


def ensure_prepared(cfg: DataConfig, *, run_dir: Path | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """Prepare ``cfg.dir`` unless it already holds data made with these same settings from the corpus as it is
    now; a corpus changed since is prepared again (the folder is tinylm's, made with these settings), or, when
    the folder cannot be replaced, refused. Either is said in one line."""
    if not (Path(cfg.dir) / META_FILE).is_file():
        return prepare(cfg, run_dir=run_dir, progress=progress, log=log)
    meta = load_meta(cfg.dir)
    _refuse_stale(meta, cfg)
    changed = corpus_changes(meta, cfg.corpus)
    if changed is None:
        return meta
    log(f"prepare: {changed} since {cfg.dir} was prepared; preparing it again")
    try:
        return prepare(cfg, run_dir=run_dir, progress=progress, log=log)
    except TinyLMError as e:
        raise TinyLMError(f"{changed} since {cfg.dir} was prepared, and preparing it again failed: {e}") from None


FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 64, 1 << 16  # a file's fingerprint reads at most 4 MiB of it


def fingerprint(path: Path, size: int) -> str:
    """A cheap content hash: the whole file up to 4 MiB, else 64 blocks of 64 KiB spread evenly over it
    (the first and the last among them), so a replaced, appended to or truncated file shows."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK:
            h.update(f.read())
        else:
            step = (size - FINGERPRINT_BLOCK) / (FINGERPRINT_BLOCKS - 1)
            for k in range(FINGERPRINT_BLOCKS):
                f.seek(round(k * step))
                h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


def corpus_stamps(corpus: corpora.Corpus) -> dict:
    """Path -> size, mtime and fingerprint of every file prepare reads (meta.json's ``corpus_stamps``)."""
    stamps = {}
    for path in (*corpus.files, *corpus.val_files):
        size = path.stat().st_size
        stamps[str(path)] = {"size": size, "mtime_ns": path.stat().st_mtime_ns, "fingerprint": fingerprint(path, size)}
    return stamps


def corpus_changes(meta: dict, spec: str) -> str | None:
    """How the local corpus ``spec`` differs from what ``meta`` (a prepared folder's) recorded, in words, or None.

    A named corpus is pinned by its digests and not compared, nor is a folder an older tinylm prepared
    (no stamps recorded). The fingerprint is read only when the size is the same and the mtime is not.
    """
    recorded = meta.get("corpus_stamps")
    if recorded is None or spec in corpora.CORPORA:
        return None
    try:
        paths = {str(p): p for p in corpora.get_corpus(spec, progress=False).files}
    except TinyLMError as e:  # gone, or no text any more
        return f"the corpus has changed ({e})"
    gone, new = sorted(recorded.keys() - paths.keys()), sorted(paths.keys() - recorded.keys())
    if gone or new:
        what = [f"{len(gone)} file(s) gone, e.g. {gone[0]}"] * bool(gone)
        what += [f"{len(new)} new, e.g. {new[0]}"] * bool(new)
        return f"the corpus has changed ({'; '.join(what)})"
    for name, was in recorded.items():
        st = paths[name].stat()
        if st.st_size != was["size"]:
            return f"the corpus file {name} has changed ({was['size']:,} bytes then, {st.st_size:,} now)"
        if st.st_mtime_ns != was["mtime_ns"] and fingerprint(paths[name], st.st_size) != was["fingerprint"]:
            return f"the corpus file {name} has changed (same size, other content)"
    return None


def _refuse_stale(meta: dict, cfg: DataConfig) -> None:
    """Raise unless ``meta`` (a prepared folder's) was made with ``cfg``'s prepare settings."""
    wanted = {k: asdict(cfg)[k] for k in prepared_keys()}
    if cfg.tokenizer != "bpe":
        wanted.pop("vocab_size")
    stale = {k: (meta["data"].get(k), v) for k, v in wanted.items() if meta["data"].get(k) != v}
    # the same file name, but has the file changed since?
    if (not stale and tokenizer_file(cfg) is not None
            and not load_tokenizer(Path(cfg.dir) / meta["tokenizer_file"]).same_ids(file_tokenizer(cfg))):
        raise TinyLMError(f"{cfg.dir} was prepared with the tokenizer in --data.tokenizer {cfg.tokenizer}, and "
                          f"that file has changed since; run `tinylm prepare` with --data.dir pointing at a new "
                          f"folder, or pass --force to `tinylm prepare` to rebuild this one")
    if stale:
        diff = ", ".join(f"--data.{k} was {old!r}, now {new!r}" for k, (old, new) in stale.items())
        raise TinyLMError(f"{cfg.dir} was prepared with other settings ({diff}); run `tinylm prepare` "
                          f"with --data.dir pointing at a new folder, or pass --force to `tinylm prepare` "
                          f"to rebuild this one")


def encode_file(path: Path, tok: Tokenizer, cfg: DataConfig) -> np.ndarray:
    """A text file's tokens as :func:`prepare` would write them with ``tok`` and ``cfg``'s reading settings
    (documents, separators, encoding errors): what ``tinylm eval --text`` scores."""
    docs = documents.iter_documents(corpora.Corpus(str(path), (Path(path),)), errors=cfg.encoding_errors,
                                  doc_separator=cfg.doc_separator)
    parts = list(_token_stream(tok, docs, workers=1))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)
