"""The LR range test (Smith, 2017): from a fresh init, raise the LR every step and watch the loss.

    tinylm lr-find --config configs/tinyshakespeare-char.toml --steps 200

Each step uses the run's own :class:`~tinylm.training.trainer.Trainer` (same model, data, optimizer, groups,
precision) at an exponentially growing LR, in a scratch folder: the run's folder and checkpoints
are never touched. The loss first stalls (LR too small), then falls, then turns up and blows up;
the lowest point of the smoothed curve is the divergence point, and a good peak LR for a real run
is a few times smaller (:func:`lr_find_result`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..errors import TinyLMError
from ..fileio import Outputs, write_text_atomic
from ..plotting import pyplot, save_figure
from .trainer import Trainer


def lr_find(cfg: Config, *, start: float = 1e-5, end: float = 1.0, steps: int = 200,
            out: str | Path | None = None, divisor: float = 5.0, log: Callable[[str], None] = print) -> dict:
    """Run the range test for ``cfg``; write ``lr_find.json`` (+ ``lr_find.png``) to ``out``.

    ``start``/``end`` bound the main LR (``--optim.lr``); the other groups keep their ratio to it.
    ``out`` defaults to ``<run.dir>/<run.name>-lr-find``, beside the run folder, not in it.
    Returns the result dict (see :func:`lr_find_result`) plus the plot's path (None without matplotlib).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TinyLMError("lr-find runs in one process: start it with `tinylm lr-find`, not under torchrun")
    if not 0 < start < end:
        raise TinyLMError(f"lr-find needs 0 < --start < --end (got {start}, {end})")
    if steps < 10:
        raise TinyLMError(f"lr-find needs at least 10 steps to see a curve (got --steps {steps})")
    if not 0 < divisor < math.inf:
        raise TinyLMError(f"lr-find needs --divisor > 0 (got {divisor}): the suggested LR is the divergence LR "
                          f"divided by it; 4-10 is usual")
    out = Path(out) if out else cfg.run_dir.with_name(f"{cfg.run.name}-lr-find")
    files = Outputs([out / "lr_find.json", out / "lr_find.png"])  # a user's files are refused before the sweep
    scratch = copy.deepcopy(cfg)
    scratch.optim.warmup_steps = 0  # the sweep itself is the warmup
    scratch.train.max_steps = steps
    scratch.train.compile = False  # a few hundred steps: compiling would cost more than it saves
    scratch.train.nonfinite, scratch.train.max_skips = "skip", steps + 1  # a blow-up ends the test, not the process
    lrs = lr_sweep(start, end, steps)
    losses: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tinylm-lr-find-") as tmp:
        scratch.run.dir, scratch.run.name = tmp, "lr-find"
        trainer = Trainer(scratch, log=log)
        try:
            log(f"lr-find: {steps} steps, LR {start:g} -> {end:g} (exponential), fresh init, scratch folder")
            for lr in lrs:
                losses.append(float(trainer.train_step(lr / scratch.optim.lr)["loss"]))
                if diverged(smooth(losses)):
                    break
        finally:
            trainer.close()
    result = lr_find_result(lrs, losses, divisor=divisor)
    result.update(config=cfg.to_dict(), start=start, end=end, steps_planned=steps)
    earlier = (out / "lr_find.json").is_file()
    with files:
        result["png"] = str(out / "lr_find.png") if _plot(result, out / "lr_find.png") else None
        write_text_atomic(out / "lr_find.json", json.dumps(result, indent=1))
    log(f"lr-find: {len(losses)} steps; smoothed loss lowest ({result['min_loss']:.4f}) at LR "
        f"{result['divergence_lr']:.3g}{'' if result['diverged'] else ' (no blow-up before --end: raise it)'}; "
        f"suggested --optim.lr {result['suggested_lr']:.3g} (/{divisor:g}); wrote {out}"
        f"{' (replacing the earlier result there; --out DIR keeps both)' if earlier else ''}")
    return result


def _plot(r: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    n = len(r["smoothed"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(r["lrs"][:n], r["losses"][:n], color="0.75", lw=0.8, label="loss")
    ax.plot(r["lrs"][:n], r["smoothed"], color="C0", lw=1.8, label="smoothed")
    ax.axvline(r["divergence_lr"], color="C3", ls="--", label=f"divergence {r['divergence_lr']:.2g}")
    ax.axvline(r["suggested_lr"], color="C2", ls="--", label=f"suggested {r['suggested_lr']:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.set_ylim(top=min(max(r["losses"][:n]), 2 * r["min_loss"]) * 1.05)
    ax.legend()
    return save_figure(plt, fig, path)


# ----------------------------------------------------------------------------- the maths of the range test

def lr_sweep(start: float, end: float, steps: int) -> list[float]:
    """Exponentially spaced LRs from ``start`` to ``end``: ``lr_sweep(1e-4, 1, 5) -> [1e-4, 1e-3, ..., 1]``."""
    return [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the first value is the first loss, not beta x it)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** i))
    return out


def lr_find_result(lrs: list[float], losses: list[float], *, beta: float = 0.9, divisor: float = 5.0) -> dict:
    """Read an LR range test: the minimum of the smoothed loss, the divergence point, a suggested LR.

    The divergence point is the LR at which the smoothed loss is lowest: past it, the loss turns
    up. The suggestion is divergence / ``divisor`` (Smith's range test: divide by 4-10).
    ``diverged`` says whether the loss really blew up before the sweep ended (:func:`diverged`);
    if not, the sweep's end LR was too small to see the turn.
    """
    n = next((i for i, x in enumerate(losses) if not math.isfinite(x)), len(losses))
    smoothed = smooth(losses[:n], beta)
    if not smoothed:
        raise TinyLMError("the LR range test's first loss is not finite: lower its start LR (--start)")
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    return {"lrs": lrs[:len(losses)], "losses": losses, "smoothed": smoothed, "min_loss": smoothed[best],
            "divergence_lr": lrs[best], "suggested_lr": lrs[best] / divisor, "divisor": divisor,
            "diverged": n < len(losses) or diverged(smoothed)}


def diverged(smoothed: list[float], back: float = 0.25) -> bool:
    """True once the smoothed loss has climbed back ``back`` of the way from its lowest point to its start.

    (Or is not finite.) A language model's loss at a too-high LR rarely explodes to a multiple
    of its minimum: it settles near the unigram entropy, so "climbed back a quarter of what it
    had gained" is the signal. It only counts after the loss has fallen by 10% at all.
    """
    if not smoothed:
        return False
    if not math.isfinite(smoothed[-1]):
        return True
    first, low = smoothed[0], min(smoothed)
    return first - low > 0.1 * first and smoothed[-1] > low + back * (first - low)
