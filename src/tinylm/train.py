"""The training loop: accumulation, precision, clipping, eval, logging, checkpoints, DDP.

One function, :func:`train`, used by the CLI, the tests and the benchmarks alike. Run it under
``torchrun --nproc_per_node N -m tinylm train ...`` for DistributedDataParallel (gloo on CPU,
nccl on GPU): each process reads its own slice of every global batch, gradients are
synchronized only on the last micro-step, and only rank 0 logs and saves.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .accounting import ThroughputWindow, mfu, peak_flops, peak_memory_mb
from .config import Config, grad_accum_steps, micro_batch_size, parse_duration, to_toml, validate
from .data import BatchLoader, TokenWindows, ensure_prepared, eval_batches, load_data_tokenizer
from .errors import TinyLMError
from .fileio import write_failure, write_text_atomic
from .generate import sample_text
from .model import GPT
from .optim import build_optimizer, lr_scale, momentum_at, set_schedule
from .tracking import METRICS_FILE, ConsoleSink, JSONLSink, TensorBoardSink, Tracker, WandbSink


# --------------------------------------------------------------------------- device and precision

def resolve_device(name: str, local_rank: int = 0, flag: str = "--train.device") -> torch.device:
    """auto -> this process's CUDA device, else MPS, else the CPU; ``flag`` is the option named in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyLMError(f"{flag} {name}: no CUDA device is available; use {flag} cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32 (measured: 4x slower on an AVX512 Xeon without AVX512-BF16).

    ``TINYLM_CPU_BF16=1`` or ``0`` overrides the detection (what `auto` picks), e.g. to try on one
    machine what another kind of CPU would do.
    """
    forced = os.environ.get("TINYLM_CPU_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise TinyLMError(f"TINYLM_CPU_BF16={forced!r}: use 1 (treat this CPU as having native bf16), "
                          f"0 (as not having it), or unset it to detect")
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware is fast at it, else fp32. fp16 needs CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise TinyLMError("--train.precision fp16 needs CUDA (it relies on a gradient scaler and fast "
                          "fp16 kernels); on this device use bf16 or fp32")
    return name


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Dist(rank, local_rank, world)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= d.world_size
    return x


# --------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Every random stream a training step can touch, as tensors and plain data (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, rank: int, device: torch.device) -> GPT:
    """The model, initialized alike in every process (``train.seed``); then every random stream is
    reseeded with seed + rank, so that each DDP process draws its own dropout masks.

    (The batch loader has its own generator, the same in every process: they must agree on the
    global batch they share.)
    """
    seed_everything(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    seed_everything(cfg.train.seed + rank)
    return model


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    tokens_seen: int
    train_seconds: float
    stopped_early: bool


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to save and stop after the current step; a second
    Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread)
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_prompt(tok, prompt: str, data_dir: str) -> None:
    """Refuse a sample prompt the tokenizer cannot encode, naming the characters it lacks."""
    def encodes(text: str) -> bool:
        try:
            tok.encode(text)
            return True
        except TinyLMError:
            return False

    if not encodes(prompt):
        missing = [c for c in dict.fromkeys(prompt) if not encodes(c)]
        raise TinyLMError(f"--sample.prompt {prompt!r} has characters {missing!r} that the tokenizer of {data_dir} "
                          f"cannot encode; leave them out of --sample.prompt, or use --data.tokenizer bpe, "
                          f"which encodes any text")


def _prepare_run_dir(cfg: Config, resume: bool, log) -> tuple[ckpt.RunLock, tuple[Path, dict] | None]:
    """Create and lock the run folder; under ``--resume`` also load its newest readable checkpoint.

    ``--resume`` on a run that died before its first checkpoint starts it again from step 0.
    """
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        file = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), run_dir)
        raise TinyLMError(f"{file} is a file, not a folder; --run.dir {cfg.run.dir} --run.name {cfg.run.name} "
                          f"must name a folder: choose another --run.dir") from None
    except OSError as e:
        raise write_failure(e, run_dir) from None
    lock = ckpt.RunLock(run_dir)
    try:
        if not resume and any(p.name != ckpt.LOCK for p in run_dir.iterdir()):
            raise TinyLMError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                              f"or choose another --run.name")
        return lock, ckpt.load_latest(run_dir / "checkpoints", log) if resume else None
    except BaseException:
        lock.release()
        raise


def _wrap_distributed(model: torch.nn.Module, cfg: Config, d: Dist, device: torch.device) -> torch.nn.Module:
    if d.world_size == 1:
        return model
    if cfg.train.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:  # shard block by block, then the rest (embeddings, head)
            fully_shard(block)
        fully_shard(model)
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if device.type == "cuda" else None)


class Trainer:
    """One training run: set up from a config, then :meth:`run`.

    The pieces are methods so each can be read (and tested) on its own: :meth:`train_step`
    is one optimizer step with accumulation, :meth:`evaluate` the fixed validation set,
    :meth:`save` a checkpoint.
    """

    clock = staticmethod(time.perf_counter)  # the loop's seconds (time budget, tokens/s, ETA); tests replace it

    def __init__(self, cfg: Config, *, resume: bool = False, log=print):
        self._lock: ckpt.RunLock | None = None  # the run folder's, held by rank 0 until close()
        # the folders this start creates (the run folder first): a refused start removes them again
        self._new_dirs = list(itertools.takewhile(lambda p: not p.exists(), (cfg.run_dir, *cfg.run_dir.parents)))
        try:
            self._setup(cfg, resume, log)
        except BaseException:
            self.close()
            self._remove_new_dirs()
            raise

    def _remove_new_dirs(self) -> None:
        """Leave no trace of a start refused before training: its lock file, then each folder it
        made, as long as nothing else was written there."""
        try:
            if self._new_dirs:
                (self._new_dirs[0] / ckpt.LOCK).unlink(missing_ok=True)
            for folder in self._new_dirs:
                folder.rmdir()
        except OSError:  # not empty (something else was written), or never made: keep the rest
            pass

    def close(self) -> None:
        """Unlock the run folder (:meth:`run` does it when it ends; the OS does it if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _setup(self, cfg: Config, resume: bool, log) -> None:
        self.cfg = cfg
        self.d = d = init_distributed(cfg.train.device)
        validate(cfg, d.world_size)
        self.log = log if d.is_main else (lambda *a, **k: None)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device, d.local_rank)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.time_budget = parse_duration(cfg.train.time_budget)

        # the run folder before the data: locking it and loading a checkpoint are quick, preparing may not be
        found = None  # (checkpoint, its loaded parts), found by rank 0
        if d.is_main:
            self._lock, found = _prepare_run_dir(cfg, resume, self.log)
        resume_from = found[0] if found else None
        if d.world_size > 1:
            box = [str(resume_from) if resume_from else None]
            dist.broadcast_object_list(box, src=0)
            resume_from = Path(box[0]) if box[0] else None
        self.run_dir = cfg.run_dir

        # data first: the model's vocab size comes from it (rank 0 prepares, the others wait)
        if d.is_main:
            self.meta = ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=cfg.run.progress, log=self.log)
        if d.world_size > 1:
            dist.barrier()
        if not d.is_main:
            self.meta = ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=False, log=self.log)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.meta["vocab_size"]
        elif cfg.model.vocab_size < self.meta["vocab_size"]:
            raise TinyLMError(f"--model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{self.meta['vocab_size']} ids; use 0 to take it from the data")
        self.tok = load_data_tokenizer(cfg.data.dir)
        # every checkpoint keeps this copy: the data folder may be prepared again with another tokenizer
        self.tokenizer_bytes = (Path(cfg.data.dir) / self.meta["tokenizer_file"]).read_bytes()
        _check_prompt(self.tok, cfg.sample.prompt, cfg.data.dir)  # else the first evaluation fails, and each resume

        self.raw_model = build_model(cfg, d.rank, self.device)
        self.raw_model.activation_checkpointing = cfg.train.activation_checkpointing
        self.model = _wrap_distributed(self.raw_model, cfg, d, self.device)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.device.type,
                                         torch.bfloat16 if self.precision == "bf16" else torch.float32)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.micro = micro_batch_size(cfg, d.world_size)
        self.accum = grad_accum_steps(cfg, d.world_size)
        windows = TokenWindows(cfg.data.dir, "train", cfg.model.block_size)
        self.loader = BatchLoader(windows, self.micro, mode=cfg.data.sampling, seed=cfg.train.seed,
                                  rank=d.rank, world_size=d.world_size, device=self.device)
        self.val_set = list(eval_batches(TokenWindows(cfg.data.dir, "val", cfg.model.block_size), self.micro,
                                         cfg.train.eval_batches, rank=d.rank, world_size=d.world_size))
        self.step, self.tokens_seen, self.best_val = 0, 0, math.inf
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run (for the time budget)
        if resume_from is not None:
            self._load(resume_from, found[1] if found else ckpt.load_parts(resume_from))
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size
        self.recent_losses: list[float] = []  # for loss-spike detection
        self.skips_in_a_row = 0
        self.tracker: Tracker | None = None

    # ----------------------------------------------------------------- state

    def _load(self, path: Path, parts: dict[str, dict]) -> None:
        """Continue from checkpoint ``path``; ``parts`` are its loaded model, optimizer and trainer states."""
        ckpt.check_compatible(ckpt.checkpoint_config(path), self.cfg, path)
        state, model_state, optim_state = parts["trainer"], parts["model"], parts["optimizer"]
        if state["world_size"] != self.d.world_size:
            raise TinyLMError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{self.d.world_size}; resume with the same --nproc_per_node")
        # loading replaces each group's settings with the saved ones; the config is the source of
        # truth for hyperparameters (peak LRs, decay, betas), the checkpoint for the optimizer's state
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if self.cfg.train.fsdp and self.d.world_size > 1:  # full (unsharded) states -> this rank's shards
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.raw_model, model_state, options=opts)
            set_optimizer_state_dict(self.raw_model, self.optimizer, optim_state, options=opts)
        else:
            ckpt.load_state(self.raw_model, model_state, path, "model")
            ckpt.load_state(self.optimizer, optim_state, path, "optimizer")
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        self.loader.load_state_dict(state["loader"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]] * self.d.world_size  # older: one
        set_rng_state(rngs[self.d.rank])
        self.step, self.tokens_seen, self.best_val = state["step"], state["tokens_seen"], state["best_val_loss"]
        self.elapsed_before = state["elapsed_s"]
        self.log(f"resumed from {path} at step {self.step}")

    def _full_states(self) -> tuple[dict, dict]:
        """Model and optimizer state dicts, unsharded (every process must call this under FSDP)."""
        if self.cfg.train.fsdp and self.d.world_size > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (get_model_state_dict(self.raw_model, options=opts),
                    get_optimizer_state_dict(self.raw_model, self.optimizer, options=opts))
        return self.raw_model.state_dict(), self.optimizer.state_dict()

    def save(self, elapsed: float) -> Path | None:
        """Checkpoint the current step (rank 0 writes). Written before evaluation, which could fail."""
        return self._write_checkpoint(*self._full_states(), elapsed)

    def _write_checkpoint(self, model_state: dict, optim_state: dict, elapsed: float) -> Path | None:
        rng = [rng_state()]  # every process's streams (each draws its own dropout masks), gathered to rank 0
        if self.d.world_size > 1:
            mine, rng = rng[0], [None] * self.d.world_size if self.d.is_main else None
            dist.gather_object(mine, rng, dst=0)
        if not self.d.is_main:
            return None
        trainer_state = {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val,
                         "elapsed_s": elapsed, "world_size": self.d.world_size, "loader": self.loader.state_dict(),
                         "scaler": self.scaler.state_dict(), "rng": rng}
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.step,
            {"model": model_state, "optimizer": optim_state, "trainer": trainer_state},
            {"tokens_seen": self.tokens_seen, "val_loss": None, "best_val_loss": self.best_val,
             "config": self.cfg.to_dict(), "data_meta": self.meta},
            files={ckpt.TOKENIZER: self.tokenizer_bytes}, keep_last=self.cfg.train.keep_last)

    # ----------------------------------------------------------------- steps

    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (averaged over processes)."""
        model = self.model
        model.eval()
        total = torch.zeros((), device=self.device)
        with torch.no_grad(), autocast_context(self.precision, self.device):
            for x, y in self.val_set:
                _, loss = model(x.to(self.device), y.to(self.device))
                total += loss.float()
        model.train()
        return float(_all_mean(total / max(len(self.val_set), 1), self.d))

    def train_step(self, lr_scale: float) -> dict:
        """One optimizer step at ``lr_scale`` x each group's peak LR: accumulate gradients, clip, update (or skip).

        Returns the step's stats; ``loss`` and ``grad_norm`` are tensors (read them only when logging).
        """
        set_schedule(self.optimizer, lr_scale, momentum_at(self.step, self.cfg.optim))
        loss_sum = torch.zeros((), device=self.device)
        data_s = compute_s = 0.0
        for micro_step in range(self.accum):
            t0 = self.clock()
            x, y = self.loader.next_batch()
            t1 = self.clock()
            data_s += t1 - t0
            last = micro_step == self.accum - 1
            # DDP: all-reduce gradients only once, on the last micro-step
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with autocast_context(self.precision, self.device):
                    _, loss = self.model(x, y)
                loss = loss / self.accum  # .backward() sums gradients over micro-steps: average them
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
            compute_s += self.clock() - t1
        t1 = self.clock()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, the same value on every process
            grad_norm = grad_norm.full_tensor()
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss_sum)
        if self.d.world_size > 1:  # every process must take the same decision
            finite = _all_mean(finite.float(), self.d) == 1.0
        skipped = not bool(finite) and self.precision != "fp16"  # fp16: the GradScaler skips by itself
        if skipped:
            self._on_nonfinite(x, y, loss_sum, grad_norm)
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skips_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return {"loss": loss_sum, "grad_norm": grad_norm, "skipped": skipped, "data_s": data_s,
                "compute_s": compute_s + self.clock() - t1}

    def _on_nonfinite(self, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        step = self.step + 1
        if self.cfg.train.nonfinite == "halt":
            bad = [n for n, p in self.raw_model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            bundle = self.run_dir / f"nonfinite_step_{step:06d}"
            if self.d.is_main:
                bundle.mkdir(parents=True, exist_ok=True)
                torch.save({"x": x.cpu(), "y": y.cpu()}, bundle / "batch.pt")
                write_text_atomic(bundle / "report.json", json.dumps(
                    {"step": step, "loss": float(loss), "grad_norm": float(grad_norm),
                     "nonfinite_grads_in_order": bad, "config": self.cfg.to_dict()}, indent=2))
            raise TinyLMError(f"non-finite loss/gradient at step {step} (loss {float(loss)}, grad norm "
                              f"{float(grad_norm)}); first parameters with non-finite gradients: {bad[:5]}; "
                              f"batch and report saved in {bundle}. Lower --optim.lr, check the data, or use "
                              f"--train.nonfinite skip")
        self.skips_in_a_row += 1
        self.tracker_event(step, "nonfinite_skip", f"non-finite loss/gradient: update skipped "
                                                   f"({self.skips_in_a_row} in a row)")
        if self.skips_in_a_row >= self.cfg.train.max_skips:
            raise TinyLMError(f"{self.skips_in_a_row} non-finite steps in a row (up to step {step}); training "
                              f"has diverged: lower --optim.lr or --optim.warmup_steps, or resume from an "
                              f"earlier checkpoint")

    def tracker_event(self, step: int, event: str, message: str, **fields) -> None:
        if self.tracker is not None:
            self.tracker.log({"step": step, "event": event, "message": message, **fields})

    def _check_spike(self, loss: float) -> None:
        k = self.cfg.train.spike_factor
        if k and len(self.recent_losses) >= 20:
            median = sorted(self.recent_losses)[len(self.recent_losses) // 2]
            if loss > k * median:
                self.tracker_event(self.step, "loss_spike", f"loss spike {loss:.4f} > {k} x running median "
                                                            f"{median:.4f}", loss=loss, median=median)
        self.recent_losses = (self.recent_losses + [loss])[-50:]

    # ----------------------------------------------------------------- the run

    def _make_tracker(self) -> Tracker | None:
        if not self.d.is_main:
            return None
        cfg = self.cfg
        sinks = [JSONLSink(self.run_dir / METRICS_FILE),
                 ConsoleSink(cfg.train.max_steps, self.step, cfg.run.progress,
                             plain_every=0 if cfg.train.eval_interval else 10 * cfg.train.log_interval)]
        if cfg.run.tensorboard:
            sinks.append(TensorBoardSink(self.run_dir / "tb"))
        if cfg.run.wandb:
            sinks.append(WandbSink(cfg.run.wandb_project, cfg.run.name, cfg.to_dict(), self.run_dir))
        return Tracker(sinks)

    def _eval_point(self, elapsed: float) -> float:
        """Save, evaluate, mark the best checkpoint, write a sample."""
        model_state, optim_state = self._full_states()
        saved = self._write_checkpoint(model_state, optim_state, elapsed)
        val_loss = self.evaluate()
        self.best_val = min(self.best_val, val_loss)
        if self.d.is_main:
            ckpt.record_eval(saved, val_loss, is_best=val_loss <= self.best_val, keep_last=self.cfg.train.keep_last)
            self.tracker.log({"step": self.step, "val_loss": val_loss, "tokens_seen": self.tokens_seen})
            sampler = self.raw_model
            if self.cfg.train.fsdp and self.d.world_size > 1:  # sharded weights: sample from a full copy
                sampler = GPT(self.cfg.model).to(self.device)
                sampler.load_state_dict(model_state)
            text = sample_text(sampler, self.tok, self.cfg.sample, seed=self.cfg.train.seed)  # as `tinylm sample` does
            with open(self.run_dir / "samples.md", "a", encoding="utf-8") as f:
                f.write(f"## step {self.step} (val loss {val_loss:.4f})\n\n```\n{text}\n```\n\n")
        return val_loss

    def _describe(self) -> None:
        m, cfg = self.raw_model, self.cfg
        if self.d.is_main:
            try:
                write_text_atomic(self.run_dir / "config.toml", to_toml(cfg))
            except OSError as e:
                raise write_failure(e, self.run_dir / "config.toml") from None
        self.log(f"model: {m.num_params() / 1e6:.2f}M parameters ({m.num_params(non_embedding=True) / 1e6:.2f}M "
                 f"non-embedding), {m.flops_per_token() / 1e6:.1f} MFLOP/token; device {self.device}, precision "
                 f"{self.precision}, {self.d.world_size} process(es){' FSDP' if cfg.train.fsdp else ''}, "
                 f"micro-batch {self.micro} x {self.accum} accumulation")
        if self.step == 0:
            x, y = self.val_set[0]
            with torch.no_grad(), autocast_context(self.precision, self.device):
                init_loss = float(_all_mean(m(x.to(self.device), y.to(self.device))[1].float(), self.d))
            self.log(f"initial loss {init_loss:.4f} (ln(vocab) = {math.log(cfg.model.vocab_size):.4f})")

    def run(self) -> TrainResult:
        """Train to the end, then unlock the run folder."""
        try:
            if self.step >= self.cfg.train.max_steps:
                return self._already_done()
            return self._run()
        finally:
            self.close()

    def _already_done(self) -> TrainResult:
        """A resumed run with no steps left: say so and write nothing (no metrics, sample or checkpoint)."""
        max_steps = self.cfg.train.max_steps
        self.log(f"run {self.run_dir} is already at step {self.step} (--train.max_steps {max_steps}): nothing to "
                 f"do; to train further, resume with a higher --train.max_steps, e.g. --train.max_steps "
                 f"{2 * self.step}")
        return TrainResult(self.run_dir, self.step, math.nan, math.nan, self.best_val, self.tokens_seen,
                           self.elapsed_before, False)

    def _run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        self._describe()
        peak = peak_flops(self.device, self.precision)
        flops_per_token = self.raw_model.flops_per_token()
        self.tracker = self._make_tracker()
        stats: dict = {}
        val_loss, loss_val, stopped = math.nan, math.nan, False
        save_every = cfg.train.save_interval or cfg.train.eval_interval
        t_start = self.clock()
        window = ThroughputWindow(self.clock)

        def elapsed() -> float:
            return self.elapsed_before + self.clock() - t_start

        with _StopFlag() as stop:
            try:
                while self.step < cfg.train.max_steps:
                    time_frac = elapsed() / self.time_budget if self.time_budget else None
                    if time_frac is not None and time_frac >= 1.0:
                        self.log(f"\ntime budget {cfg.train.time_budget} reached at step {self.step}")
                        break
                    scale = lr_scale(self.step, cfg.optim, cfg.train.max_steps, time_frac)
                    first = self.step == 0 and cfg.train.compile
                    stats = self.train_step(scale)
                    if first:  # the first compiled step includes compilation: report it apart
                        self.tracker_event(self.step, "compiled", f"first step incl. torch.compile: "
                                           f"{stats['compute_s']:.1f}s", compile_s=stats["compute_s"])
                        window.restart()
                    else:
                        window.add(stats["data_s"], stats["compute_s"])
                    loss_now = float(stats["loss"])
                    if not stats["skipped"]:
                        self._check_spike(loss_now)
                    if self.step % cfg.train.log_interval == 0 or self.step == cfg.train.max_steps:
                        loss_val = float(_all_mean(stats["loss"].clone(), d))
                        seconds, n = max(window.seconds, 1e-9), max(window.steps, 1)
                        tps = window.steps * self.tokens_per_step / seconds  # global: tokens of every process
                        data_ms, compute_ms = 1000 * window.data_s / n, 1000 * window.compute_s / n
                        if self.tracker is not None:
                            remaining = (cfg.train.max_steps - self.step) * seconds / n
                            if self.time_budget:
                                remaining = min(remaining, self.time_budget - elapsed())
                            self.tracker.log({
                                "step": self.step, "loss": loss_val, "lr": scale * cfg.optim.lr, "grad_norm": float(stats["grad_norm"]),
                                "tokens_per_s": tps, "data_ms": data_ms, "compute_ms": compute_ms,
                                "mfu": mfu(tps, flops_per_token, peak, d.world_size),
                                "peak_mem_mb": peak_memory_mb(self.device), "tokens_seen": self.tokens_seen,
                                "elapsed_s": elapsed(), "eta_s": max(remaining, 0.0)})
                            if data_ms > 0.1 * compute_ms:
                                self.tracker_event(self.step, "slow_data", f"data loading takes {data_ms:.1f} ms "
                                                   f"per step, over 10% of compute ({compute_ms:.1f} ms)")
                        window.restart()
                    if self.step < cfg.train.max_steps:
                        with window.paused():  # evaluation and saving are not training throughput
                            if cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0:
                                val_loss = self._eval_point(elapsed())
                            elif save_every and self.step % save_every == 0:
                                self.save(elapsed())
                    if stop.requested:
                        stopped = True
                        break
                train_seconds = elapsed()
                val_loss = self._eval_point(train_seconds)
                if stopped:
                    self.log(f"\nstopped by signal at step {self.step}; checkpoint saved, continue with --resume")
            finally:
                if self.tracker is not None:
                    self.tracker.close()
        self.log(f"done: step {self.step}, train loss {loss_val:.4f}, val loss {val_loss:.4f} (best "
                 f"{self.best_val:.4f}), {self.tokens_seen:,} tokens, {train_seconds:.0f}s; run folder {self.run_dir}")
        return TrainResult(self.run_dir, self.step, loss_val, val_loss, self.best_val, self.tokens_seen,
                           train_seconds, stopped)


def train(cfg: Config, *, resume: bool = False, log=print) -> TrainResult:
    """Train ``cfg`` to ``train.max_steps`` (or the time budget, or SIGINT/SIGTERM), saving to ``cfg.run_dir``."""
    return Trainer(cfg, resume=resume, log=log).run()
