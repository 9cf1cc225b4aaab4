"""Checkpoints: one directory per saved step, completed by an atomic rename.

    runs/<name>/checkpoints/
      step_000500/        model.pt  optimizer.pt  trainer.pt  meta.json
      last -> step_000500 (symlink, replaced atomically)
      best -> step_000250

A step directory is written under a temporary name, every file fsynced, then renamed: a crash
leaves either no directory or a complete one. Loading uses ``torch.load(weights_only=True)``,
which never executes pickled code.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from . import __version__
from .config import Config, from_dict
from .errors import TinyLMError
from .fileio import fsync_dir, write_text_atomic

META = "meta.json"
TENSOR_FILES = ("model.pt", "optimizer.pt", "trainer.pt")


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


def _point(root: Path, link: str, target: str) -> None:
    """Atomically make ``root/link`` a symlink to ``target`` (a sibling directory name)."""
    tmp = root / f".{link}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / link)


def save_checkpoint(root: Path, step: int, parts: dict[str, dict], meta: dict, *, keep_last: int = 1) -> Path:
    """Write ``parts`` ({"model": state, "optimizer": state, "trainer": state}) and ``meta`` as
    ``root/step_NNNNNN``, point ``last`` at it, and keep the newest ``keep_last`` step directories
    plus the one ``best`` points to. Returns the step directory."""
    root.mkdir(parents=True, exist_ok=True)
    name = _step_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, state in parts.items():
        with open(tmp / f"{key}.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    meta = {**meta, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": {"tinylm": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    write_text_atomic(tmp / META, json.dumps(meta, indent=2) + "\n")
    fsync_dir(tmp)
    final = root / name
    if final.exists():  # the same step saved again (e.g. the final save right after a periodic one)
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    _point(root, "last", name)
    fsync_dir(root)
    _prune(root, keep_last)
    return final


def record_eval(step_dir: Path, val_loss: float, *, is_best: bool, keep_last: int = 1) -> None:
    """Write a checkpoint's val loss into its meta.json, and point ``best`` at it if it is the best."""
    meta = read_meta(step_dir)
    meta["val_loss"] = val_loss
    if is_best:
        meta["best_val_loss"] = val_loss
    write_text_atomic(step_dir / META, json.dumps(meta, indent=2) + "\n")
    if is_best:
        _point(step_dir.parent, "best", step_dir.name)
        fsync_dir(step_dir.parent)
        _prune(step_dir.parent, keep_last)


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.name.startswith("step_") and p.is_dir()
                   and not p.is_symlink())
    keep = {p.name for p in steps[-keep_last:]}
    for link in ("last", "best"):
        if (root / link).is_symlink():
            keep.add(os.readlink(root / link))
    for p in steps:
        if p.name not in keep:
            shutil.rmtree(p)
    for p in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:  # leftovers of a killed save
        shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "last") -> Path | None:
    """A run folder, its checkpoints folder, or a step folder -> the step folder (None if none)."""
    path = Path(path)
    for candidate in (path, path / which, path / "checkpoints" / which):
        if (candidate / META).is_file():
            return candidate.resolve()
    return None


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    found = find_checkpoint(path, which)
    if found is None:
        if not Path(path).exists():
            raise TinyLMError(f"{path} does not exist; give a run folder (runs/<name>) or a checkpoint folder")
        raise TinyLMError(f"no checkpoint found in {path} (looked for {which}/{META} and "
                          f"checkpoints/{which}/{META}); has the run saved one yet?")
    return found


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / META).read_text(encoding="utf-8"))


def load_part(ckpt: Path, part: str, map_location: str | torch.device = "cpu") -> dict:
    """Load one of model / optimizer / trainer, refusing anything but tensors and plain data."""
    path = ckpt / f"{part}.pt"
    if not path.is_file():
        raise TinyLMError(f"checkpoint {ckpt} is missing {path.name}; it is incomplete or not a tinylm checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler refuses code objects; a truncated file fails too
        raise TinyLMError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def checkpoint_config(ckpt: Path) -> Config:
    return from_dict(read_meta(ckpt)["config"])


# keys that must agree between a checkpoint and the run that loads it
ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp", "mlp_ratio", "norm",
             "pos", "rope_base", "qk_norm", "tie_embeddings", "bias")


def check_compatible(saved: Config, current: Config, ckpt: Path) -> None:
    """Refuse a checkpoint whose architecture, tokenizer or optimizer differs, naming the field."""
    diffs = [f"--model.{k}: checkpoint {getattr(saved.model, k)!r}, this run {getattr(current.model, k)!r}"
             for k in ARCH_KEYS if getattr(saved.model, k) != getattr(current.model, k)]
    for k in ("tokenizer", "corpus"):
        if getattr(saved.data, k) != getattr(current.data, k):
            diffs.append(f"--data.{k}: checkpoint {getattr(saved.data, k)!r}, this run {getattr(current.data, k)!r}")
    if saved.optim.name != current.optim.name:  # the optimizer's saved state has another layout
        diffs.append(f"--optim.name: checkpoint {saved.optim.name!r}, this run {current.optim.name!r}")
    if diffs:
        raise TinyLMError(f"checkpoint {ckpt} was made by a different model/data/optimizer setup:\n  " + "\n  ".join(diffs)
                          + "\nresume with the same settings, or start a new run with another --run.name")


def export_safetensors(ckpt_dir: Path, out: Path) -> int:
    """Model weights alone as safetensors (a tied head is stored once, as wte.weight).

    Returns the number of tensors written; the file appears complete or not at all.
    """
    from safetensors.torch import save_file
    state = load_part(ckpt_dir, "model")
    cfg = checkpoint_config(ckpt_dir)
    if cfg.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    state = {k: v.contiguous() for k, v in state.items()}
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp), metadata={"format": "pt", "tinylm_config": json.dumps(cfg.to_dict())})
    os.replace(tmp, out)
    return len(state)
