"""A training run's saved state: resuming a Trainer from its run folder, and writing its checkpoints.

:class:`Checkpointing` is mixed into :class:`tinylm.train.Trainer`; its methods read and set the
trainer's attributes (annotated below), so the loop in ``train.py`` stays about training.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import runtime
from .config import Config
from .data import BatchLoader
from .errors import TinyLMError
from .model import GPT
from .run_folder import RunFolder
from .tokenizer import Tokenizer


class Checkpointing:
    """The Trainer's run folder, resume and save: which checkpoint to continue from, loading it, writing one."""

    cfg: Config
    d: runtime.Dist
    log: Callable[..., None]
    folder: RunFolder
    run_dir: Path
    device: torch.device
    precision: str
    sharded: bool
    raw_model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: BatchLoader
    tok: Tokenizer
    meta: dict
    tokenizer_bytes: bytes
    step: int
    tokens_seen: int
    best_val: float
    elapsed_before: float

    def _open_run_dir(self, resume: bool) -> tuple[Path, dict[str, dict] | None] | None:
        """Lock the run folder (rank 0); under ``--resume``, the checkpoint every process continues from.

        Returns (checkpoint, its parts as rank 0 loaded them; None in the other processes), or None
        to start at step 0.
        """
        found = None

        def open_folder() -> str | None:
            nonlocal found
            found = self.folder.open(self.cfg, resume, self.log)
            # before preparing data, which may take long: a checkpoint of other settings is refused now (a fine-tuned
            # run's model settings come from its checkpoint, see _init_from: _load checks it after they are adopted)
            if found and not self.cfg.train.init_from:
                ckpt.check_compatible(ckpt.checkpoint_config(found[0]), self.cfg, found[0])
            return str(found[0]) if found else None

        path = runtime.on_main(open_folder, self.d)  # a refusal (e.g. the folder in use) reaches every process
        if path is None:
            return None
        return Path(path), found[1] if found else None

    def _init_from(self, resume_from: tuple[Path, dict | None] | None) -> dict[str, torch.Tensor] | None:
        """``--train.init_from``: take the source's architecture; return its weights to start from (None for a
        random init, or on resume, whose checkpoint holds the weights and took the source's architecture)."""
        spec = self.cfg.train.init_from
        if not spec:
            return None
        from .interop.pretrained import adopt_architecture, load_pretrained, start_from
        if resume_from is not None:
            adopt_architecture(self.cfg.model, ckpt.checkpoint_config(resume_from[0]).model)
            return None
        source = load_pretrained(spec)
        state = start_from(self.cfg, source, self.tok)
        self.log(f"init_from {source.source}: its architecture and weights, a fresh optimizer")
        return state

    def _load(self, path: Path, parts: dict[str, dict]) -> None:
        """Continue from checkpoint ``path``; ``parts`` are its loaded model, optimizer and trainer states."""
        ckpt.check_compatible(ckpt.checkpoint_config(path), self.cfg, path)
        state = parts["trainer"]
        if state["world_size"] != self.d.world_size:
            raise TinyLMError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{self.d.world_size}; resume with the same --nproc_per_node")
        self._load_weights(path, parts["model"], parts["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]] * self.d.world_size  # older: one
        runtime.set_rng_state(rngs[self.d.rank])
        # trainer.pt is written before the evaluation at its step; meta.json learns that evaluation's result after
        best_meta = ckpt.read_meta(path).get("best_val_loss")
        self.best_val = min(state["best_val_loss"], math.inf if best_meta is None else best_meta)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.elapsed_before = state["elapsed_s"]
        self.log(f"resumed from {path} at step {self.step}")

    def _load_weights(self, path: Path, model_state: dict, optim_state: dict) -> None:
        """Model and optimizer state from a checkpoint; each group's hyperparameters from the config.

        Loading replaces each group's settings with the saved ones; the config is the source of truth
        for hyperparameters (peak LRs, decay, betas), the checkpoint for the optimizer's state.
        """
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if self.sharded:
            runtime.load_full_state_dicts(self.raw_model, self.optimizer, model_state, optim_state)
        else:
            ckpt.load_state(self.raw_model, model_state, path, "model")
            ckpt.load_state(self.optimizer, optim_state, path, "optimizer")
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)

    def save(self, elapsed: float) -> Path | None:
        """Checkpoint the current step (rank 0 writes). Written before evaluation, which could fail."""
        states = runtime.full_state_dicts(self.raw_model, self.optimizer, sharded=self.sharded)
        return self._write_checkpoint(*states, elapsed)

    def _write_checkpoint(self, model_state: dict, optim_state: dict, elapsed: float) -> Path | None:
        rng = runtime.gather_to_main(runtime.rng_state(), self.d)  # each process's: each draws its own dropout
        if not self.d.is_main:
            return None
        trainer_state = {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val,
                         "elapsed_s": elapsed, "world_size": self.d.world_size, "loader": self.loader.state_dict(),
                         "scaler": self.scaler.state_dict(), "rng": rng}
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.step,
            {"model": model_state, "optimizer": optim_state, "trainer": trainer_state},
            {"tokens_seen": self.tokens_seen, "val_loss": None, "best_val_loss": self.best_val,
             "precision": self.precision, "train_seconds": elapsed, "config": self.cfg.to_dict(),
             "data_meta": self.meta, "device": runtime.device_name(self.device)},
            files={ckpt.TOKENIZER: self.tokenizer_bytes}, keep_last=self.cfg.train.keep_last)
