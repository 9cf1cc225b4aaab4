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
in the loss). Also here: the healthy-curve checks the trainer logs as events.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime
from .analysis.health import VAL_ABOVE_BEST
from .data.shards import check_token_ids
from .errors import TinyLMError
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .config import Config

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
        from .data import load_meta, read_shard
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


# --------------------------------------------------------------------------- healthy-curve checks

INIT_TOLERANCE = 0.10  # a fresh model's loss is within 10% of ln(vocab): it predicts every token about equally
UNIGRAM_TOLERANCE = 0.10  # val loss <= 1.1 x the unigram entropy: the model has learned the token frequencies
UNIGRAM_DEADLINE = 500  # steps by which a healthy run gets there ("a few hundred")
Event = dict  # {"event": name, "message": one line for people, **numbers named apart from the metrics'}


class CurveChecks:
    """The healthy-curve checks of one training session, each said as an event (metrics.jsonl, console).

    * ``initial_loss`` (step 0): within 10% of ln(vocab), the loss of a uniform guess, or the
      initialization is off.
    * ``unigram_entropy`` (evaluations, once): the val loss gets within 10% of the unigram entropy of
      the training tokens (meta.json's, what a model that ignores the context reaches) within
      :data:`UNIGRAM_DEADLINE` steps; said when it does, or at the first evaluation past the deadline.
    * ``overfitting`` (evaluations, once): the val loss more than :data:`~tinylm.analysis.health.VAL_ABOVE_BEST`
      above its best while the train loss (median of the last 5 logged) fell since that best evaluation.
    * ``loss_spike`` (every step): the train loss above ``spike_factor`` x the median of the last 50.

    ``said``: the once-only events earlier sessions of the run logged (a resumed run does not repeat them).
    """

    def __init__(self, vocab_size: int, unigram_entropy: float | None, spike_factor: float,
                 said: Collection[str] = ()):
        self.vocab_size, self.entropy, self.spike_factor = vocab_size, unigram_entropy, spike_factor
        self.unigram_said = unigram_entropy is None or "unigram_entropy" in said
        self.overfitting_said = "overfitting" in said
        self.best: tuple[float, float | None, int] | None = None  # (val loss, train loss, step) of the best evaluation
        self.recent: list[float] = []  # the last train losses

    def initial(self, loss: float) -> list[Event]:
        expected = math.log(self.vocab_size)
        ok = abs(loss - expected) <= INIT_TOLERANCE * expected
        message = (f"initial loss {loss:.4f}, within 10% of ln(vocab) = {expected:.4f}: a healthy start" if ok else
                   f"initial loss {loss:.4f} is not within 10% of ln(vocab) = {expected:.4f}: the initial predictions "
                   f"are far from uniform; check the initialization (output scale) and the data")
        return [{"event": "initial_loss", "message": message, "ok": ok, "initial_loss": loss}]

    def val(self, step: int, val_loss: float) -> list[Event]:
        return self._unigram(step, val_loss) + self._overfitting(step, val_loss)

    def _overfitting(self, step: int, val_loss: float) -> list[Event]:
        train = statistics.median(self.recent[-5:]) if self.recent else None
        if self.best is None or val_loss < self.best[0]:
            self.best = (val_loss, train, step)
            return []
        best, best_train, best_step = self.best
        rise = val_loss / best - 1
        if self.overfitting_said or train is None or best_train is None or rise <= VAL_ABOVE_BEST \
                or train >= best_train:
            return []
        self.overfitting_said = True
        message = (f"val loss {val_loss:.4f} is {rise:.1%} above its best {best:.4f} (step {best_step}) while the "
                   f"train loss fell {best_train:.4f} -> {train:.4f}: overfitting, the model learns the training "
                   f"text rather than the language; more data (a larger corpus), dropout (--model.dropout 0.1), or "
                   f"the best checkpoint (--checkpoint best) instead of the last")
        return [{"event": "overfitting", "message": message, "ok": False, "best_val_loss": best,
                 "best_step": best_step}]

    def _unigram(self, step: int, val_loss: float) -> list[Event]:
        if self.unigram_said:
            return []
        h = self.entropy
        if val_loss <= (1 + UNIGRAM_TOLERANCE) * h:
            ok, message = True, (f"val loss {val_loss:.4f} is at or below 1.1 x the unigram entropy {h:.4f} "
                                 f"nats/token at step {step}: the token frequencies are learned")
        elif step >= UNIGRAM_DEADLINE:
            ok, message = False, (f"val loss {val_loss:.4f} is still above 1.1 x the unigram entropy {h:.4f} "
                                  f"nats/token at step {step} (a healthy run gets there within {UNIGRAM_DEADLINE}); "
                                  f"check the learning rate (tinylm lr-find) and the data")
        else:
            return []
        self.unigram_said = True
        return [{"event": "unigram_entropy", "message": message, "ok": ok, "unigram_entropy": h}]

    def train(self, loss: float) -> list[Event]:
        events, k = [], self.spike_factor
        if k and len(self.recent) >= 20:
            median = sorted(self.recent)[len(self.recent) // 2]
            if loss > k * median:
                events.append({"event": "loss_spike", "message": f"loss spike {loss:.4f} > {k} x running median "
                               f"{median:.4f}", "loss": loss, "median": median})
        self.recent = [*self.recent, loss][-50:]
        return events


# --------------------------------------------------------------------------- tinylm eval

# tokens per forward pass when scoring a Hugging Face folder: its context may be long and its vocabulary
# large (GPT-2: 4 windows of 1024 -> 0.8 GB of fp32 logits)
HF_BATCH_TOKENS = 4096


def parse_tokens(text: str | None) -> int | None:
    """``--tokens``: "all" -> 0 (the whole split or text), "100000" or "1e5" -> 100000, None -> None (the default)."""
    if text is None or text == "all":
        return None if text is None else 0
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = -1.0
    if not (value >= 1 and value.is_integer()):
        raise TinyLMError(f"--tokens expects a positive whole number or all, got {text!r}")
    return int(value)


def _evaluator(step_dir: Path, cfg: Config, tok: Tokenizer, split: str, text: str | None, tokens: int | None,
               batch_size: int, d: runtime.Dist) -> tuple[Evaluator, str]:
    """The evaluator of ``text`` (a file) or of the run's ``split``, and a description of what it scores."""
    from .data import load_data_tokenizer
    from .data.prepare import encode_file
    kw = {"rank": d.rank, "world_size": d.world_size}
    if text is None:
        data_dir = cfg.data.dir
        if load_data_tokenizer(data_dir).to_text() != tok.to_text():
            raise TinyLMError(f"{data_dir} was prepared again with another tokenizer since {step_dir} was saved; "
                              f"evaluate a file with --text, or prepare {data_dir} again with the run's settings")
        max_tokens = cfg.train.eval_tokens if tokens is None else tokens
        ev = Evaluator.for_split(data_dir, split, cfg.model.block_size, batch_size, tok, max_tokens=max_tokens, **kw)
        return ev, f"the {split} split of {data_dir}"
    path = Path(text)
    if not path.is_file():
        raise TinyLMError(f"--text {text} is not a file; give a UTF-8 text file")
    try:
        ids = encode_file(path, tok, cfg.data)
    except TinyLMError as e:  # a character the run's vocabulary lacks, bytes that are not UTF-8
        raise TinyLMError(f"--text {text}: {e}") from None
    if len(ids) < 2:
        what = "is empty" if path.stat().st_size == 0 else f"holds {len(ids)} token(s) with the run's tokenizer"
        raise TinyLMError(f"--text {text} {what}: evaluation needs at least 2 tokens (one to predict from, one "
                          f"to predict); give a longer text")
    ev = Evaluator([ids], cfg.model.block_size, batch_size, tok.token_byte_lengths(), max_tokens=tokens or 0, **kw)
    return ev, str(path)


def evaluate_run(run: str | Path, *, checkpoint: str = "last", split: str | None = None, tokens: int | None = None,
                 text: str | None = None, batch_size: int | None = None, device: str | None = None,
                 context: int | None = None) -> dict | None:
    """`tinylm eval`: a checkpoint's loss, perplexity and bits per byte on its run's split or on a text file.

    ``run`` may be a quantized artifact (a file ``tinylm export --quantize`` wrote), scored on the split of the data
    folder its config names or on ``text``; or a Hugging Face GPT-2 or Llama folder (``tinylm export --format hf``
    writes one; transformers' ``save_pretrained`` too), scored on ``text`` with its own tokenizer: a model's bits per
    byte beside GPT-2's on the same file. ``tokens``: targets to score (0 = all; default the run's
    ``train.eval_tokens`` on a split, all of a text); ``batch_size``: windows per forward pass (default
    the run's micro-batch, or :data:`HF_BATCH_TOKENS` tokens' worth for a folder; the result does not
    depend on it); ``context``: windows of at most this many tokens (default the model's context: set it to
    compare models of different contexts on equal terms). Under torchrun the processes share the work. Returns
    the report on rank 0, else None.
    """
    from .checkpoint import checkpoint_config, load_for_inference, read_meta, resolve_checkpoint
    from .config import from_dict
    from .config_check import micro_batch_size
    from .interop.artifact import read_header
    from .interop.hf_import import config_for_eval, import_hf, imported_model, is_hf_folder
    if batch_size is not None and batch_size < 1:
        raise TinyLMError(f"--batch-size {batch_size} must be positive")
    if text is not None and split is not None:
        raise TinyLMError("give --split or --text, not both: --text scores a file instead of the run's split")
    folder = Path(run)
    hf = is_hf_folder(folder)
    quantized = folder.is_file()  # runs and checkpoints are folders; a file is an artifact (export --quantize)
    if quantized:
        header = read_header(folder)
        cfg = from_dict(header["config"])
    elif hf:
        if text is None or checkpoint != "last":
            raise TinyLMError(f"{run} is a Hugging Face model folder: it has neither a prepared split nor "
                              f"checkpoints; score a file with --text FILE")
        source = import_hf(str(folder))
        if source.tokenizer.eot_token is None:
            raise TinyLMError(f"the tokenizer of {run} has no <|endoftext|> token, which tinylm puts between the "
                              f"documents of --text; add it to the folder's tokenizer as a special token")
        cfg = config_for_eval(folder, source)
    else:
        step_dir = resolve_checkpoint(run, checkpoint)
        cfg = checkpoint_config(step_dir)
    if context is not None and not 1 <= context <= cfg.model.block_size:
        raise TinyLMError(f"--context {context}: give 1 to {cfg.model.block_size}, the model's context")
    device = device or cfg.train.device
    d = runtime.init_distributed(device)
    dev = runtime.resolve_device(device, d.local_rank, flag="--device")  # one GPU per process under torchrun
    if hf:
        path, model, tok, step = folder, imported_model(source, folder, dev), source.tokenizer, None
    else:
        path, cfg, model, tok = load_for_inference(folder if quantized else step_dir, checkpoint, device=str(dev))
        step = header["source"].get("step") if quantized else read_meta(path)["step"]
    if context is not None:
        cfg = replace(cfg, model=replace(cfg.model, block_size=context))
    batch_size = batch_size or (max(1, HF_BATCH_TOKENS // cfg.model.block_size) if hf
                                else micro_batch_size(cfg, d.world_size))
    ev, source_text = _evaluator(path, cfg, tok, split or "val", text, tokens, batch_size, d)
    # fp16 needs CUDA: a run trained in it is evaluated elsewhere in the best precision of that device; so is an
    # fp8 run anywhere (its checkpoint holds plain weights: FP8 was only how its training multiplied)
    other = cfg.train.precision == "fp8" or (cfg.train.precision == "fp16" and dev.type != "cuda")
    precision = runtime.resolve_precision("auto" if other else cfg.train.precision, dev)
    model.set_attention(runtime.broadcast_from_main(
        model.choose_attention(dev, runtime.compute_dtype(precision), batch_size), d))
    result = ev.run(model, dev, precision, d)
    if not d.is_main:
        return None
    return {"checkpoint": str(path), "step": step, "on": source_text, "context": cfg.model.block_size,
            **result.as_dict()}
