"""tinylm profile: where a training step's time goes, component by component, on the real model and loop.

    tinylm profile --config configs/tinyshakespeare-char.toml [--steps 5] [--out DIR]

Runs the config's own :class:`~tinylm.train.Trainer` for one warm-up step and ``steps`` profiled steps
in a scratch folder, under ``torch.profiler`` with the :func:`~tinylm.model.label` ranges placed in
the model (embedding, norms, attention's QKV projection / kernel / output projection, MLP, head +
loss) and in the loop (data, forward, backward, optimizer). Each forward component's time is shown
beside its share of the model's FLOPs (:meth:`~tinylm.model.GPT.flops_by_component`): where the
two differ, that component runs below the machine's matmul speed. Writes profile.md, profile.json
and (with matplotlib) profile.png.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from .accounting import peak_memory_mb
from .config import Config
from .errors import TinyLMError
from .fileio import write_text_atomic
from .model import profile_labels
from .plotting import pyplot, save_figure
from .train import Trainer

# forward components (their labels in model.py) and their names in the table
FORWARD = {"embedding": "token + position embedding", "norm": "norms", "attn.qkv": "attention: QKV projection",
           "attn.kernel": "attention: kernel", "attn.proj": "attention: output projection", "mlp": "MLP",
           "head+loss": "head + loss"}
LOOP = {"backward": "backward", "optimizer": "optimizer step (clip + update)", "data": "data"}


def _label_times(prof: torch.profiler.profile, cuda: bool) -> dict[str, float]:
    """Seconds per label over the profiled steps: device time on a GPU (kernels run asynchronously, so
    host time says little there), host time on a CPU."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key in FORWARD or e.key in LOOP or e.key == "forward":
            device_us = getattr(e, "device_time_total", 0.0) if cuda else 0.0
            out[e.key] = (device_us or e.cpu_time_total) / 1e6
    return out


def profile(cfg: Config, *, steps: int = 5, out: str | Path | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Profile ``steps`` training steps of ``cfg``; write profile.md/.json(/.png) to ``out`` (default
    ``<run.dir>/<run.name>-profile``). Returns the result (rows, step time, peak memory)."""
    if steps < 1:
        raise TinyLMError(f"profile needs --steps >= 1 (got {steps})")
    out = Path(out) if out else cfg.run_dir.with_name(f"{cfg.run.name}-profile")
    scratch = copy.deepcopy(cfg)
    scratch.train.compile = False  # compiled graphs fuse the components the table separates
    scratch.run.progress = scratch.run.tensorboard = scratch.run.wandb = False
    with tempfile.TemporaryDirectory(prefix="tinylm-profile-") as tmp:
        scratch.run.dir, scratch.run.name = tmp, "profile"
        trainer = Trainer(scratch, log=lambda *a, **k: None)
        try:
            result = _profile_steps(trainer, steps)
        finally:
            trainer.close()
    result["config"] = cfg.to_dict()
    md = format_table(result)
    log(md)
    png = out / "profile.png"
    result["png"] = str(png) if _plot(result, png) else None
    write_text_atomic(out / "profile.md", md + "\n")
    write_text_atomic(out / "profile.json", json.dumps(result, indent=1))
    log(f"wrote {out / 'profile.md'}, profile.json" + (", profile.png" if result["png"] else ""))
    return result


def _profile_steps(trainer: Trainer, steps: int) -> dict:
    device = trainer.device
    cuda = device.type == "cuda"
    trainer.train_step(1.0)  # warm-up: allocations, thread pools, cuDNN/cuBLAS choices
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile_labels(), torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(1.0)
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    times = _label_times(prof, cuda)
    model = trainer.raw_model
    flops = model.flops_by_component()
    total_flops = sum(flops.values())
    forward = times.get("forward", 0.0)
    rows = [{"component": name, "label": key, "ms_per_step": 1000 * times.get(key, 0.0) / steps,
             "share_of_forward": times.get(key, 0.0) / forward if forward else None,
             "flop_share": flops[key] / total_flops} for key, name in FORWARD.items()]
    rows.append({"component": "forward: rest (residual adds, dropout, views)", "label": "forward-rest",
                 "ms_per_step": 1000 * max(forward - sum(times.get(k, 0.0) for k in FORWARD), 0.0) / steps,
                 "share_of_forward": None, "flop_share": None})
    rows += [{"component": name, "label": key, "ms_per_step": 1000 * times.get(key, 0.0) / steps,
              "share_of_forward": None, "flop_share": None} for key, name in LOOP.items()]
    accounted = forward + sum(times.get(k, 0.0) for k in LOOP)
    rows.append({"component": "other (loop bookkeeping, profiler)", "label": "other",
                 "ms_per_step": 1000 * max(wall - accounted, 0.0) / steps, "share_of_forward": None,
                 "flop_share": None})
    step_ms = 1000 * wall / steps
    for r in rows:
        r["share_of_step"] = r["ms_per_step"] / step_ms
    c = model.cfg
    return {"rows": rows, "steps": steps, "step_ms": step_ms, "peak_memory_mb": peak_memory_mb(device),
            "device": str(device), "precision": trainer.precision, "threads": torch.get_num_threads(),
            "model": f"{c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, context {c.block_size}, "
                     f"vocab {c.vocab_size}, {c.mlp} MLP",
            "batch": f"{trainer.micro} x {trainer.accum} accumulation", "tokens_per_step": trainer.tokens_per_step}


def format_table(r: dict) -> str:
    """The result as a markdown table with a heading line."""
    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"# Profile: {r['model']}, batch {r['batch']}", "",
             f"{r['device']}, {r['precision']}, {r['threads']} threads; {r['steps']} steps after one warm-up; "
             f"{r['step_ms']:.1f} ms per step ({r['tokens_per_step']:,} tokens); peak memory "
             f"{r['peak_memory_mb']:,.0f} MB", "",
             "| component | ms / step | share of step | share of forward | share of FLOPs |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['component']} | {row['ms_per_step']:.2f} | {pct(row['share_of_step'])} | "
              f"{pct(row['share_of_forward'])} | {pct(row['flop_share'])} |" for row in r["rows"]]
    lines += ["", "Share of FLOPs counts forward + backward matmul FLOPs per component (backward costs 2 x forward "
              "everywhere, so a forward share compares with it); norms and embeddings count 0."]
    return "\n".join(lines)


def _plot(r: dict, path: Path) -> bool:
    """Bars: each component's share of the step; beside the forward components, their share of the FLOPs."""
    plt = pyplot()
    if plt is None:
        return False
    rows = r["rows"]
    names = [row["component"] for row in rows]
    ys = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5), dpi=120)
    ax.barh([y + 0.2 for y in ys], [100 * row["share_of_step"] for row in rows], height=0.4, label="share of step time")
    ax.barh([y - 0.2 for y in ys], [100 * (row["share_of_forward"] or 0) for row in rows], height=0.4,
            label="share of forward time")
    ax.scatter([100 * (row["flop_share"] or 0) for row in rows if row["flop_share"] is not None],
               [y - 0.2 for y, row in zip(ys, rows, strict=True) if row["flop_share"] is not None],
               marker="|", s=200, color="k", label="share of FLOPs", zorder=3)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("%")
    ax.set_title(f"{r['model']}\n{r['device']} {r['precision']}, {r['step_ms']:.0f} ms / step", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(plt, fig, path)
