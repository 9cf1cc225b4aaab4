"""The training batch loader: (x, y) windows over token shards, a resumable seeded stream, DDP-aware.

x = tokens[o : o+T], y = tokens[o+1 : o+T+1]; windows never cross a shard. The split is
deterministic: :func:`~tinylm.data.prepare.prepare` puts the last ``val_fraction`` of the token
stream in ``val`` (for tiny Shakespeare at character level this is exactly nanoGPT's 90/10 split).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import TinyLMError
from .shards import load_meta, read_shard


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
        self._cum = np.cumsum([0, *self.starts_per_shard])

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

