"""`tinylm sweep`: many real training runs from one base config and a grid, then their statistics.

A grid file names axes; each axis is a list of values of one dotted key, or a table of named variants
that each set several keys::

    mode = "one_at_a_time"          # or "product" (every combination; the default)
    metric = "val_loss"             # what the report compares: val_loss (default) | val_bpb (bits per byte)
    [axes]
    "model.norm" = ["layernorm", "rmsnorm"]
    [axes.mlp]
    gelu = { "model.mlp" = "gelu" }
    swiglu = { "model.mlp" = "swiglu", "model.mlp_ratio" = 4.0 }

The first value of every axis is the baseline. ``product`` runs every combination; ``one_at_a_time``
runs the baseline and then changes one axis at a time (an ablation). Each point x seed is a real
`tinylm train` process in ``OUT/runs/<point>/seed<k>``, ``jobs`` at a time, the CPU threads divided
between them. Points with different tokenizers compare by ``metric = "val_bpb"``: a token is a different
amount of text in each, so their losses per token do not compare. A run the sweep finished has
``sweep_run.json``: a second sweep skips it; a run folder
without it is resumed (``--resume``). A run that fails is reported, and the others go on.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Config, build_config, load_toml, tomllib
from ..errors import TinyLMError
from ..fileio import Outputs, write_text_atomic
from ..plotting import pyplot, save_figure
from ..training.tracking import read_metrics
from . import stats
from .report import fmt, model_counts

DONE = "sweep_run.json"  # in a run folder the sweep finished: its results
BASELINE = "baseline"
# a grid's metric -> (the RunResult field compared, its name in the report and the plot)
METRICS = {"val_loss": ("final_val_loss", "final val loss"), "val_bpb": ("final_val_bpb", "final val bits per byte")}


@dataclass
class Point:
    name: str
    overrides: dict[str, object]  # dotted key -> value


@dataclass
class RunResult:
    point: str
    seed: int
    run_dir: str
    status: str  # ok | failed
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_train_loss: float | None = None
    tokens_per_s: float | None = None
    train_seconds: float | None = None
    parameters: int | None = None
    non_embedding_parameters: int | None = None
    final_val_bpb: float | None = None
    error: str = ""


@dataclass
class Sweep:
    out: Path
    points: list[Point]
    results: list[RunResult] = field(default_factory=list)
    metric: str = "val_loss"  # the grid's: a key of METRICS

    @property
    def compared(self) -> tuple[str, str]:
        """(the RunResult field the report compares, its name for people), from :data:`METRICS`."""
        return METRICS[self.metric]

    def by_point(self, key: str = "final_val_loss") -> dict[str, list[float]]:
        """``key`` of every finished seed, per point (in grid order)."""
        return {p.name: [getattr(r, key) for r in self.results if r.point == p.name and r.status == "ok"
                         and getattr(r, key) is not None] for p in self.points}


# ----------------------------------------------------------------------------- the grid

def _value_label(v: object) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


def read_grid(path: str | Path) -> list[Point]:
    """The points of a grid file, the baseline first (see the module docstring for the format)."""
    p = Path(path)
    return _read_points(p, _grid_doc(p))


def _grid_doc(p: Path) -> dict:
    """A grid file's TOML, its metric checked."""
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError:
        raise TinyLMError(f"grid file {p} cannot be read; give a TOML file like "
                          f"configs/ablations/architecture.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise TinyLMError(f"{p} is not valid TOML: {e}") from None
    if doc.get("metric", "val_loss") not in METRICS:
        raise TinyLMError(f"{p}: metric = {doc['metric']!r} is not one of {', '.join(METRICS)}")
    return doc


def grid_metric(path: str | Path) -> str:
    """A grid file's ``metric`` (default val_loss)."""
    return _grid_doc(Path(path)).get("metric", "val_loss")


def _read_points(p: Path, doc: dict) -> list[Point]:
    mode = doc.get("mode", "product")
    axes_doc = doc.get("axes")
    if mode not in ("product", "one_at_a_time") or not isinstance(axes_doc, dict) or not axes_doc:
        raise TinyLMError(f"{p}: a grid needs an [axes] table (dotted key = [values], or named variants) and "
                          f"mode = \"product\" or \"one_at_a_time\" (got {mode!r})")
    axes: list[list[tuple[str, dict]]] = []  # per axis: (label, overrides) per value
    for name, spec in axes_doc.items():
        if isinstance(spec, list) and spec:
            axes.append([(f"{name.split('.')[-1]}={_value_label(v)}", {name: v}) for v in spec])
        elif isinstance(spec, dict) and spec and all(isinstance(v, dict) for v in spec.values()):
            axes.append([(f"{name}={label}", dict(sets)) for label, sets in spec.items()])
        else:
            raise TinyLMError(f"{p}: axis {name!r} must be a non-empty list of values or a table of named "
                              f"variants ({{ \"model.mlp\" = \"swiglu\" }})")
    if mode == "product":
        combos = list(itertools.product(*axes))
    else:  # the baseline, then each other value of one axis with the others at their baseline
        base = [axis[0] for axis in axes]
        combos = [tuple(base)] + [tuple(v if j == i else base[j] for j in range(len(axes)))
                                  for i, axis in enumerate(axes) for v in axis[1:]]
    points = []
    for k, combo in enumerate(combos):
        overrides = {key: v for _, sets in combo for key, v in sets.items()}
        if mode == "one_at_a_time":
            changed = [label for label, b in zip(combo, combos[0], strict=True) if label != b]
            name = BASELINE if k == 0 else ",".join(label for label, _ in changed)
        else:
            name = ",".join(label for label, _ in combo)
        points.append(Point(name, overrides))
    return points


def folder_name(point: str) -> str:
    """A point's run folder: ``"optim.lr=0.001,mlp=swiglu" -> "optim.lr=0.001,mlp=swiglu"``; odd characters -> '-'."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "-", point).strip(".-") or "point"


# ----------------------------------------------------------------------------- running

def _flags(overrides: dict[str, object]) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", _value_label(v))]


class Runner:
    """Trains points x seeds as `tinylm train` processes, ``jobs`` at a time; skips finished runs,
    resumes unfinished ones, records failures."""

    def __init__(self, config: str | Path | None, out: Path, seeds: int = 1, jobs: int = 1,
                 threads: int | None = None, overrides: list[str] | None = None, log: Callable[[str], None] = print):
        if seeds < 1 or jobs < 1:
            raise TinyLMError("--seeds and --jobs must be >= 1")
        self.config, self.out, self.seeds, self.jobs = config, Path(out), seeds, jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.overrides = list(overrides or [])
        self.log = log
        self._lock = threading.Lock()

    def config_for(self, point: Point, seed: int) -> Config:
        """The resolved config of one run (what its `tinylm train` process will build)."""
        cfg = build_config(self.config, [*self.overrides, *_flags(point.overrides)])
        cfg.train.seed += seed  # seed 0 is the config's own
        return cfg

    def run_dir(self, point: Point, seed: int) -> Path:
        return self.out / "runs" / folder_name(point.name) / f"seed{seed}"

    def run(self, points: list[Point]) -> list[RunResult]:
        self._prepare_data(points)
        todo = [(p, s) for p in points for s in range(self.seeds)]
        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(lambda ps: self._one(*ps), todo))

    def _prepare_data(self, points: list[Point]) -> None:
        """Each distinct data folder once, before the runs start (parallel runs must not prepare it together)."""
        from ..data.prepare import ensure_prepared
        seen = set()
        for p in points:
            cfg = self.config_for(p, 0)
            if cfg.data.dir not in seen:
                seen.add(cfg.data.dir)
                ensure_prepared(cfg.data, progress=False, log=self.log)

    def _one(self, point: Point, seed: int) -> RunResult:
        run = self.run_dir(point, seed)
        if (run / DONE).is_file():
            return RunResult(**json.loads((run / DONE).read_text(encoding="utf-8")))
        cfg = self.config_for(point, seed)
        cmd = [sys.executable, "-m", "tinylm", "train", *(["--config", str(self.config)] if self.config else []),
               *self.overrides, *_flags(point.overrides), "--train.seed", str(cfg.train.seed),
               "--train.threads", str(self.threads), "--run.dir", str(run.parent), "--run.name", run.name,
               "--run.progress", "false", "--data.dir", cfg.data.dir]
        resumed = run.exists()
        if resumed:  # an earlier sweep stopped in the middle of this run: continue it
            cmd.append("--resume")
        done = self.launch(cmd, {**os.environ, "OMP_NUM_THREADS": str(self.threads)})
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            error = lines[-1] if lines else f"exit code {done.returncode}"
            self._say(f"  FAILED {point.name} seed {seed}: {error}")
            return RunResult(point.name, seed, str(run), "failed", error=error)
        result = collect(run, point.name, seed)
        write_text_atomic(run / DONE, json.dumps(asdict(result), indent=1))
        self._say(f"  {'resumed' if resumed else 'done'} {point.name} seed {seed}: val {fmt(result.final_val_loss)}")
        return result

    @staticmethod
    def launch(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """One training process; its stderr is kept for the failure's message."""
        return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)

    def _say(self, message: str) -> None:
        with self._lock:
            self.log(message)


