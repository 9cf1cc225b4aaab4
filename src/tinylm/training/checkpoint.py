"""Checkpoints: one directory per saved step, completed by an atomic rename.

    runs/<name>/checkpoints/
      step_000500/        model.pt  optimizer.pt  trainer.pt  tokenizer.txt  meta.json
      last -> step_000500 (symlink, replaced atomically)
      best -> step_000250

A step directory is written under a temporary name, every file fsynced, then renamed: a crash
leaves either no directory or a complete one. Loading uses ``torch.load(weights_only=True)``,
which never executes pickled code. :func:`load_for_inference` is the one way to get a checkpoint's
model, config and tokenizer ready to generate from. The run folder around the checkpoints (its
lock, a folder of imported weights) is :mod:`tinylm.training.run_folder`'s.
"""
from __future__ import annotations

import json
import os
import pickle
import platform
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from ..config import Config, arch_keys, from_dict
from ..errors import TinyLMError
from ..fileio import fsync_dir, pid_alive, replace_dir, write_failure, write_text_atomic
from ..interop import artifact
from ..model.gpt import GPT
from ..tokenizer import Tokenizer, load_tokenizer
from ..version import __version__
from .runtime import resolve_device

META = "meta.json"
PARTS = ("model", "optimizer", "trainer")
TENSOR_FILES = tuple(f"{part}.pt" for part in PARTS)
TOKENIZER = "tokenizer.txt"  # the checkpoint's own copy: the data folder's may be prepared again later
WEIGHTS_ONLY = "weights_only"  # meta.json flag: model.pt alone, no training state (a model `tinylm import` made)


def _step_name(step: int) -> str:
    """``500 -> "step_000500"``; past 999,999 the name grows (``step_1000000``): order by :func:`step_of`."""
    return f"step_{step:06d}"


def step_of(step_dir: Path) -> int | None:
    """The step a step folder holds: ``step_000500 -> 500``; None for any other name."""
    m = re.fullmatch(r"step_(\d+)", step_dir.name)
    return int(m[1]) if m else None


def _point(root: Path, link: str, target: str) -> None:
    """Atomically make ``root/link`` a symlink to ``target`` (a sibling directory name)."""
    tmp = root / f".{link}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / link)


