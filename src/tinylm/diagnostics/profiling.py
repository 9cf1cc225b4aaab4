"""tinylm profile: where a training step's time goes, component by component, on the real model and loop.

    tinylm profile --config configs/tinyshakespeare-char.toml [--steps 5] [--out DIR]

Runs the config's own :class:`~tinylm.training.trainer.Trainer` for one warm-up step and ``steps`` profiled steps
in a scratch folder, under ``torch.profiler`` with the :func:`~tinylm.model.gpt.label` ranges placed in
the model (embedding, norms, attention's QKV projection / kernel / output projection, MLP, head +
loss) and in the loop (data, forward, backward, optimizer). Each forward component's time is shown
beside its share of the model's FLOPs (:meth:`~tinylm.model.gpt.GPT.flops_by_component`): where the
two differ, that component runs below the machine's matmul speed. Writes profile.md, profile.json
and (with matplotlib) profile.png.
"""
from __future__ import annotations

import bisect
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from ..config import Config
from ..errors import TinyLMError
from ..fileio import Outputs, write_text_atomic
from ..model.gpt import profile_labels
from ..plotting import pyplot, save_figure
from ..training.accounting import peak_memory_mb
from ..training.trainer import Trainer

# forward components (their labels in model/gpt.py) and their names in the table
FORWARD = {"embedding": "token + position embedding", "norm": "norms", "attn.qkv": "attention: QKV projection",
           "attn.kernel": "attention: kernel", "attn.proj": "attention: output projection", "mlp": "MLP",
           "head+loss": "head + loss"}
LOOP = {"backward": "backward", "optimizer": "optimizer step (clip + update)", "data": "data"}


def _label_times(prof: torch.profiler.profile) -> dict[str, float]:
    """Host seconds per label over the profiled steps: each range's wall time on the host, its children included.
    On a CPU this is where the time goes; on a GPU it is the time spent launching. (Read from the host-side events:
    on CUDA the profiler's per-name averages merge a range with its GPU-side annotation and report no host time.)"""
    out: dict[str, float] = {}
    for e in _host_events(prof):
        if e.name in FORWARD or e.name in LOOP or e.name == "forward":
            out[e.name] = out.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / 1e6
    return out


def _host_events(prof: torch.profiler.profile) -> list:
    """The profile's host-side events: a labelled range also has a copy on the GPU's timeline (its annotation)."""
    return [e for e in prof.events() if e.device_type == DeviceType.CPU]


def attribute_device_time(ranges: list[tuple[str, float, float]], launches: list[tuple[float, float]]
                          ) -> dict[str, float]:
    """Device time per label: each kernel counts for the innermost labelled range open on the host (on any
    thread) when it was launched; a kernel launched outside every range counts for ``"other"``.

    CUDA runs kernels asynchronously, so a range's host time says when work was queued, not what it cost;
    and autograd launches backward kernels from its own thread, inside no range of that thread but while
    the main thread waits inside "backward". ``ranges``: (label, host start, host end); ``launches``:
    (host launch time, device seconds). ``attribute_device_time([("forward", 0, 10), ("mlp", 2, 5)],
    [(3, 1.0), (6, 2.0), (12, 4.0)]) -> {"mlp": 1.0, "forward": 2.0, "other": 4.0}``
    """
    ranges = sorted(ranges, key=lambda r: r[1])
    starts = [r[1] for r in ranges]
    out: dict[str, float] = {}
    for t, seconds in launches:
        key = "other"
        for i in range(bisect.bisect_right(starts, t) - 1, -1, -1):  # the latest-opened range still open at t
            if ranges[i][2] >= t:
                key = ranges[i][0]
                break
        out[key] = out.get(key, 0.0) + seconds
    return out


def _device_times(prof: torch.profiler.profile) -> dict[str, float]:
    """:func:`attribute_device_time` over a CUDA profile: the labelled ranges and every event that launched
    device work (kernels, copies, memsets) with their device durations."""
    events = _host_events(prof)
    labels = set(FORWARD) | set(LOOP) | {"forward"}
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.name in labels]
    launches = [(e.time_range.start, sum(k.duration for k in e.kernels) / 1e6) for e in events if e.kernels]
    return attribute_device_time(ranges, launches)