def collect(run: Path, point: str, seed: int) -> RunResult:
    """A finished run's figures from its metrics.jsonl and config.toml."""
    records = read_metrics(run)
    by_step = {}
    for r in records:
        by_step.setdefault(r["step"], {}).update(r)
    rows = [by_step[s] for s in sorted(by_step)]
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    bpbs = [r["val_bpb"] for r in rows if r.get("val_bpb") is not None]
    train = [r["loss"] for r in rows if r.get("loss") is not None]
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    elapsed = [r["elapsed_s"] for r in rows if r.get("elapsed_s") is not None]
    total, non_emb, _ = model_counts(load_toml(run / "config.toml"))
    return RunResult(point, seed, str(run), "ok", vals[-1] if vals else None, min(vals) if vals else None,
                     train[-1] if train else None, statistics.median(speeds) if speeds else None,
                     elapsed[-1] if elapsed else None, total, non_emb, bpbs[-1] if bpbs else None)


# ----------------------------------------------------------------------------- results

def write_results(sweep: Sweep) -> None:
    """results.json and results.csv: one row per run."""
    rows = [asdict(r) for r in sweep.results]
    write_text_atomic(sweep.out / "results.json", json.dumps(rows, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(RunResult("", 0, "", "")).keys()))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep.out / "results.csv", buf.getvalue())


