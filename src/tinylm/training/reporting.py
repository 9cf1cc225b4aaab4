"""What a training run tells: its setup line and config.toml, each logged step's metrics with throughput and ETA,
events, the console's status, and samples.md.

The :class:`~tinylm.training.trainer.Trainer` owns one :class:`Reporter`; what it reports is passed to it. Only
rank 0 writes (the other processes get a Reporter without a tracker). The tracker it writes to is
:mod:`tinylm.training.tracking`'s.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import Config, to_toml
from ..fileio import append_text, write_failure, write_text_atomic
from ..generation.generate import sample_text
from ..model.gpt import GPT
from ..tokenizer import Tokenizer
from . import runtime
from .accounting import ThroughputWindow, describe_peak, peak_memory_mb
from .tracking import Tracker, build_tracker


class Reporter:
    """The run's voice: the setup line, step metrics with throughput and ETA, events, status, samples."""

    def __init__(self, cfg: Config, d: runtime.Dist, log: Callable[[str], None], clock: Callable[[], float]):
        self.cfg, self.d, self.log, self.run_dir = cfg, d, log, cfg.run_dir
        self.tracker: Tracker | None = None
        self.window = ThroughputWindow(clock)  # tokens/s and MFU between log lines, evaluation and saving left out
        self.device = torch.device("cpu")
        self.peak: float | None = None  # the device's peak FLOP/s at the run's precision, for MFU; None: unknown

    def start(self, step: int) -> None:
        """Open the metric sinks (rank 0), continuing metrics.jsonl at ``step``."""
        if self.d.is_main:
            self.tracker = build_tracker(self.cfg, self.run_dir, step, self.log)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def event(self, step: int, event: str, message: str, **fields) -> None:
        """A named event in metrics.jsonl and on the console (a spike, a skipped step, the time budget...)."""
        if self.tracker is not None:
            self.tracker.log({"step": step, "event": event, "message": message, **fields})

    def events(self, step: int, events: list[dict]) -> None:
        for e in events:
            self.event(step, **e)

    def status(self, step: int, doing: str) -> None:
        """Say on the console what the run is doing at this step (saving, evaluating, ...) until the next record."""
        if self.tracker is not None:
            self.tracker.status(f"step {step}: {doing}")

    def record(self, fields: dict) -> None:
        """One metrics line (rank 0)."""
        if self.tracker is not None:
            self.tracker.log(fields)

    def describe(self, model: GPT, device: torch.device, precision: str, peak: float | None, micro: int, accum: int,
                 attention: str) -> None:
        """Write config.toml; log the model and the setup (``peak``: the device's FLOP/s at this precision, for
        MFU)."""
        cfg, self.device, self.peak = self.cfg, device, peak
        if self.d.is_main:
            try:
                write_text_atomic(self.run_dir / "config.toml", to_toml(cfg))
            except OSError as e:
                raise write_failure(e, self.run_dir / "config.toml") from None
        m = model
        self.log(f"model: {m.num_params() / 1e6:.2f}M parameters ({m.num_params(non_embedding=True) / 1e6:.2f}M "
                 f"non-embedding), {m.flops_per_token() / 1e6:.1f} MFLOP/token; device {device}, precision "
                 f"{precision}, {self.d.world_size} process(es){' FSDP' if cfg.train.fsdp else ''}, "
                 f"micro-batch {micro} x {accum} accumulation, attention {attention}; "
                 f"{describe_peak(device, precision, self.peak)}")

    def log_step(self, step: int, stats: dict, lr_scale: float, model: GPT, optimizer: torch.optim.Optimizer,
                 tokens: tuple[int, int], elapsed: float, seconds_left: float | None) -> float:
        """The loss averaged over processes; rank 0 logs it with the window's throughput, then a new window starts.
        ``tokens``: (per step, seen so far); ``seconds_left``: of the time budget (None: no budget). Returns the
        averaged loss."""
        loss = float(runtime.all_mean(stats["loss"].clone(), self.d))
        if self.tracker is not None:
            per_step, seen = tokens
            speed = self.window.record(per_step, model.flops_per_token(), self.peak, self.d.world_size)
            eta = self.window.eta(self.cfg.train.max_steps - step)
            if seconds_left is not None:
                eta = min(eta, seconds_left)
            self.tracker.log({"step": step, "loss": loss, "lr": lr_scale * self.cfg.optim.lr,
                              **{f"lr_{g['role']}": g["lr"] for g in optimizer.param_groups},
                              "grad_norm": float(stats["grad_norm"]), **speed,
                              "peak_mem_mb": peak_memory_mb(self.device), "tokens_seen": seen,
                              "elapsed_s": elapsed, "eta_s": max(eta, 0.0)})
            if speed["data_ms"] > 0.1 * speed["compute_ms"]:
                self.event(step, "slow_data", f"data loading takes {speed['data_ms']:.1f} ms per step, "
                           f"over 10% of compute ({speed['compute_ms']:.1f} ms)")
        self.window.restart()
        return loss

    def write_sample(self, model: GPT, tok: Tokenizer, step: int, val_loss: float,
                     full_state: dict | None = None) -> None:
        """Append to samples.md what `tinylm sample` would give from this step's checkpoint (``full_state``: with
        sharded weights, sample from a full copy built from it)."""
        if full_state is not None:
            model = GPT(self.cfg.model).to(self.device)
            model.load_state_dict(full_state)
        text = sample_text(model, tok, self.cfg.sample, seed=self.cfg.train.seed)
        append_text(self.run_dir / "samples.md", f"## step {step} (val loss {val_loss:.4f})\n\n```\n{text}\n```\n\n")
