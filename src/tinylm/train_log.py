"""What a training run tells: its setup line, each logged step's metrics, events, and samples.md.

:class:`Reporting` is mixed into :class:`tinylm.train.Trainer`; its methods read the trainer's
attributes (annotated below). The tracker it writes to is :mod:`tinylm.tracking`'s.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from . import runtime
from .accounting import ThroughputWindow, describe_peak, peak_memory_mb
from .config import Config, to_toml
from .fileio import append_text, write_failure, write_text_atomic
from .generate import sample_text
from .model import GPT
from .tokenizer import Tokenizer
from .tracking import Tracker


class Reporting:
    """The Trainer's logging: the setup line and config.toml, step metrics with throughput and ETA, events, samples."""

    cfg: Config
    d: runtime.Dist
    log: Callable[..., None]
    run_dir: Path
    device: torch.device
    precision: str
    sharded: bool
    micro: int
    accum: int
    attention: str
    raw_model: GPT
    optimizer: torch.optim.Optimizer
    tok: Tokenizer
    tracker: Tracker | None
    window: ThroughputWindow
    peak: float | None
    step: int
    tokens_seen: int
    tokens_per_step: int
    time_budget: float | None
    train_loss: float
    _elapsed: Callable[[], float]  # the Trainer's: training seconds so far

    def tracker_event(self, step: int, event: str, message: str, **fields) -> None:
        if self.tracker is not None:
            self.tracker.log({"step": step, "event": event, "message": message, **fields})

    def _status(self, doing: str) -> None:
        """Say on the console what the run is doing at this step (saving, evaluating, ...) until the next record."""
        if self.tracker is not None:
            self.tracker.status(f"step {self.step}: {doing}")

    def _log_events(self, step: int, events: list[dict]) -> None:
        for e in events:
            self.tracker_event(step, **e)

    def _write_sample(self, model_state: dict, val_loss: float) -> None:
        """Append to samples.md what `tinylm sample` would give from this step's checkpoint."""
        sampler = self.raw_model
        if self.sharded:  # sharded weights: sample from a full copy
            sampler = GPT(self.cfg.model).to(self.device)
            sampler.load_state_dict(model_state)
        text = sample_text(sampler, self.tok, self.cfg.sample, seed=self.cfg.train.seed)
        entry = f"## step {self.step} (val loss {val_loss:.4f})\n\n```\n{text}\n```\n\n"
        append_text(self.run_dir / "samples.md", entry)

    def _describe(self) -> None:
        """Write config.toml; log the model and the setup."""
        m, cfg = self.raw_model, self.cfg
        if self.d.is_main:
            try:
                write_text_atomic(self.run_dir / "config.toml", to_toml(cfg))
            except OSError as e:
                raise write_failure(e, self.run_dir / "config.toml") from None
        self.log(f"model: {m.num_params() / 1e6:.2f}M parameters ({m.num_params(non_embedding=True) / 1e6:.2f}M "
                 f"non-embedding), {m.flops_per_token() / 1e6:.1f} MFLOP/token; device {self.device}, precision "
                 f"{self.precision}, {self.d.world_size} process(es){' FSDP' if cfg.train.fsdp else ''}, "
                 f"micro-batch {self.micro} x {self.accum} accumulation, attention {self.attention}; "
                 f"{describe_peak(self.device, self.precision, self.peak)}")

    def _log_step(self, stats: dict, scale: float) -> None:
        """The loss averaged over processes; rank 0 logs it with the window's throughput. Starts a new window."""
        self.train_loss = float(runtime.all_mean(stats["loss"].clone(), self.d))
        if self.tracker is not None:
            speed = self.window.record(self.tokens_per_step, self.raw_model.flops_per_token(), self.peak,
                                       self.d.world_size)
            self.tracker.log({"step": self.step, "loss": self.train_loss, "lr": scale * self.cfg.optim.lr,
                              **{f"lr_{g['role']}": g["lr"] for g in self.optimizer.param_groups},
                              "grad_norm": float(stats["grad_norm"]), **speed,
                              "peak_mem_mb": peak_memory_mb(self.device), "tokens_seen": self.tokens_seen,
                              "elapsed_s": self._elapsed(), "eta_s": self._eta()})
            if speed["data_ms"] > 0.1 * speed["compute_ms"]:
                self.tracker_event(self.step, "slow_data", f"data loading takes {speed['data_ms']:.1f} ms per step, "
                                   f"over 10% of compute ({speed['compute_ms']:.1f} ms)")
        self.window.restart()

    def _eta(self) -> float:
        """Seconds left at the window's pace, or to the end of the time budget when that comes first."""
        remaining = self.window.eta(self.cfg.train.max_steps - self.step)
        if self.time_budget:
            remaining = min(remaining, self.time_budget - self._elapsed())
        return max(remaining, 0.0)
