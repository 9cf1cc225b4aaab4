"""Evaluation that compares: loss, perplexity and bits per byte on a fixed set of windows.

The set depends only on the split (or text), ``block_size`` and a token count, never on the batch
size, the accumulation, the number of processes or a resume, so two runs' val losses can be put side
by side. Windows of ``block_size`` targets are laid at stride ``block_size`` from the start of each
shard, a shorter one takes the shard's tail, and they stop at ``max_tokens`` targets (0 = all):
every token after a shard's first is scored once. Under DDP the windows are dealt out to the
processes and the sums (nats, tokens, bytes) are added up, so the mean is the one of a single process.

Bits per byte = summed nats / (ln 2 x UTF-8 bytes of the scored targets): a figure that does not
depend on the vocabulary, so a character model and a BPE model can be compared. As in nanochat,
special tokens (``<|endoftext|>``) have no bytes and their nats are left out of it (they still count
in the loss). `tinylm eval` on a run, an artifact or a Hugging Face folder: :mod:`.eval_command`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shards import check_token_ids
from ..errors import TinyLMError
from ..tokenizer import Tokenizer
from . import runtime

Window = tuple[int, int, int]  # (segment, offset, n): x = segment[offset : offset+n], y = one further


def eval_windows(lengths: Sequence[int], block_size: int, max_tokens: int = 0) -> list[Window]:
    """The windows of segments (shards) of these lengths, in order, up to ``max_tokens`` targets (0 = all).

    ``eval_windows([10], 4) -> [(0, 0, 4), (0, 4, 4), (0, 8, 1)]``: targets 1..9, each once;
    ``eval_windows([10, 6], 4, max_tokens=6) -> [(0, 0, 4), (0, 4, 2)]``.
    """
    out: list[Window] = []
    left = max_tokens or math.inf
    for s, length in enumerate(lengths):
        for offset in range(0, length - 1, block_size):
            n = int(min(block_size, length - 1 - offset, left))
            if n <= 0:
                return out
            out.append((s, offset, n))
            left -= n
    return out


def batch_windows(windows: Sequence[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive windows of one length, up to ``batch_size`` per batch (a shorter tail window goes alone)."""
    batches: list[list[Window]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][2] == w[2]:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per scored token
    bpb: float  # bits per UTF-8 byte of the scored tokens (special tokens left out); nan without bytes
    tokens: int  # tokens scored
    bytes: int  # their UTF-8 bytes

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows a float past ~709

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.ppl, "bits_per_byte": self.bpb, "tokens": self.tokens,
                "bytes": self.bytes}


class Evaluator:
    """The fixed windows over ``segments`` (a split's shards, or a text's tokens) and this process's share.

    Batches go to processes in turn (batch i to rank i mod world_size); every process runs the same
    number of forward passes, the last ones on a spare batch whose result is dropped, because FSDP
    gathers the weights in every forward and each process must take part.
    """

    def __init__(self, segments: Sequence[np.ndarray], block_size: int, batch_size: int, token_bytes: Sequence[int],
                 *, max_tokens: int = 0, rank: int = 0, world_size: int = 1):
        self.segments = segments
        self.windows = eval_windows([len(s) for s in segments], block_size, max_tokens)
        self.batches = batch_windows(self.windows, batch_size)
        self.mine = self.batches[rank::world_size]
        self.passes = -(-len(self.batches) // world_size)  # forward passes per process
        self.token_bytes = torch.tensor(token_bytes, dtype=torch.int64)
        self.tokens = sum(n for *_, n in self.windows)
        self.source = "the text to score"  # what the segments are, for errors (for_split: the split)

    @classmethod
    def for_split(cls, data_dir: str | Path, split: str, block_size: int, batch_size: int, tok: Tokenizer,
                  **kw) -> Evaluator:
        """The evaluator of a prepared split (``val`` or ``train``); ``kw`` as for the constructor."""
        from ..data.shards import load_meta, read_shard
        meta = load_meta(data_dir)
        segments = [read_shard(Path(data_dir) / name) for name in meta[split]["shards"]]
        ev = cls(segments, block_size, batch_size, tok.token_byte_lengths(), **kw)
        ev.source = f"the {split} split of {data_dir}"
        if not ev.windows:
            raise TinyLMError(f"the {split} split of {data_dir} has {meta[split]['tokens']} token(s): nothing to "
                              f"evaluate (it needs 2); use a larger corpus or change --data.val_fraction")
        return ev

    def _gather(self, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch[0][2]
        rows = np.stack([self.segments[s][o:o + n + 1] for s, o, _ in batch]).astype(np.int64)
        check_token_ids(rows, len(self.token_bytes), self.source)
        buf = torch.from_numpy(rows)  # (B, n + 1)
        return buf[:, :-1], buf[:, 1:]

    def run(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
            d: runtime.Dist | None = None, passes: int | None = None) -> EvalResult:
        """Score the windows (all processes call it; ``passes`` limits each to its first few batches)."""
        d = d or runtime.Dist()
        table = self.token_bytes.to(device)
        # nats, tokens, nats of the tokens with bytes, bytes; float64 adds 1M terms without losing digits
        sums = torch.zeros(4, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        was_training = model.training
        model.eval()
        with torch.no_grad(), runtime.autocast_context(precision, device):
            for i in range(self.passes if passes is None else min(passes, self.passes)):
                mine = i < len(self.mine)
                x, y = self._gather(self.mine[i] if mine else self.batches[0])
                x, y = x.to(device), y.to(device)
                logits, _ = model(x)
                if not mine:
                    continue
                nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")  # (B*n,)
                nbytes = table[y.flatten()]
                sums[0] += nats.sum()
                sums[1] += nats.numel()
                sums[2] += (nats * (nbytes > 0)).sum()
                sums[3] += nbytes.sum()
        model.train(was_training)
        nats, tokens, byte_nats, nbytes = runtime.all_sum(sums, d).tolist()
        return EvalResult(nats / tokens if tokens else math.nan,
                          byte_nats / (math.log(2) * nbytes) if nbytes else math.nan, int(tokens), int(nbytes))
