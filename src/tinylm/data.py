"""Data preparation (corpus -> tokenizer -> token shards) and the training batch loader.

Shard file (``train_000000.bin``): a 64-byte header, then the tokens.

    offset  size  field
    0       8     magic  b"TINYLMTK"
    8       4     format version (uint32, little-endian) = 1
    12      4     bytes per token (uint32): 2 (uint16, vocab <= 65536) or 4 (uint32)
    16      8     token count (uint64)
    24      40    zero padding

``meta.json`` beside the shards names the corpus, tokenizer, split and shard files. The split is
deterministic: the last ``val_fraction`` of the token stream is validation (for tiny Shakespeare
at character level this is exactly nanoGPT's 90/10 split).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from . import corpora
from .config import DataConfig
from .errors import TinyLMError
from .fileio import fsync_dir, write_text_atomic
from .tokenizer import CharTokenizer, Tokenizer, load_tokenizer
from .tokenizer.base import ENDOFTEXT

MAGIC = b"TINYLMTK"
SHARD_VERSION = 1
HEADER_BYTES = 64
SHARD_TOKENS = 100_000_000  # tokens per shard file: 200 MB at uint16
TOKENIZER_FILE = "tokenizer.txt"
META_FILE = "meta.json"
META_FORMAT = "tinylm-shards"  # meta.json's "format": how tinylm knows a folder is one it made
# every name prepare writes into a data folder (a BPE tokenizer adds its .vocab.txt listing)
WRITTEN_FILES = re.compile("|".join(re.escape(n) for n in (META_FILE, TOKENIZER_FILE,
                                                           Path(TOKENIZER_FILE).with_suffix(".vocab.txt").name))
                           + r"|(?:train|val)_\d{6}\.bin")
# the data settings a prepared folder was made with; a mismatch means the folder is stale
PREPARE_KEYS = ("corpus", "tokenizer", "vocab_size", "val_fraction", "encoding_errors")


# --------------------------------------------------------------------------- shard files

def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically: header + tokens (uint16 or uint32)."""
    assert tokens.dtype in (np.uint16, np.uint32)
    header = struct.pack("<8sIIQ", MAGIC, SHARD_VERSION, tokens.dtype.itemsize, len(tokens))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(header.ljust(HEADER_BYTES, b"\0"))
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard(path: Path) -> np.memmap:
    """Memory-map a shard's tokens (read-only; nothing is loaded until indexed)."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise TinyLMError(f"{path} is not a tinylm token shard (bad header); re-run `tinylm prepare`")
    _, version, itemsize, count = struct.unpack("<8sIIQ", header[:24])
    if version != SHARD_VERSION:
        raise TinyLMError(f"{path}: shard format version {version} is not supported; re-run `tinylm prepare`")
    if itemsize not in (2, 4):
        raise TinyLMError(f"{path}: corrupt header (token size {itemsize}); re-run `tinylm prepare`")
    expected = HEADER_BYTES + itemsize * count
    if path.stat().st_size != expected:
        raise TinyLMError(f"{path} holds {path.stat().st_size} bytes but its header promises {expected}; "
                          f"the file is truncated or corrupt: re-run `tinylm prepare`")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# --------------------------------------------------------------------------- prepare

def build_tokenizer(cfg: DataConfig, corpus: corpora.Corpus) -> Tokenizer:
    """Train (char, bpe) or load (gpt2) the tokenizer named by ``cfg.tokenizer``.

    Every one has ``<|endoftext|>``: the id :func:`prepare` puts between documents.
    """
    if cfg.tokenizer == "char":
        # documents are separated by the id, not by characters: the corpus need not contain "\n"
        texts = corpora.iter_corpus(corpus, errors=cfg.encoding_errors, separator="")
        return CharTokenizer.train(texts, special_tokens=[ENDOFTEXT])
    from .tokenizer.bpe import BPETokenizer
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
    except _UnreadableMeta:
        if force:  # every file has a name tinylm writes, and the user asked for a rebuild
            return
        raise
    if not force:
        _refuse_stale(meta, cfg)


def _scratch_dir(out: Path, kind: str) -> Path:
    """``.<name>.tmp-<pid>`` (being built) or ``.<name>.old-<pid>`` (being replaced), beside ``out``."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process instead of probing it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def _remove_abandoned(out: Path, log) -> None:
    """Remove the scratch folders (see _scratch_dir) of prepares that were killed: their process
    is gone. One whose process still runs is another prepare at work, and is left alone."""
    if not out.parent.is_dir():
        return
    scratch = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d{{1,9}})")
    for path in out.parent.iterdir():
        m = scratch.fullmatch(path.name)
        if m and path.is_dir() and not path.is_symlink() and not _process_alive(int(m[1])):
            shutil.rmtree(path)
            log(f"prepare: removed {path}, left by a prepare (process {m[1]}) that was killed")