def profile(cfg: Config, *, steps: int = 5, out: str | Path | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Profile ``steps`` training steps of ``cfg``; write profile.md/.json(/.png) to ``out`` (default
    ``<run.dir>/<run.name>-profile``). Returns the result (rows, step time, peak memory)."""
    if steps < 1:
        raise TinyLMError(f"profile needs --steps >= 1 (got {steps})")
    out = Path(out) if out else cfg.run_dir.with_name(f"{cfg.run.name}-profile")
    files = Outputs(out / name for name in ("profile.md", "profile.json", "profile.png"))  # refused before profiling
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
    with files:
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
    model = trainer.raw_model
    rows = component_rows(_label_times(prof), _device_times(prof) if cuda else None, wall, steps,
                          model.flops_by_component())
    c = model.cfg
    return {"rows": rows, "steps": steps, "step_ms": 1000 * wall / steps, "peak_memory_mb": peak_memory_mb(device),
            "device": str(device), "precision": trainer.precision, "threads": torch.get_num_threads(),
            "model": f"{c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, context {c.block_size}, "
                     f"vocab {c.vocab_size}, {c.mlp} MLP",
            "batch": f"{trainer.micro} x {trainer.accum} accumulation", "tokens_per_step": trainer.tokens_per_step}


def component_rows(host: dict[str, float], on_gpu: dict[str, float] | None, wall: float, steps: int,
                   flops: dict[str, float]) -> list[dict]:
    """The table's rows from seconds per label over ``steps`` steps of ``wall`` seconds: ``host`` (from
    :func:`_label_times`) and, on a GPU, ``on_gpu`` (:func:`_device_times`), which then sets the time column."""
    host = {**host, "forward-rest": host.get("forward", 0.0) - sum(host.get(k, 0.0) for k in FORWARD)}
    if on_gpu is None:
        times = host
    else:  # a kernel launched in a sub-range counts there; in "forward" itself only when in none of its parts
        times = {**on_gpu, "forward-rest": on_gpu.get("forward", 0.0),
                 "forward": sum(v for k, v in on_gpu.items() if k in FORWARD or k == "forward")}
        host["other"] = wall - sum(host.get(k, 0.0) for k in ("forward", *LOOP))
    forward, total_flops = times.get("forward", 0.0), sum(flops.values())

    def row(name: str, key: str, seconds: float, flop_share: float | None = None) -> dict:
        return {"component": name, "label": key, "ms_per_step": 1000 * seconds / steps,
                "host_ms_per_step": 1000 * max(host.get(key, 0.0), 0.0) / steps,
                "share_of_forward": seconds / forward if forward and flop_share is not None else None,
                "flop_share": flop_share, "share_of_step": seconds / wall}

    rows = [row(name, key, times.get(key, 0.0), flops[key] / total_flops) for key, name in FORWARD.items()]
    rows.append(row("forward: rest (residual adds, dropout, views)", "forward-rest",
                    max(times["forward-rest"], 0.0)))
    rows += [row(name, key, times.get(key, 0.0)) for key, name in LOOP.items()]
    if on_gpu is None:
        accounted = forward + sum(times.get(k, 0.0) for k in LOOP)
        rows.append(row("other (loop bookkeeping, profiler)", "other", max(wall - accounted, 0.0)))
    else:  # device work launched outside every range, and the time the GPU had nothing to run
        rows.append(row("other (kernels outside the labelled ranges)", "other", times.get("other", 0.0)))
        busy = sum(on_gpu.values())
        rows.append(row("GPU idle (waiting for launches: host-bound where large)", "idle", max(wall - busy, 0.0)))
    return rows


def format_table(r: dict) -> str:
    """The result as a markdown table with a heading line."""
    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    clock = "GPU" if r["device"].startswith("cuda") else "CPU"
    lines = [f"# Profile: {r['model']}, batch {r['batch']}", "",
             f"{r['device']}, {r['precision']}, {r['threads']} threads; {r['steps']} steps after one warm-up; "
             f"{r['step_ms']:.1f} ms per step ({r['tokens_per_step']:,} tokens); peak memory "
             f"{r['peak_memory_mb']:,.0f} MB", "",
             f"| component | {clock} ms / step | share of step | share of forward | share of FLOPs | host ms / step |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['component']} | {row['ms_per_step']:.2f} | {pct(row['share_of_step'])} | "
              f"{pct(row['share_of_forward'])} | {pct(row['flop_share'])} | {row['host_ms_per_step']:.2f} |"
              for row in r["rows"]]
    if clock == "GPU":
        lines += ["", "GPU ms: the kernels each labelled range launched (autograd's backward kernels, launched from "
                  "its own thread, count in backward); host ms: the time the host spent inside the range, i.e. "
                  "launching. Where the GPU idles for much of the step, the step is host-bound: compile "
                  "(--train.compile true) or a larger batch."]
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
