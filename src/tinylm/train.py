"""The training loop: accumulation, precision, clipping, eval, logging, checkpoints, DDP.

One function, :func:`train`, used by the CLI, the tests and the benchmarks alike. Run it under
``torchrun --nproc_per_node N -m tinylm train ...`` for DistributedDataParallel (gloo on CPU,
nccl on GPU): each process reads its own slice of every global batch, gradients are
synchronized only on the last micro-step, and only rank 0 logs and saves.
"""
from __future__ import annotations

import contextlib
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
from .config import Config, grad_accum_steps, micro_batch_size, to_toml, validate
from .data import BatchLoader, TokenWindows, ensure_prepared, eval_batches, load_data_tokenizer
from .errors import TinyLMError
from .fileio import write_text_atomic
from .generate import sample_text
from .model import GPT
from .optim import build_optimizer, lr_at
from .tracking import ConsoleSink, JSONLSink, Tracker


# --------------------------------------------------------------------------- device and precision

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyLMError(f"--train.device {name}: no CUDA device is available; use --train.device cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32 (measured: 4x slower on an AVX512 Xeon without AVX512-BF16)."""
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


def _prepare_run_dir(cfg: Config, resume: bool) -> Path | None:
    """Create the run folder, or find the checkpoint to resume from. Returns that checkpoint."""
    run_dir = cfg.run_dir
    found = ckpt.find_checkpoint(run_dir / "checkpoints") if run_dir.exists() else None
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise TinyLMError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                          f"or choose another --run.name")
    # --resume on a run that died before its first checkpoint starts it again from step 0
    run_dir.mkdir(parents=True, exist_ok=True)
    return found if resume else None


def evaluate(model, batches, precision: str, device: torch.device, d: Dist) -> float:
    """Mean loss over the fixed validation batches (averaged over processes)."""
    model.eval()
    total, n = torch.zeros((), device=device), 0
    with torch.no_grad(), autocast_context(precision, device):
        for x, y in batches:
            _, loss = model(x.to(device), y.to(device))
            total += loss.float()
            n += 1
    model.train()
    return float(_all_mean(total / max(n, 1), d))


