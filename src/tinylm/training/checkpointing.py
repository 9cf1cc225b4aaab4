"""A training run's saved state: the loop's own state (one dataclass), and the object that locks the run folder,
finds the checkpoint to continue from, loads it and writes new ones.

The :class:`~tinylm.training.trainer.Trainer` owns one :class:`Checkpointer`; what a checkpoint holds is passed to
it explicitly (model, optimizer, loader, scaler, :class:`LoopState`), so this file reads on its own.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..errors import TinyLMError
from ..tokenizer import Tokenizer
from . import checkpoint as ckpt
from . import runtime
from .run_folder import RunFolder


@dataclass
class LoopState:
    """Where a run is: what the loop counts, saved in every checkpoint (trainer.pt) and restored as a unit."""
    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    elapsed_before: float = 0.0  # training seconds of earlier sessions of this run (for the time budget)


@dataclass
class Saved:
    """What a checkpoint holds besides the loop's state: the objects whose state it writes and reads back."""
    model: torch.nn.Module  # unwrapped (no DDP/FSDP wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: object  # a BatchLoader, or a prefetching one: state_dict() / load_state_dict()
    sharded: bool  # FSDP: the model and optimizer states are gathered from every process


class Checkpointer:
    """A run's folder and checkpoints: the lock, which checkpoint to continue from, loading it, writing one."""

    def __init__(self, cfg: Config):
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.folder = RunFolder(cfg.run_dir)  # locked by rank 0 in open(), until close()
        self.d: runtime.Dist | None = None
        self.log: Callable[..., None] = print
        self.about: dict = {}  # meta.json's description of the run: precision, data, device (see describe)
        self.tokenizer_bytes = b""  # the tokenizer every checkpoint keeps a copy of

    def open(self, d: runtime.Dist, resume: bool, log: Callable[..., None]) -> tuple[Path, dict | None] | None:
        """Lock the run folder (rank 0); under ``--resume``, the checkpoint every process continues from.

        Returns (checkpoint, its parts as rank 0 loaded them; None in the other processes), or None
        to start at step 0.
        """
        self.d, self.log = d, log
        found = None

        def open_folder() -> str | None:
            nonlocal found
            found = self.folder.open(self.cfg, resume, self.log)
            # before preparing data, which may take long: a checkpoint of other settings is refused now (a fine-tuned
            # run's model settings come from its checkpoint, see init_weights: restore checks it after they are
            # adopted)
            if found and not self.cfg.train.init_from:
                ckpt.check_compatible(ckpt.checkpoint_config(found[0]), self.cfg, found[0])
            return str(found[0]) if found else None

        path = runtime.on_main(open_folder, d)  # a refusal (e.g. the folder in use) reaches every process
        if path is None:
            return None
        return Path(path), found[1] if found else None

    def init_weights(self, resume_from: tuple[Path, dict | None] | None,
                     tok: Tokenizer) -> dict[str, torch.Tensor] | None:
        """``--train.init_from``: take the source's architecture; return its weights to start from (None for a
        random init, or on resume, whose checkpoint holds the weights and took the source's architecture)."""
        spec = self.cfg.train.init_from
        if not spec:
            return None
        from ..interop.pretrained import adopt_architecture, load_pretrained, start_from
        if resume_from is not None:
            adopt_architecture(self.cfg.model, ckpt.checkpoint_config(resume_from[0]).model)
            return None
        source = load_pretrained(spec)
        state = start_from(self.cfg, source, tok)
        self.log(f"init_from {source.source}: its architecture and weights, a fresh optimizer")
        return state

    def describe(self, *, precision: str, device: torch.device, data_meta: dict, tokenizer_bytes: bytes) -> None:
        """What every checkpoint's meta.json says about the run, and the tokenizer file it keeps."""
        self.about = {"precision": precision, "data_meta": data_meta, "device": runtime.device_name(device)}
        self.tokenizer_bytes = tokenizer_bytes

    def restore(self, path: Path, parts: dict[str, dict] | None, saved: Saved) -> LoopState:
        """Continue from checkpoint ``path`` (``parts``: its loaded model, optimizer and trainer states, or None to
        load them here): the weights, the optimizer's state, the loader's position, the scaler, every process's
        random streams; returns the loop's state."""
        parts = parts if parts is not None else ckpt.load_parts(path)
        ckpt.check_compatible(ckpt.checkpoint_config(path), self.cfg, path)
        state = parts["trainer"]
        if state["world_size"] != self.d.world_size:
            raise TinyLMError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{self.d.world_size}; resume with the same --nproc_per_node")
        self._load_weights(path, parts["model"], parts["optimizer"], saved)
        saved.loader.load_state_dict(state["loader"])
        saved.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]] * self.d.world_size  # older: one
        runtime.set_rng_state(rngs[self.d.rank])
        # trainer.pt is written before the evaluation at its step; meta.json learns that evaluation's result after
        best_meta = ckpt.read_meta(path).get("best_val_loss")
        loop = LoopState(state["step"], state["tokens_seen"],
                         min(state["best_val_loss"], math.inf if best_meta is None else best_meta), state["elapsed_s"])
        self.log(f"resumed from {path} at step {loop.step}")
        return loop

    @staticmethod
    def _load_weights(path: Path, model_state: dict, optim_state: dict, saved: Saved) -> None:
        """Model and optimizer state from a checkpoint; each group's hyperparameters from the config.

        Loading replaces each group's settings with the saved ones; the config is the source of truth
        for hyperparameters (peak LRs, decay, betas), the checkpoint for the optimizer's state.
        """
        settings = [{k: v for k, v in g.items() if k != "params"} for g in saved.optimizer.param_groups]
        if saved.sharded:
            runtime.load_full_state_dicts(saved.model, saved.optimizer, model_state, optim_state)
        else:
            ckpt.load_state(saved.model, model_state, path, "model")
            ckpt.load_state(saved.optimizer, optim_state, path, "optimizer")
        for group, own in zip(saved.optimizer.param_groups, settings, strict=True):
            group.update(own)

    def write(self, loop: LoopState, elapsed: float, saved: Saved, model_state: dict,
              optim_state: dict) -> Path | None:
        """Checkpoint ``loop.step`` (rank 0 writes; every process takes part in gathering the random streams).
        ``model_state`` / ``optim_state``: the full states (:func:`runtime.full_state_dicts`)."""
        rng = runtime.gather_to_main(runtime.rng_state(), self.d)  # each process's: each draws its own dropout
        if not self.d.is_main:
            return None
        trainer_state = {"step": loop.step, "tokens_seen": loop.tokens_seen, "best_val_loss": loop.best_val,
                         "elapsed_s": elapsed, "world_size": self.d.world_size, "loader": saved.loader.state_dict(),
                         "scaler": saved.scaler.state_dict(), "rng": rng}
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", loop.step,
            {"model": model_state, "optimizer": optim_state, "trainer": trainer_state},
            {"tokens_seen": loop.tokens_seen, "val_loss": None, "best_val_loss": loop.best_val,
             "precision": self.about["precision"], "train_seconds": elapsed, "config": self.cfg.to_dict(),
             "data_meta": self.about["data_meta"], "device": self.about["device"]},
            files={ckpt.TOKENIZER: self.tokenizer_bytes}, keep_last=self.cfg.train.keep_last)

    def close(self) -> None:
        """Unlock the run folder (the OS does it if the process dies)."""
        self.folder.close()

    def discard(self) -> None:
        """Setup failed: unlock, and remove the folder if this run made it and wrote nothing in it."""
        self.folder.discard()