def render(sweep: Sweep, figure: str | None, command: str) -> str:
    """report.md: mean +- std per point, difference to the baseline with its 95% CI and Welch's p."""
    key, label = sweep.compared
    finals = sweep.by_point(key)
    base_name = sweep.points[0].name
    base = finals[base_name]
    lines = ["# Sweep report", "", f"`{command}`", "",
             f"The {label} per point over seeds; differences are to **{base_name}** with a 95% "
             f"confidence interval and Welch's t-test p-value (scipy); *significant* means p < {stats.ALPHA}.", "",
             f"| point | seeds | {label} (mean ± std) | best val loss | tok/s | params | Δ vs baseline [95% CI] "
             "| p | significant |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    best = sweep.by_point("best_val_loss")
    speed = sweep.by_point("tokens_per_s")
    params = sweep.by_point("parameters")
    for p in sweep.points:
        xs = finals[p.name]
        if not xs:
            lines.append(f"| {p.name} | 0 | n/a | | | | | | |")
            continue
        m, s = stats.mean_std(xs)
        c = stats.welch(xs, base) if p.name != base_name else None
        delta = f"{c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}]" if c else ("—" if p.name == base_name else
                                                                       "needs ≥ 2 seeds")
        lines.append(f"| {p.name} | {len(xs)} | {m:.4f} ± {s:.4f} | {statistics.mean(best[p.name]):.4f} | "
                     f"{fmt(statistics.median(speed[p.name]) if speed[p.name] else None, 0)} | "
                     f"{fmt(params[p.name][0] if params[p.name] else None)} | {delta} | "
                     f"{f'{c.p:.3g}' if c else ''} | {('**yes**' if c.significant else 'no') if c else ''} |")
    failed = [r for r in sweep.results if r.status != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"* {r.point} seed {r.seed} ({r.run_dir}): {r.error}" for r in failed]
    lines += ["", "## Plots", "", f"![sweep]({figure})" if figure else
              "(no plots: matplotlib is not installed; `pip install 'tinylm[plot]'`)", "",
              "## Points", ""] + [f"* **{p.name}**: {' '.join(_flags(p.overrides)) or '(the base config)'}"
                                  for p in sweep.points]
    return "\n".join(lines) + "\n"


def run_sweep(config: str | Path | None, grid: str | Path, out: str | Path, seeds: int = 1, jobs: int = 1,
              threads: int | None = None, overrides: list[str] | None = None,
              log: Callable[[str], None] = print) -> Sweep:
    """Run (or finish) a sweep and write results.csv/.json, report.md and sweep.png to ``out``."""
    points = read_grid(grid)
    return run_points(points, config, out, seeds=seeds, jobs=jobs, threads=threads, overrides=overrides, log=log,
                      metric=grid_metric(grid),
                      command=f"tinylm sweep --config {config} --grid {grid} --seeds {seeds} --jobs {jobs} "
                              f"--out {out}")


def run_points(points: list[Point], config: str | Path | None, out: str | Path, *, seeds: int = 1, jobs: int = 1,
               threads: int | None = None, overrides: list[str] | None = None, log: Callable[[str], None] = print,
               metric: str = "val_loss", command: str = "") -> Sweep:
    """The runner behind `tinylm sweep` and `tinylm scaling`: train ``points`` x ``seeds``, write the results
    (compared by ``metric``, a key of :data:`METRICS`)."""
    sweep = Sweep(Path(out), points, metric=metric)
    runner = Runner(config, sweep.out, seeds, jobs, threads, overrides, log)
    for p in points:  # a wrong key or value is one line now, not a failure in every run
        runner.config_for(p, 0)
    files = Outputs(sweep.out / name for name in ("results.json", "results.csv", "report.md", "sweep.png"))
    sweep.out.mkdir(parents=True, exist_ok=True)
    log(f"sweep: {len(points)} point(s) x {seeds} seed(s) = {len(points) * seeds} runs, {jobs} at a time "
        f"({runner.threads} thread(s) each), in {sweep.out / 'runs'}")
    sweep.results = runner.run(points)
    with files:
        write_results(sweep)
        plotted = plot_sweep(sweep, sweep.out / "sweep.png")
        write_text_atomic(sweep.out / "report.md", render(sweep, "sweep.png" if plotted else None, command))
    return sweep


# -- the figure (matplotlib, the `plot` extra: False and nothing drawn without it) -------------------------


def plot_sweep(sweep: Sweep, path: Path) -> bool:
    """The sweep's metric (final val loss, or bits per byte) by point (each seed a dot, mean +- std a bar) and the
    mean val curve of each point."""
    plt = pyplot()
    if plt is None:
        return False
    key, label = sweep.compared
    logged = sweep.metric  # metrics.jsonl's name: val_loss or val_bpb
    finals = sweep.by_point(key)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), dpi=110)
    for i, p in enumerate(sweep.points):
        xs = finals[p.name]
        if not xs:
            continue
        mean, std = stats.mean_std(xs)
        left.errorbar([i], [mean], yerr=[0.0 if math.isnan(std) else std], fmt="s", color=f"C{i % 10}", capsize=4)
        left.plot([i] * len(xs), xs, ".", color="k", alpha=0.5)
        curves: dict[int, list[float]] = {}
        for r in sweep.results:
            if r.point == p.name and r.status == "ok":
                for rec in read_metrics(Path(r.run_dir)):
                    if rec.get(logged) is not None:
                        curves.setdefault(rec["step"], []).append(rec[logged])
        steps = sorted(curves)
        right.plot(steps, [sum(curves[s]) / len(curves[s]) for s in steps], "-", color=f"C{i % 10}", label=p.name)
    left.set_xticks(range(len(sweep.points)), [p.name for p in sweep.points], rotation=30, ha="right", fontsize=8)
    left.set_title(f"{label} by point (dots: seeds; bar: mean ± std)")
    right.set_title(f"{logged.replace('_', ' ')} (mean over seeds)")
    right.set_xlabel("step")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(plt, fig, path)