def save_checkpoint(root: Path, step: int, parts: dict[str, dict], meta: dict, *, files: dict[str, bytes] | None = None,
                    keep_last: int = 1) -> Path:
    """Write ``parts`` ({"model": state, "optimizer": state, "trainer": state}), ``files`` (name -> bytes,
    e.g. the tokenizer) and ``meta`` as ``root/step_NNNNNN``, point ``last`` at it, and keep the newest
    ``keep_last`` complete step directories plus the one ``best`` points to. Returns the step directory.

    A failed write (a full disk) removes the temporary folder and leaves every earlier checkpoint as it was.
    """
    name = _step_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    meta = {**meta, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": {"tinylm": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for key, state in parts.items():
            with open(tmp / f"{key}.pt", "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        for file_name, data in (files or {}).items():
            with open(tmp / file_name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        write_text_atomic(tmp / META, json.dumps(meta, indent=2) + "\n")
        fsync_dir(tmp)
    except (OSError, RuntimeError) as e:  # torch.save wraps a full disk in a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        last = (root / "last").resolve().name if (root / "last").exists() else None
        kept = f"the last checkpoint, {last}, is intact" if last else "no checkpoint was saved yet"
        raise write_failure(e, f"checkpoint {root / name}", then=f"continue with --resume ({kept})") from None
    final = root / name
    # the same step may be saved again (e.g. the final save right after a periodic one); the old
    # folder's name is one _prune knows to clean up after a crash
    replace_dir(tmp, final, old=root / f".old-{name}-{os.getpid()}")
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
    try:
        write_text_atomic(step_dir / META, json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise write_failure(e, step_dir / META, then="continue with --resume") from None
    if is_best:
        _point(step_dir.parent, "best", step_dir.name)
        fsync_dir(step_dir.parent)
        _prune(step_dir.parent, keep_last)


def step_dirs(root: Path) -> list[Path]:
    """The step folders under ``root`` (a run's checkpoints folder), oldest first (by step number, not by name:
    ``step_1000000`` comes after ``step_999999``)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) is not None and p.is_dir() and not p.is_symlink()),
                  key=step_of)


def _is_complete(step_dir: Path) -> bool:
    """A cheap check, without loading tensors: meta.json reads and no tensor file is missing or empty."""
    try:
        meta = read_meta(step_dir)
    except TinyLMError:
        return False
    files = TENSOR_FILES[:1] if meta.get(WEIGHTS_ONLY) else TENSOR_FILES
    return all((step_dir / f).is_file() and (step_dir / f).stat().st_size > 0 for f in files)


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints and those ``last`` and ``best`` point to.

    A damaged one is removed only when a complete one is newer: a damaged newest checkpoint is left
    for a person to look at (resume skips it, and a save of the same step replaces it). Leftovers of a
    killed save are removed only when they are this process's or their process is gone.
    """
    steps = step_dirs(root)
    complete = [p for p in steps if _is_complete(p)]
    keep = {p.name for p in complete[-keep_last:]}
    for link in ("last", "best"):
        if (root / link).is_symlink():
            keep.add(os.readlink(root / link))
    newest_complete = step_of(complete[-1]) if complete else -1
    for p in steps:
        if p.name not in keep and (p in complete or step_of(p) < newest_complete):
            shutil.rmtree(p)
    for p in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:
        pid = re.search(r"-(\d+)$", p.name)
        if pid and (int(pid.group(1)) == os.getpid() or not pid_alive(int(pid.group(1)))):
            shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "last") -> Path | None:
    """A run folder, its checkpoints folder, or a step folder -> the step folder (None if none)."""
    path = Path(path)
    for candidate in (path, path / which, path / "checkpoints" / which):
        if (candidate / META).is_file():
            return candidate.resolve()
    return None


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """:func:`find_checkpoint`, or an error that says what is there instead (nothing, a damaged checkpoint)."""
    found = find_checkpoint(path, which)
    if found is not None:
        return found
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise TinyLMError(f"{path} does not exist; give a run folder (runs/<name>) or a checkpoint folder")
    other = "use another checkpoint (--checkpoint best, or a step folder under checkpoints/)"
    for candidate in (path, path / which, path / "checkpoints" / which):
        if candidate.is_symlink() and not candidate.exists():
            raise TinyLMError(f"{candidate} points to {os.readlink(candidate)}, which is missing; {other}")
        if candidate.is_dir() and any((candidate / f).exists() for f in TENSOR_FILES):
            raise TinyLMError(f"checkpoint {candidate} has no {META}: it is incomplete (a save cut short, or "
                              f"files removed); {other}")
    raise TinyLMError(f"no checkpoint found in {path} (looked for {which}/{META} and "
                      f"checkpoints/{which}/{META}); has the run saved one yet?")


def _first_line(e: BaseException) -> str:
    """An exception's message on one line (torch's span several; some, like EOFError's, are empty)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:300] or type(e).__name__


class UnreadableCheckpoint(TinyLMError):
    """A checkpoint file the user may not read: not damage, so resume does not skip it (a later save of the same
    step would replace the intact files) and the message says what to fix."""

    def __init__(self, path: Path, e: OSError):
        super().__init__(f"cannot read {path}: {e.strerror}; give your user read access to it (chmod, chown): the "
                         f"checkpoint itself may be intact")


def read_meta(ckpt: Path) -> dict:
    path = ckpt / META
    if not path.is_file():
        raise TinyLMError(f"checkpoint {ckpt} has no {META}: it is incomplete (a save cut short, or files removed)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError as e:
        raise UnreadableCheckpoint(path, e) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise TinyLMError(f"checkpoint {ckpt}: {META} is corrupt ({_first_line(e)}); use another checkpoint") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "step" not in meta:
        raise TinyLMError(f"checkpoint {ckpt}: {META} lacks its step or config; use another checkpoint")
    return meta


def load_part(ckpt: Path, part: str, map_location: str | torch.device = "cpu") -> dict:
    """Load one of model / optimizer / trainer, refusing anything but tensors and plain data."""
    path = ckpt / f"{part}.pt"
    if not path.is_file():
        raise TinyLMError(f"checkpoint {ckpt} is missing {path.name}; it is incomplete or not a tinylm checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses code objects and unknown classes
        raise TinyLMError(f"cannot load {path}: {type(e).__name__}: {_first_line(e)}") from None
    except PermissionError as e:
        raise UnreadableCheckpoint(path, e) from None
    except Exception as e:  # EOFError, OSError, RuntimeError: an empty, truncated or corrupt file
        size = path.stat().st_size
        what = "is empty (0 bytes)" if size == 0 else f"is truncated or corrupt ({size:,} bytes: {_first_line(e)})"
        raise TinyLMError(f"cannot load {path}: the file {what}; the checkpoint is damaged, use another one") from None


def load_parts(ckpt: Path) -> dict[str, dict]:
    """model, optimizer and trainer states, on the CPU (``load_state_dict`` moves them to the device)."""
    return {part: load_part(ckpt, part) for part in PARTS}


def load_state(target: torch.nn.Module | torch.optim.Optimizer, state: dict, ckpt: Path, part: str) -> None:
    """``target.load_state_dict(state)``, a mismatch (tensors of another shape) said in one line."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise TinyLMError(f"checkpoint {ckpt}: {part}.pt does not fit the model its {META} describes "
                          f"({_first_line(e)}); its files come from different runs: use another checkpoint") from None


def _check_lost_checkpoints(root: Path, log: Callable[[str], None]) -> None:
    """A run with no checkpoint under ``root`` starts again at step 0 only when it never finished a save: its
    metrics.jsonl logged no step past its first save (from its config.toml), as for a run killed before then
    (said in the log). Steps logged past a save mean its checkpoints were deleted: refused, since a restart would
    discard those steps and write a second history into the same metrics."""
    from ..config import load_toml
    from .tracking import read_metrics
    run = root.parent
    trained = [r["step"] for r in read_metrics(run) if "loss" in r and isinstance(r.get("step"), int)]
    if not trained:
        return
    try:
        t = load_toml(run / "config.toml").train
        first_save = t.save_interval or t.eval_interval or t.max_steps  # saves: every save_interval, else each eval
    except TinyLMError:  # no readable config.toml: nothing tells when it saved
        first_save = None
    if first_save is not None and max(trained) > first_save:
        raise TinyLMError(f"{run} trained to step {max(trained)} (its metrics.jsonl), past its save at step "
                          f"{first_save}, but {root} holds no checkpoint: were they deleted? --resume would start "
                          f"again at step 0; restore {root}, or move {run} aside (or choose another --run.name) and "
                          f"train without --resume")
    log(f"resume: {run} has no checkpoint (it stopped at step {max(trained)}, before its first save): starting "
        f"again at step 0")


def load_latest(root: Path, log: Callable[[str], None] = print) -> tuple[Path, dict[str, dict]] | None:
    """The newest checkpoint under ``root`` that loads, with its parts; None when ``root`` holds none at all.

    A damaged newer one (meta.json missing or corrupt, a truncated .pt file, a dangling ``last``) is
    skipped and named in the log. When none loads this stops with an error instead of starting again
    from step 0, whose first save would prune the damaged ones.
    """
    last = root / "last"
    steps = step_dirs(root)
    if not steps and not last.is_symlink():
        _check_lost_checkpoints(root, log)
        return None
    if last.is_symlink() and not last.exists():
        log(f"resume: {last} points to {os.readlink(last)}, which is missing")
    damaged = []
    for path in reversed(steps):
        try:
            weights_only = read_meta(path).get(WEIGHTS_ONLY)
            parts = {} if weights_only else load_parts(path)
        except UnreadableCheckpoint:
            raise
        except TinyLMError as e:
            damaged.append(path.name)
            log(f"resume: skipping {path.name}: {e}")
            continue
        if weights_only:
            raise TinyLMError(f"{root.parent} holds imported weights alone, with no training state to resume; "
                              f"fine-tune them in a new run: --train.init_from {root.parent} --run.name NEW")
        if damaged:
            log(f"resume: {', '.join(damaged)} cannot be loaded; resuming from {path.name}, the newest that can")
        return path, parts
    raise TinyLMError(f"no checkpoint in {root} can be loaded ({', '.join(damaged) or 'none left'}); it is not "
                      f"safe to start again from step 0 here: move {root.parent} aside (or choose another "
                      f"--run.name) and train without --resume")


def checkpoint_config(ckpt: Path) -> Config:
    return from_dict(read_meta(ckpt)["config"])


def tokenizer_path(ckpt: Path) -> Path:
    """The checkpoint's own tokenizer file; checkpoints saved before there was one use their data folder's."""
    if (ckpt / TOKENIZER).is_file():
        return ckpt / TOKENIZER
    from ..data.shards import load_meta
    data_dir = Path(checkpoint_config(ckpt).data.dir)
    return data_dir / load_meta(data_dir)["tokenizer_file"]


def checkpoint_tokenizer(ckpt: Path) -> Tokenizer:
    """The tokenizer a checkpoint was trained with (not whatever its data folder holds now)."""
    return load_tokenizer(tokenizer_path(ckpt), fix="use another checkpoint (each holds its own tokenizer.txt)")


class Loaded(NamedTuple):
    """A checkpoint ready to generate from; unpacks as ``path, cfg, model, tok``."""
    path: Path  # the step folder, or the artifact file
    config: Config
    model: GPT  # its weights loaded, in eval mode, on the device
    tokenizer: Tokenizer  # the checkpoint's own


def load_for_inference(path: str | Path, which: str = "last", device: str | None = None) -> Loaded:
    """A run folder, its checkpoints folder, a step folder or a quantized artifact -> the model ready to generate
    from.

    ``which`` is last or best (in a run folder); ``device`` a torch device name or auto, by default
    the run's ``train.device``: ``load_for_inference("runs/shakespeare-char", device="cpu").model``.
    A file is an artifact (``tinylm export --quantize``), dequantized to fp32.
    """
    if Path(path).is_file():  # runs and checkpoints are folders
        if which != "last":
            raise TinyLMError(f"{path} is a quantized artifact: it holds one model; drop --checkpoint {which}")
        art = artifact.read(path)
        step_dir, cfg, state, tok = Path(path).resolve(), art.config, art.state, art.tokenizer
    else:
        step_dir = resolve_checkpoint(path, which)
        cfg, state, tok = checkpoint_config(step_dir), load_part(step_dir, "model"), checkpoint_tokenizer(step_dir)
    model = GPT(cfg.model)
    load_state(model, state, step_dir, "model")
    model.eval()
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:  # sampling would fail on NaN probabilities, eval report NaN: say why, and what to use instead
        raise TinyLMError(f"{step_dir} holds non-finite weights ({len(broken)} tensor(s), e.g. {broken[0]}): the run "
                          f"diverged before this save; use an earlier checkpoint (--checkpoint best, or a step folder "
                          f"under checkpoints/), or train again with a lower --optim.lr")
    dev = resolve_device(device or cfg.train.device, flag="--device")
    model.to(dev)
    model.choose_attention(dev, model.wte.weight.dtype, batch=1)  # for reading prompts, one at a time
    return Loaded(step_dir, cfg, model, tok)




def check_compatible(saved: Config, current: Config, ckpt: Path) -> None:
    """Refuse a checkpoint whose architecture, tokenizer or optimizer differs, naming the field.

    A ``current`` vocab size of 0 (not yet read from the data) is not compared: the trainer checks
    before preparing the data and again after."""
    keys = [k for k in arch_keys() if k != "vocab_size" or current.model.vocab_size]
    diffs = [f"--model.{k}: checkpoint {getattr(saved.model, k)!r}, this run {getattr(current.model, k)!r}"
             for k in keys if getattr(saved.model, k) != getattr(current.model, k)]
    for k in ("tokenizer", "corpus"):
        if getattr(saved.data, k) != getattr(current.data, k):
            diffs.append(f"--data.{k}: checkpoint {getattr(saved.data, k)!r}, this run {getattr(current.data, k)!r}")
    if saved.optim.name != current.optim.name:  # the optimizer's saved state has another layout
        diffs.append(f"--optim.name: checkpoint {saved.optim.name!r}, this run {current.optim.name!r}")
    if diffs:
        raise TinyLMError(f"checkpoint {ckpt} was made by a different model/data/optimizer setup:\n  "
                          + "\n  ".join(diffs)
                          + "\nresume with the same settings, or start a new run with another --run.name")
