"""The training batch loader: (x, y) windows over token shards, a resumable seeded stream, DDP-aware.

x = tokens[o : o+T], y = tokens[o+1 : o+T+1]; windows never cross a shard. The split is
deterministic: :func:`~tinylm.data.prepare.prepare` puts the last ``val_fraction`` of the token
stream in ``val`` (for tiny Shakespeare at character level this is exactly nanoGPT's 90/10 split).
With ``--data.align doc`` training windows start only where documents start (``<split>_docs.npy``).
"""
from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import TinyLMError
from .shards import check_token_ids, load_meta, read_shard


class TokenWindows:
    """The (x, y) windows of one split: x = tokens[o : o+T], y = tokens[o+1 : o+T+1]."""

    def __init__(self, data_dir: str | Path, split: str, block_size: int):
        meta = load_meta(data_dir)
        self.data_dir, self.split, self._meta = Path(data_dir), split, meta[split]
        self.vocab_size = meta["vocab_size"]  # the tokenizer's; every id in the shards is below it
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
        self._cum = np.cumsum([0, *self.starts_per_shard])

    def doc_starts(self) -> torch.Tensor:
        """The window starts (global indices, see :meth:`locate`) that begin a document: each window
        starts on the end-of-text id before its document, so the model learns to begin a document
        from it, as generation from an empty prompt does. Documents too near a shard's end for a
        whole window are left out."""
        name = self._meta.get("doc_starts")
        if name is None or not (self.data_dir / name).is_file():
            raise TinyLMError(f"{self.data_dir} has no document index for its {self.split} split (it was prepared "
                              f"by an older tinylm); run `tinylm prepare --force` on it, or use --data.align none")
        try:
            pos = np.load(self.data_dir / name, allow_pickle=False).astype(np.int64)  # document starts in the split
        except (ValueError, OSError) as e:  # a pickled object array (refused), a damaged file
            raise TinyLMError(f"{self.data_dir / name} is not a plain array of document starts ({e}); run `tinylm "
                              f"prepare --force` on {self.data_dir}, or use --data.align none") from None
        pos = np.maximum(pos - 1, 0)  # from the end-of-text id before each document
        lengths = np.cumsum([0, *(len(s) for s in self.shards)])
        shard = np.searchsorted(lengths, pos, side="right") - 1
        off = pos - lengths[shard]
        fits = off < np.asarray(self.starts_per_shard)[shard]
        return torch.from_numpy(np.unique(self._cum[shard[fits]] + off[fits]))

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
        rows = np.stack(rows)  # (B, T + 1)
        check_token_ids(rows, self.vocab_size, f"the {self.split} split of {self.data_dir}")
        buf = torch.from_numpy(rows.astype(np.int64))
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class BatchLoader:
    """Training batches for one process of ``world_size``; a resumable, seeded stream.

    Every process draws the same global micro-batch of ``micro_batch * world_size`` windows and
    keeps its own slice, so all processes hold identical loader state and together see each
    window once. Modes:

    * ``epoch``: non-overlapping windows (stride T, a random shift per epoch), visited in a seeded
      permutation without replacement; state = (epoch, position in the permutation).
    * ``random``: nanoGPT's uniformly random offsets; state = the generator's state.

    ``align="doc"`` draws from the windows that start a document (:meth:`TokenWindows.doc_starts`)
    instead: ``epoch`` visits each once per epoch (they overlap where documents are shorter than
    T), ``random`` picks among them uniformly.
    """

    def __init__(self, windows: TokenWindows, micro_batch: int, *, mode: str = "epoch", seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", align: str = "none"):
        self.w, self.micro_batch, self.mode, self.seed, self.align = windows, micro_batch, mode, seed, align
        self._docs = windows.doc_starts() if align == "doc" else None
        if self._docs is not None and len(self._docs) == 0:
            raise TinyLMError(f"no document of the {windows.split} split of {windows.data_dir} starts a whole "
                              f"window of --model.block_size {windows.block_size}; use a smaller block_size or "
                              f"--data.align none")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.global_batch = micro_batch * world_size
        self.epoch, self.pos = 0, 0
        self.gen = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None

    def _epoch_starts(self) -> torch.Tensor:
        """This epoch's window starts in visiting order (recomputed only when the epoch changes)."""
        if self._perm is None and self._docs is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = self._docs[torch.randperm(len(self._docs), generator=g)]
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
        if self.mode == "random" and self._docs is not None:
            return self._docs[torch.randint(len(self._docs), (self.global_batch,), generator=self.gen)]
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
        x, y = self.next_host_batch()
        return to_device(x, self.device), to_device(y, self.device)

    def next_host_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`next_batch` still in host memory (the stream advances the same way)."""
        starts = self._next_global_starts()
        mine = starts[self.rank * self.micro_batch:(self.rank + 1) * self.micro_batch]
        return self.w.gather(mine.tolist())

    def state_dict(self) -> dict:
        return {"mode": self.mode, "seed": self.seed, "align": self.align, "epoch": self.epoch, "pos": self.pos,
                "global_batch": self.global_batch, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        align = state.get("align", "none")  # checkpoints from before --data.align
        if state["mode"] != self.mode or state["seed"] != self.seed or align != self.align:
            raise TinyLMError(f"the checkpoint's data order (--data.sampling {state['mode']}, "
                              f"--train.seed {state['seed']}, --data.align {align}) differs from this run's "
                              f"({self.mode}, {self.seed}, {self.align}); resume with the same settings")
        self.epoch, self.pos, self._perm = state["epoch"], state["pos"], None
        self.gen.set_state(state["gen"])



def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from pinned host memory with ``non_blocking``, so the copy is queued on the
    current CUDA stream and overlaps with what the GPU is computing instead of stalling the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def with_prefetch(loader: BatchLoader, setting: str) -> BatchLoader | PrefetchLoader:
    """``loader`` as ``--data.prefetch`` says: on | off | auto (on for a CUDA device only: on a CPU the
    background thread would take a core from the step's matmuls)."""
    on = {"on": True, "off": False, "auto": loader.device.type == "cuda"}[setting]
    return PrefetchLoader(loader) if on else loader


class PrefetchLoader:
    """A :class:`BatchLoader` that builds the next batch in a background thread while the current step runs.

    The batches are the wrapped loader's, in the same order, bit for bit. :meth:`state_dict` is the position
    after the batches handed out, never the one being built ahead, so a checkpoint resumes exactly where
    training was. On CUDA the worker copies each batch from pinned memory on a stream of its own; the step's
    stream waits for that copy (an event, not a host sync).
    """

    def __init__(self, loader: BatchLoader):
        self.loader = loader
        self.device = loader.device
        self._consumed = loader.state_dict()  # the position after the last batch handed out
        self._ahead: Future | None = None  # the batch being built: (x, y, copy-done event, position after it)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinylm-prefetch")
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def w(self) -> TokenWindows:
        """The wrapped loader's windows."""
        return self.loader.w

    def _build(self) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None, dict]:
        """In the worker thread: the wrapped loader's next batch on the device, and its position after it."""
        x, y = self.loader.next_host_batch()
        position = self.loader.state_dict()
        if self._stream is None:
            return to_device(x, self.device), to_device(y, self.device), None, position
        with torch.cuda.stream(self._stream):
            x, y = to_device(x, self.device), to_device(y, self.device)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        return x, y, copied, position

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) on the device (see :meth:`BatchLoader.next_batch`); then starts building the one after."""
        if self._ahead is None:
            self._ahead = self._pool.submit(self._build)
        x, y, copied, position = self._ahead.result()
        self._ahead = self._pool.submit(self._build)
        if copied is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)  # kernels queued from here on see the finished copy
            for t in (x, y):  # made on the worker's stream, used on this one: not reused before this one is done
                t.record_stream(stream)
        self._consumed = position
        return x, y

    def _cancel_ahead(self) -> None:
        """Wait for the batch being built and drop it."""
        if self._ahead is not None:
            self._ahead.exception()  # waits; an error there concerns a batch nobody will use
            self._ahead = None

    def state_dict(self) -> dict:
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self._cancel_ahead()
        self.loader.load_state_dict(state)
        self._consumed = self.loader.state_dict()

    def close(self) -> None:
        """Stop the worker thread (it also stops when this loader is garbage-collected)."""
        self._cancel_ahead()
        self._pool.shutdown()
