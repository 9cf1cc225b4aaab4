"""``tinylm prepare``: corpus -> tokenizer -> train/val token shards + meta.json, replacing only what tinylm made.

Streams: the corpus is read in chunks, tokens go to a scratch file on disk, and the shards are
cut from it, so memory stays bounded whatever the corpus size. The folder is built under a
scratch name and swapped into place when complete (:func:`tinylm.fileio.replace_dir`).
"""
from __future__ import annotations

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

from .. import corpora
from ..config import DataConfig
from ..errors import TinyLMError
from ..fileio import pid_alive, replace_dir, scratch_sibling, write_text_atomic
from ..tokenizer import ENDOFTEXT, CharTokenizer, Tokenizer
from .shards import META_FILE, META_FORMAT, SHARD_VERSION, TOKENIZER_FILE, UnreadableMeta, load_meta, write_shard

SHARD_TOKENS = 100_000_000  # tokens per shard file: 200 MB at uint16
# every name prepare writes into a data folder (a BPE tokenizer adds its .vocab.txt listing)
WRITTEN_FILES = re.compile("|".join(re.escape(n) for n in (META_FILE, TOKENIZER_FILE,
                                                           Path(TOKENIZER_FILE).with_suffix(".vocab.txt").name))
                           + r"|(?:train|val)_\d{6}\.bin")
# the data settings a prepared folder was made with; a mismatch means the folder is stale
PREPARE_KEYS = ("corpus", "tokenizer", "vocab_size", "val_fraction", "encoding_errors")


def build_tokenizer(cfg: DataConfig, corpus: corpora.Corpus) -> Tokenizer:
    """Train (char, bpe) or load (gpt2) the tokenizer named by ``cfg.tokenizer``.

    Every one has ``<|endoftext|>``: the id :func:`prepare` puts between documents.
    """
    if cfg.tokenizer == "char":
        # documents are separated by the id, not by characters: the corpus need not contain "\n"
        texts = corpora.iter_corpus(corpus, errors=cfg.encoding_errors, separator="")
        return CharTokenizer.train(texts, special_tokens=[ENDOFTEXT])
    from ..tokenizer.bpe import BPETokenizer
    if cfg.tokenizer == "gpt2":
        return BPETokenizer.from_tiktoken("gpt2")
    # documents separated by <|endoftext|>: the trainer never merges across it
    texts = corpora.iter_corpus(corpus, errors=cfg.encoding_errors, separator=ENDOFTEXT)
    return BPETokenizer.train(texts, vocab_size=cfg.vocab_size, special_tokens=[ENDOFTEXT], progress=True)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _worker_tokenizer  # sent once per worker process, not with every chunk
    _worker_tokenizer = tok


def _encode_in_worker(text: str) -> np.ndarray:
    return np.asarray(_worker_tokenizer.encode(text), dtype=np.uint32)