def train(cfg: Config, *, resume: bool = False, log=print) -> TrainResult:
    """Train ``cfg`` to ``train.max_steps`` (or until SIGINT/SIGTERM), saving to ``cfg.run_dir``."""
    d = init_distributed(cfg.train.device)
    validate(cfg, d.world_size)
    if not d.is_main:
        log = lambda *a, **k: None  # noqa: E731 - only rank 0 speaks
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, d.local_rank)
    precision = resolve_precision(cfg.train.precision, device)

    # data first: the model's vocab size comes from it
    if d.is_main:
        meta = ensure_prepared(cfg.data, progress=cfg.run.progress, log=log)
    if d.world_size > 1:
        dist.barrier()
    meta = ensure_prepared(cfg.data, progress=False, log=log) if not d.is_main else meta
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = meta["vocab_size"]
    elif cfg.model.vocab_size < meta["vocab_size"]:
        raise TinyLMError(f"--model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{meta['vocab_size']} ids; use 0 to take it from the data")
    tok = load_data_tokenizer(cfg.data.dir)

    resume_from = None
    if d.is_main:
        resume_from = _prepare_run_dir(cfg, resume)
    if d.world_size > 1:
        box = [str(resume_from) if resume_from else None]
        dist.broadcast_object_list(box, src=0)
        resume_from = Path(box[0]) if box[0] else None
    run_dir = cfg.run_dir

    seed_everything(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    micro = micro_batch_size(cfg, d.world_size)
    accum = grad_accum_steps(cfg, d.world_size)
    train_windows = TokenWindows(cfg.data.dir, "train", cfg.model.block_size)
    val_windows = TokenWindows(cfg.data.dir, "val", cfg.model.block_size)
    loader = BatchLoader(train_windows, micro, mode=cfg.data.sampling, seed=cfg.train.seed,
                         rank=d.rank, world_size=d.world_size, device=device)
    val_set = list(eval_batches(val_windows, micro, cfg.train.eval_batches, rank=d.rank,
                                world_size=d.world_size))

    start_step, tokens_seen, best_val = 0, 0, math.inf
    if resume_from is not None:
        saved_cfg = ckpt.checkpoint_config(resume_from)
        ckpt.check_compatible(saved_cfg, cfg, resume_from)
        model.load_state_dict(ckpt.load_part(resume_from, "model", device))
        optimizer.load_state_dict(ckpt.load_part(resume_from, "optimizer", device))
        state = ckpt.load_part(resume_from, "trainer")
        loader.load_state_dict(state["loader"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step, tokens_seen, best_val = state["step"], state["tokens_seen"], state["best_val_loss"]
        log(f"resumed from {resume_from} at step {start_step}")

    raw_model = model
    if cfg.train.compile:
        model = torch.compile(model)
    if d.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None)

    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    if d.is_main:
        write_text_atomic(run_dir / "config.toml", to_toml(cfg))
        n_params = raw_model.num_params()
        log(f"model: {n_params / 1e6:.2f}M parameters ({raw_model.num_params(non_embedding=True) / 1e6:.2f}M "
            f"non-embedding), {raw_model.flops_per_token() / 1e6:.1f} MFLOP/token; device {device}, "
            f"precision {precision}, {d.world_size} process(es), micro-batch {micro} x {accum} accumulation")
        if start_step == 0:
            init_loss = evaluate(raw_model, val_set[:1], precision, device, Dist())
            log(f"initial val loss {init_loss:.4f} (ln(vocab) = {math.log(cfg.model.vocab_size):.4f})")
    tracker = Tracker([JSONLSink(run_dir / "metrics.jsonl"),
                       ConsoleSink(cfg.train.max_steps, start_step, cfg.run.progress,
                                   plain_every=0 if cfg.train.eval_interval else 10 * cfg.train.log_interval)]) if d.is_main else None

    def save(step: int, val_loss: float | None) -> None:
        nonlocal best_val
        is_best = val_loss is not None and val_loss < best_val
        best_val = min(best_val, val_loss) if val_loss is not None else best_val
        if not d.is_main:
            return
        trainer_state = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val,
                         "loader": loader.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state()}
        ckpt.save_checkpoint(run_dir / "checkpoints", step,
                             {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                              "trainer": trainer_state},
                             {"tokens_seen": tokens_seen, "val_loss": val_loss, "best_val_loss": best_val,
                              "config": cfg.to_dict(), "data_meta": meta},
                             is_best=is_best or not (run_dir / "checkpoints" / "best").exists())

    def eval_and_save(step: int) -> float:
        val_loss = evaluate(model, val_set, precision, device, d)
        save(step, val_loss)  # saved before sampling, which could fail
        if d.is_main:
            tracker.log({"step": step, "val_loss": val_loss, "tokens_seen": tokens_seen})
            text = sample_text(raw_model, tok, cfg.sample.prompt, cfg.sample.max_new_tokens,
                               temperature=cfg.sample.temperature, top_k=cfg.sample.top_k,
                               seed=cfg.train.seed, device=device)
            with open(run_dir / "samples.md", "a", encoding="utf-8") as f:
                f.write(f"## step {step} (val loss {val_loss:.4f})\n\n```\n{text}\n```\n\n")
        return val_loss

    model.train()
    step, loss_val, val_loss, stopped = start_step, math.nan, math.nan, False
    t_start = time.perf_counter()
    window_t, window_tokens, data_s, compute_s = time.perf_counter(), 0, 0.0, 0.0
    with _StopFlag() as stop:
        try:
            while step < cfg.train.max_steps:
                lr = lr_at(step, cfg.optim, cfg.train.max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for micro_step in range(accum):
                    t0 = time.perf_counter()
                    x, y = loader.next_batch()
                    t1 = time.perf_counter()
                    data_s += t1 - t0
                    last = micro_step == accum - 1
                    # DDP: all-reduce gradients only once, on the last micro-step
                    sync = contextlib.nullcontext() if last or d.world_size == 1 else model.no_sync()
                    with sync:
                        with autocast_context(precision, device):
                            _, loss = model(x, y)
                        loss = loss / accum  # .backward() sums gradients over micro-steps: average them
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach()
                    compute_s += time.perf_counter() - t1
                t1 = time.perf_counter()
                scaler.unscale_(optimizer)
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                compute_s += time.perf_counter() - t1

                if step % cfg.train.log_interval == 0 or step == cfg.train.max_steps:
                    loss_val = float(_all_mean(loss_sum, d))
                    now = time.perf_counter()
                    steps_in_window = max(window_tokens // tokens_per_step, 1)
                    if d.is_main:
                        tracker.log({"step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm),
                                     "tokens_per_s": window_tokens / (now - window_t),
                                     "data_ms": 1000 * data_s / steps_in_window,
                                     "compute_ms": 1000 * compute_s / steps_in_window,
                                     "tokens_seen": tokens_seen, "elapsed_s": now - t_start})
                    window_t, window_tokens, data_s, compute_s = now, 0, 0.0, 0.0
                if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < cfg.train.max_steps:
                    val_loss = eval_and_save(step)
                    window_t = time.perf_counter()  # eval time is not training throughput
                if stop.requested:
                    stopped = True
                    break
            train_seconds = time.perf_counter() - t_start
            val_loss = eval_and_save(step)
            if stopped and d.is_main:
                log(f"\nstopped by signal at step {step}; checkpoint saved, continue with --resume")
        finally:
            if tracker is not None:
                tracker.close()
    if d.is_main:
        log(f"done: step {step}, train loss {loss_val:.4f}, val loss {val_loss:.4f} (best {best_val:.4f}), "
            f"{tokens_seen:,} tokens, {train_seconds:.0f}s; run folder {run_dir}")
    return TrainResult(run_dir, step, loss_val, val_loss, best_val, tokens_seen, train_seconds, stopped)