def prepare(cfg: DataConfig, *, force: bool = False, run_dir: Path | None = None, progress: bool = True,
            log=print) -> dict:
    """Corpus -> tokenizer -> train/val token shards + meta.json in ``cfg.dir``. Returns the meta.

    Streams: the corpus is read in chunks, tokens go to a scratch file on disk, and the shards
    are cut from it, so memory stays bounded whatever the corpus size.

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
    work = _scratch_dir(out, "tmp")
    shutil.rmtree(work, ignore_errors=True)  # a leftover of a dead process that had our pid
    work.mkdir(parents=True)
    try:
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
        # swap the finished folder in; an old folder is removed only after the new one is complete
        _check_replaceable(out, cfg, force)  # again: files may have appeared while we tokenized
        if out.exists():
            old = _scratch_dir(out, "old")
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"prepare: {n:,} tokens ({splits['train']['tokens']:,} train, {splits['val']['tokens']:,} val), "
        f"vocab {tok.vocab_size}, {tok.kind} tokenizer, {time.time() - t0:.1f}s")
    return meta


class _UnreadableMeta(TinyLMError):
    """A data folder's meta.json is there but is not JSON (damaged, or edited by hand)."""


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise TinyLMError(f"no prepared data in {data_dir} (missing {META_FILE}); "
                          f"run `tinylm prepare --config <preset>` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _UnreadableMeta(f"{path} is corrupt ({e}); re-run `tinylm prepare --force` with the same "
                              f"--data.dir to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TinyLMError(f"{path} was not written by `tinylm prepare` (no \"format\": \"{META_FORMAT}\"); "
                          f"point --data.dir at a folder tinylm prepared, or at a new one")
    return meta


def ensure_prepared(cfg: DataConfig, *, run_dir: Path | None = None, progress: bool = True, log=print) -> dict:
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


def load_data_tokenizer(data_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(data_dir) / load_meta(data_dir)["tokenizer_file"])


# --------------------------------------------------------------------------- loader

class TokenWindows:
    """The (x, y) windows of one split: x = tokens[o : o+T], y = tokens[o+1 : o+T+1]."""

    def __init__(self, data_dir: str | Path, split: str, block_size: int):
        meta = load_meta(data_dir)
        self.shards = [read_shard(Path(data_dir) / name) for name in meta[split]["shards"]]
        self.block_size = block_size
        # usable start offsets per shard; windows never cross a shard boundary
        self.starts_per_shard = [max(len(s) - block_size, 0) for s in self.shards]
        self.total_starts = sum(self.starts_per_shard)
        if self.total_starts == 0:
            have = sum(len(s) for s in self.shards)
            raise TinyLMError(f"the {split} split of {data_dir} has {have} tokens, too few for one "
                              f"window of --model.block_size {block_size} (+1 target); use a larger "
                              f"corpus, a smaller block_size, or change --data.val_fraction")
        self._cum = np.cumsum([0] + self.starts_per_shard)

    def locate(self, start: int) -> tuple[int, int]:
        """Global start index -> (shard, offset)."""
        shard = int(np.searchsorted(self._cum, start, side="right") - 1)
        return shard, start - int(self._cum[shard])

    def gather(self, starts: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        rows = []
        for g in starts:
            shard, off = self.locate(int(g))
            rows.append(self.shards[shard][off:off + T + 1])
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class BatchLoader:
    """Training batches for one process of ``world_size``; a resumable, seeded stream.

    Every process draws the same global micro-batch of ``micro_batch * world_size`` windows and
    keeps its own slice, so all processes hold identical loader state and together see each
    window once. Modes:

    * ``epoch``: non-overlapping windows (stride T, a random shift per epoch), visited in a seeded
      permutation without replacement; state = (epoch, position in the permutation).
    * ``random``: nanoGPT's uniformly random offsets; state = the generator's state.
    """

    def __init__(self, windows: TokenWindows, micro_batch: int, *, mode: str = "epoch", seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"):
        self.w, self.micro_batch, self.mode, self.seed = windows, micro_batch, mode, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.global_batch = micro_batch * world_size
        self.epoch, self.pos = 0, 0
        self.gen = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None
        self._starts: torch.Tensor | None = None

    def _epoch_starts(self) -> torch.Tensor:
        """This epoch's window starts in visiting order (recomputed only when the epoch changes)."""
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            T = self.w.block_size
            shift = int(torch.randint(T, (1,), generator=g))
            starts = []
            for shard, n in enumerate(self.w.starts_per_shard):
                base = int(self.w._cum[shard])
                s = min(shift, max(n - 1, 0))
                starts.append(torch.arange(base + s, base + n, T))
            starts = torch.cat(starts)
            self._perm = starts[torch.randperm(len(starts), generator=g)]
        return self._perm

    def _next_global_starts(self) -> torch.Tensor:
        if self.mode == "random":
            return torch.randint(self.w.total_starts, (self.global_batch,), generator=self.gen)
        out = []
        need = self.global_batch
        while need:
            perm = self._epoch_starts()
            take = perm[self.pos:self.pos + need]
            out.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= len(perm):
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        return torch.cat(out)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (micro_batch, T) int64 on the device; y is x shifted left by one."""
        starts = self._next_global_starts()
        mine = starts[self.rank * self.micro_batch:(self.rank + 1) * self.micro_batch]
        x, y = self.w.gather(mine.tolist())
        if self.device.type == "cuda":
            # pinned host memory lets the copy overlap with compute
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "seed": self.seed, "epoch": self.epoch, "pos": self.pos,
                "global_batch": self.global_batch, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode or state["seed"] != self.seed:
            raise TinyLMError(f"the checkpoint's data order (--data.sampling {state['mode']}, "
                              f"--train.seed {state['seed']}) differs from this run's "
                              f"({self.mode}, {self.seed}); resume with the same settings")
        self.epoch, self.pos, self._perm = state["epoch"], state["pos"], None
        self.gen.set_state(state["gen"])


def eval_batches(windows: TokenWindows, micro_batch: int, n_batches: int, *, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: the first windows of the split at stride T, the same every eval.

    Yields up to ``n_batches`` micro-batches for this rank. A split too small for one global
    batch is evaluated whole by every rank, so the average over ranks stays right.
    """
    T, gb = windows.block_size, micro_batch * world_size
    starts = torch.arange(0, windows.total_starts, T)[: n_batches * gb]
    if len(starts) < gb:
        yield windows.gather(starts.tolist())
        return
    for b in range(0, len(starts) - gb + 1, gb):
        mine = starts[b + rank * micro_batch: b + (rank + 1) * micro_batch]
        yield windows.gather(mine.tolist())