def _token_stream(tok: Tokenizer, corpus: corpora.Corpus, cfg: DataConfig,
                  workers: int) -> Iterator[np.ndarray]:
    """Token arrays in corpus order; documents (see corpora.iter_documents) separated by the
    end-of-text id.

    Chunks end where the pre-tokenizer would split anyway (see corpora.iter_chunks), so encoding
    chunk by chunk gives the same ids as encoding each file whole.
    """
    assert tok.eot_id is not None, "build_tokenizer gives every tokenizer <|endoftext|>"
    sep = np.array([tok.eot_id], dtype=np.uint32)
    pool = get_context("spawn").Pool(workers, _init_worker, (tok,)) if workers > 1 else None
    try:
        for i, chunks in enumerate(corpora.iter_documents(corpus, errors=cfg.encoding_errors)):
            if i > 0:
                yield sep
            if pool is not None:  # ordered imap: the same output whatever the worker count
                yield from pool.imap(_encode_in_worker, chunks)
            else:
                for c in chunks:
                    yield np.asarray(tok.encode(c), dtype=np.uint32)
    finally:
        if pool is not None:
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
    is gone. One whose process still runs is another prepare at work, and is left alone."""
    if not out.parent.is_dir():
        return
    scratch = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d{{1,9}})")  # scratch_sibling's names
    for path in out.parent.iterdir():
        m = scratch.fullmatch(path.name)
        if m and path.is_dir() and not path.is_symlink() and not pid_alive(int(m[1])):
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
    t0 = time.time()
    log(f"prepare: corpus {cfg.corpus} ({len(corpus.files)} file(s), {corpus.num_bytes / 1e6:.1f} MB) "
        f"-> {out}")
    tok = build_tokenizer(cfg, corpus)
    work = scratch_sibling(out, "tmp")
    shutil.rmtree(work, ignore_errors=True)  # a leftover of a dead process that had our pid
    work.mkdir(parents=True)
    try:
        meta = _write_folder(work, tok, corpus, cfg)
        _check_replaceable(out, cfg, force)  # again: files may have appeared while we tokenized
        replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"prepare: {meta['total_tokens']:,} tokens ({meta['train']['tokens']:,} train, "
        f"{meta['val']['tokens']:,} val), vocab {tok.vocab_size}, {tok.kind} tokenizer, {time.time() - t0:.1f}s")
    return meta


def _write_folder(work: Path, tok: Tokenizer, corpus: corpora.Corpus, cfg: DataConfig) -> dict:
    """Tokenize the corpus into ``work``: shards, the tokenizer file, then meta.json (returned)."""
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    scratch = work / "all.tokens"
    n = 0
    with open(scratch, "wb") as f:
        for arr in _token_stream(tok, corpus, cfg, _auto_workers(cfg, corpus)):
            f.write(arr.astype(dtype).tobytes())
            n += len(arr)
    all_tokens = np.memmap(scratch, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    n_train = int(n * (1.0 - cfg.val_fraction))
    splits = {}
    for split, lo, hi in (("train", 0, n_train), ("val", n_train, n)):
        names = []
        for k, start in enumerate(range(lo, max(hi, lo + 1), SHARD_TOKENS)):
            name = f"{split}_{k:06d}.bin"
            write_shard(work / name, np.asarray(all_tokens[start:min(start + SHARD_TOKENS, hi)]))
            names.append(name)
        splits[split] = {"tokens": hi - lo, "shards": names}
    del all_tokens
    scratch.unlink()
    tok.save(work / TOKENIZER_FILE)
    meta = {
        "format": META_FORMAT, "version": SHARD_VERSION,
        "data": {k: asdict(cfg)[k] for k in PREPARE_KEYS},
        "corpus_files": len(corpus.files), "corpus_bytes": corpus.num_bytes,
        "tokenizer_file": TOKENIZER_FILE, "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
        "total_tokens": n, "train": splits["train"], "val": splits["val"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(work / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_prepared(cfg: DataConfig, *, run_dir: Path | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """Prepare ``cfg.dir`` unless it already holds data made with these same settings."""
    if not (Path(cfg.dir) / META_FILE).is_file():
        return prepare(cfg, run_dir=run_dir, progress=progress, log=log)
    meta = load_meta(cfg.dir)
    _refuse_stale(meta, cfg)
    return meta


def _refuse_stale(meta: dict, cfg: DataConfig) -> None:
    """Raise unless ``meta`` (a prepared folder's) was made with ``cfg``'s prepare settings."""
    wanted = {k: asdict(cfg)[k] for k in PREPARE_KEYS}
    if cfg.tokenizer != "bpe":
        wanted.pop("vocab_size")
    stale = {k: (meta["data"].get(k), v) for k, v in wanted.items() if meta["data"].get(k) != v}
    if stale:
        diff = ", ".join(f"--data.{k} was {old!r}, now {new!r}" for k, (old, new) in stale.items())
        raise TinyLMError(f"{cfg.dir} was prepared with other settings ({diff}); run `tinylm prepare` "
                          f"with --data.dir pointing at a new folder, or pass --force to `tinylm prepare` "
                          f"to rebuild this one")




def encode_file(path: Path, tok: Tokenizer, cfg: DataConfig) -> np.ndarray:
    """A text file's tokens as :func:`prepare` would write them with ``tok`` and ``cfg``'s reading settings
    (documents, separators, encoding errors): what ``tinylm eval --text`` scores."""
    parts = list(_token_stream(tok, corpora.Corpus(str(path), (Path(path),)), cfg, workers=1))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)
