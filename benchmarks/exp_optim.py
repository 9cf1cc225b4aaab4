"""Optimizer and schedule experiments (issue 5) on tiny Shakespeare, character level, configs/optim-lab.toml.

    .venv/bin/python benchmarks/exp_optim.py all --jobs 2        # everything: ~50 min on 2 cores
    .venv/bin/python benchmarks/exp_optim.py sweep               # LR finder + LR sweeps (AdamW, Muon)
    .venv/bin/python benchmarks/exp_optim.py muon                # Muon vs AdamW at their tuned LRs, 3 seeds
    .venv/bin/python benchmarks/exp_optim.py schedules           # (a) constant ... (d) warmup-stable-warmdown, 3 seeds
    .venv/bin/python benchmarks/exp_optim.py sweep-long          # AdamW sweep at 3x the steps: does the best LR move?
    .venv/bin/python benchmarks/exp_optim.py step-cost           # wall-clock ms per step, AdamW vs Muon vs Lion
    .venv/bin/python benchmarks/exp_optim.py schedule-plot       # docs/optim/schedules.png (no training)

Every run is a real ``tinylm train`` process (one torch thread each, ``--jobs`` at a time), through
`tinylm sweep`'s runner: a finished run is reused, so the parts share runs, and an interrupted
experiment continues where it stopped (the unfinished run resumes). Losses do not depend on timing (no time budget),
so running jobs side by side changes only how long it takes. Results: ``--out``/results.json, the
markdown tables printed (and pasted into BENCHMARKS.md), and plots in docs/optim/.

* **sweep**: ``tinylm lr-find`` for AdamW and Muon, then final val loss at each LR of a grid
  (seed 0). The LR finder is valid when its suggestion lies within 2x of the sweep's best LR.
* **muon**: AdamW and Muon each at its best sweep LR, seeds 0-2: final val loss (mean +- std) and
  the steps Muon needs to reach the final val loss of AdamW with the same seed (linear between
  evaluations, every ``eval_interval`` steps; AdamW needs all its steps for it). Muon's AdamW part
  (embeddings, head, norms) uses AdamW's best LR.
* **schedules**: AdamW at its best LR, seeds 0-2: (a) constant, no warmup; (b) cosine to 0.1 x lr, no
  warmup; (c) warmup 50 + cosine to 0.1 x lr; (d) warmup 50 + stable + linear warmdown to 0 over
  the last 20%; and a control, (e) warmup 50 + constant, that separates the effect of warmup from
  that of the decay.
* **sweep-long**: the AdamW sweep again at 1500 steps (warmup 150), against the same LR-finder
  suggestion (the range test does not depend on the run's length).
* **step-cost**: the library's ``Trainer.train_step`` for each optimizer on the lab model,
  alternated in rounds, all threads (run it alone on a quiet machine).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from common import REPO, Meter, use_shared_data

from tinylm.analysis.sweep import Point, Runner
from tinylm.config import build_config
from tinylm.data.prepare import ensure_prepared
from tinylm.plotting import pyplot
from tinylm.training.tracking import logged_losses

PRESET = REPO / "configs" / "optim-lab.toml"
SEEDS = (0, 1, 2)
ADAMW_LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
MUON_LRS = (5e-3, 1e-2, 2e-2, 4e-2, 8e-2)
MUON = ["--optim.name", "muon", "--optim.weight_decay", "0"]  # no decay on Muon's matrices (as modded-nanogpt)
SCHEDULES = {
    "(a) constant": ["--optim.schedule", "constant", "--optim.warmup_steps", "0"],
    "(b) cosine, no warmup": ["--optim.schedule", "cosine", "--optim.warmup_steps", "0"],
    "(c) warmup + cosine": [],  # the preset (warmup 50, cosine to 0.1 x lr): the sweep's run at this LR
    "(d) warmup + stable + warmdown": ["--optim.schedule", "wsd", "--optim.decay_shape", "linear",
                                       "--optim.decay_frac", "0.2", "--optim.min_lr_ratio", "0"],
    "(e) control: warmup + constant": ["--optim.schedule", "constant"],  # separates warmup from decay
}


class Lab:
    """Runs through `tinylm sweep`'s runner (tinylm.analysis.sweep.Runner): one point per setting, named by a
    hash of its overrides, one thread per run, ``--jobs`` at a time; finished runs are reused, an interrupted
    one resumes."""

    def __init__(self, out: Path, jobs: int):
        self.out, self.jobs = out, jobs
        self.max_steps = build_config(PRESET, []).train.max_steps
        self.data = out / "data"
        self.base = ["--data.dir", str(self.data), "--run.dir", str(out / "runs"), "--run.progress", "false",
                     "--train.threads", "1"]
        self.runner = Runner(PRESET, out / "sweep", jobs=jobs, threads=1, overrides=self.base)

    def prepare(self) -> None:
        ensure_prepared(build_config(PRESET, self.base).data, progress=False)

    def runs(self, settings: list[list[str]]) -> list[Path]:
        """Train every setting not trained yet; the run folders, in order."""
        points = [Point(hashlib.sha1(" ".join(s).encode()).hexdigest()[:10],
                        {k.removeprefix("--"): v for k, v in zip(s[::2], s[1::2], strict=True)}) for s in settings]
        results = self.runner.run(points)
        failed = [r for r in results if r.status != "ok"]
        if failed:
            raise SystemExit("run(s) failed:\n" + "\n".join(f"{r.run_dir}: {r.error}" for r in failed))
        return [Path(r.run_dir) for r in results]

    def lr_find(self, name: str, overrides: list[str]) -> dict:
        out = self.out / f"lr-find-{name}"
        if not (out / "lr_find.json").is_file():
            cmd = [sys.executable, "-m", "tinylm", "lr-find", "--config", str(PRESET), *self.base,
                   "--steps", "300", "--start", "1e-5", "--end", "1", "--out", str(out), *overrides]
            subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, stdout=subprocess.DEVNULL)
        return json.loads((out / "lr_find.json").read_text())


@functools.cache  # read once: only finished runs are asked
def final_val(run: Path) -> float:
    vals = logged_losses(run, "val_loss")
    return vals[max(vals)]


def steps_to(run: Path, target: float) -> float:
    """First step at which val loss reaches ``target`` (linear between evaluations); inf if never."""
    vals = sorted(logged_losses(run, "val_loss").items())
    for (s0, v0), (s1, v1) in itertools.pairwise(vals):
        if v1 <= target:
            return s1 if v0 <= target or v0 == v1 else s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return math.inf


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def lr_args(lr: float) -> list[str]:
    return ["--optim.lr", f"{lr:g}"]


# ----------------------------------------------------------------------------- parts

def part_sweep(lab: Lab, results: dict) -> None:
    finder = lab.lr_find("adamw", [])
    adamw = lab.runs([lr_args(lr) for lr in ADAMW_LRS])
    best_adamw = min(zip(ADAMW_LRS, adamw, strict=True), key=lambda t: final_val(t[1]))[0]
    finder_muon = lab.lr_find("muon", [*MUON, "--optim.lr", "0.02", "--optim.embed_lr", f"{best_adamw:g}"])
    muon = lab.runs([[*MUON, *lr_args(lr), "--optim.embed_lr", f"{best_adamw:g}"] for lr in MUON_LRS])
    best_muon = min(zip(MUON_LRS, muon, strict=True), key=lambda t: final_val(t[1]))[0]
    ratio = finder["suggested_lr"] / best_adamw
    results["sweep"] = {
        "adamw": {f"{lr:g}": final_val(r) for lr, r in zip(ADAMW_LRS, adamw, strict=True)}, "best_adamw_lr": best_adamw,
        "muon": {f"{lr:g}": final_val(r) for lr, r in zip(MUON_LRS, muon, strict=True)}, "best_muon_lr": best_muon,
        "lr_find_adamw": {k: finder[k] for k in ("divergence_lr", "suggested_lr", "divisor", "diverged")},
        "lr_find_muon": {k: finder_muon[k] for k in ("divergence_lr", "suggested_lr", "divisor", "diverged")},
        "finder_over_best": ratio, "finder_valid": 0.5 <= ratio <= 2.0}
    print("\n## LR sweep (seed 0, final val loss)\n\n| optimizer | " +
          " | ".join(f"lr {lr:g}" for lr in ADAMW_LRS) + " |\n|---|" + "---:|" * len(ADAMW_LRS))
    print("| AdamW | " + " | ".join(f"{final_val(r):.4f}" for r in adamw) + " |")
    print("\n| optimizer | " + " | ".join(f"lr {lr:g}" for lr in MUON_LRS) + " |\n|---|" + "---:|" * len(MUON_LRS))
    print("| Muon | " + " | ".join(f"{final_val(r):.4f}" for r in muon) + " |")
    print(f"\nLR finder (AdamW): divergence {finder['divergence_lr']:.3g}, suggested {finder['suggested_lr']:.3g}; "
          f"sweep best {best_adamw:g}; ratio {ratio:.2f} -> {'within' if 0.5 <= ratio <= 2 else 'NOT within'} 2x")
    print(f"LR finder (Muon, embed_lr fixed ratio): divergence {finder_muon['divergence_lr']:.3g}, suggested "
          f"{finder_muon['suggested_lr']:.3g}; sweep best {best_muon:g}")


def part_sweep_long(lab: Lab, results: dict) -> None:
    if "sweep" not in results:
        part_sweep(lab, results)
    longer = ["--train.max_steps", "1500", "--optim.warmup_steps", "150"]
    lrs = ADAMW_LRS[1:5]
    runs = lab.runs([[*lr_args(lr), *longer] for lr in lrs])
    finals = {f"{lr:g}": final_val(r) for lr, r in zip(lrs, runs, strict=True)}
    best = min(zip(lrs, runs, strict=True), key=lambda t: final_val(t[1]))[0]
    suggested = results["sweep"]["lr_find_adamw"]["suggested_lr"]
    results["sweep_long"] = {"final": finals, "best_lr": best, "finder_over_best": suggested / best}
    print("\n## AdamW sweep at 1500 steps (warmup 150, seed 0)\n\n| lr | " + " | ".join(finals) + " |\n|---|"
          + "---:|" * len(finals) + "\n| val loss | " + " | ".join(f"{v:.4f}" for v in finals.values()) + " |")
    print(f"\nbest {best:g}; LR finder suggestion {suggested:.3g} = {suggested / best:.2f} x best")


def part_muon(lab: Lab, results: dict) -> None:
    if "sweep" not in results:
        part_sweep(lab, results)
    a_lr, m_lr = results["sweep"]["best_adamw_lr"], results["sweep"]["best_muon_lr"]
    adamw = lab.runs([[*lr_args(a_lr), "--train.seed", str(s)] if s else lr_args(a_lr) for s in SEEDS])
    muon = lab.runs([[*MUON, *lr_args(m_lr), "--optim.embed_lr", f"{a_lr:g}", *(["--train.seed", str(s)] if s else [])]
                     for s in SEEDS])
    target = statistics.mean(final_val(r) for r in adamw)
    # per seed: the steps Muon needs to reach the val loss AdamW ends at with the same seed
    # (AdamW needs all of max_steps for it, by definition)
    paired = [steps_to(m, final_val(a)) for a, m in zip(adamw, muon, strict=True)]
    max_steps = lab.max_steps
    results["muon"] = {"adamw_lr": a_lr, "muon_lr": m_lr, "mean_target": target,
                       "final": {"AdamW": [final_val(r) for r in adamw], "Muon": [final_val(r) for r in muon]},
                       "muon_steps_to_adamw_final_same_seed": paired,
                       "muon_steps_to_mean_target": [steps_to(r, target) for r in muon]}
    print(f"\n## Muon vs AdamW (3 seeds, {max_steps} steps, warmup + cosine)\n")
    print("| optimizer | LR | final val loss (mean ± std) | per seed |\n|---|---:|---:|---|")
    for name, runs, lr in (("AdamW", adamw, a_lr), ("Muon", muon, m_lr)):
        vs = [final_val(r) for r in runs]
        print(f"| {name} | {lr:g} | {mean_std(vs)} | {', '.join(f'{v:.4f}' for v in vs)} |")
    print(f"\nSteps Muon needs to reach AdamW's final val loss of the same seed: "
          f"{', '.join(f'{s:.0f}' for s in paired)} (mean {statistics.mean(paired):.0f} vs AdamW's {max_steps}: "
          f"{100 * (1 - statistics.mean(paired) / max_steps):.0f}% fewer). To AdamW's mean {target:.4f}: "
          f"{', '.join(f'{s:.0f}' for s in results['muon']['muon_steps_to_mean_target'])}.")
    plot_curves({"AdamW": adamw, "Muon": muon}, REPO / "docs" / "optim" / "muon_vs_adamw.png",
                f"Muon (lr {m_lr:g}) vs AdamW (lr {a_lr:g}), 3 seeds", target)


def part_schedules(lab: Lab, results: dict) -> None:
    if "sweep" not in results:
        part_sweep(lab, results)
    lr = results["sweep"]["best_adamw_lr"]
    runs = {name: lab.runs([[*lr_args(lr), *args, *(["--train.seed", str(s)] if s else [])] for s in SEEDS])
            for name, args in SCHEDULES.items()}
    results["schedules"] = {"lr": lr, "final": {n: [final_val(r) for r in rs] for n, rs in runs.items()}}
    print(f"\n## Schedules (AdamW lr {lr:g}, 500 steps, 3 seeds)\n\n| schedule | final val loss (mean ± std) | "
          "per seed |\n|---|---:|---|")
    for name, rs in runs.items():
        vs = [final_val(r) for r in rs]
        print(f"| {name} | {mean_std(vs)} | {', '.join(f'{v:.4f}' for v in vs)} |")
    plot_curves(runs, REPO / "docs" / "optim" / "schedules_val.png", f"LR schedules, AdamW lr {lr:g}, 3 seeds")


def part_step_cost(lab: Lab, results: dict, steps: int = 20, rounds: int = 3) -> None:
    import torch

    from tinylm.training.trainer import Trainer
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, extra in (("AdamW", []), ("Muon", [*MUON, "--optim.lr", "0.02", "--optim.embed_lr", "3e-3"]),
                                ("Lion", ["--optim.name", "lion", "--optim.lr", "3e-4"])):
                cfg = build_config(PRESET, ["--data.dir", str(lab.data), "--run.dir", tmp, "--run.name", name,
                                            "--run.progress", "false", *extra])
                trainers[name] = Trainer(cfg, log=lambda *a, **k: None)
            meters = {n: Meter() for n in trainers}
            for t in trainers.values():
                t.train_step(1.0)  # warm-up
            for _ in range(rounds):
                for name, t in trainers.items():
                    for _ in range(steps):
                        meters[name](partial(t.train_step, 1.0))
        finally:  # unlock each run folder (and stop its prefetch thread) before the folder goes
            for t in trainers.values():
                t.close()
    base = meters["AdamW"].median
    results["step_cost"] = {n: 1000 * m.median for n, m in meters.items()}
    print(f"\n## Wall-clock per step ({torch.get_num_threads()} threads, median of {steps * rounds})\n\n"
          "| optimizer | ms/step | x AdamW |\n|---|---:|---:|")
    for name, m in meters.items():
        print(f"| {name} | {1000 * m.median:.1f} | {m.median / base:.2f} |")


def part_schedule_plot(lab: Lab, results: dict) -> None:
    """Every schedule :func:`tinylm.training.optim.lr_scale` offers, over 1000 steps with warmup 100."""
    from dataclasses import replace

    from tinylm.config import OptimConfig
    from tinylm.training.optim import lr_scale
    plt = pyplot()
    if plt is None:
        raise SystemExit("schedule-plot needs matplotlib: pip install 'tinylm[plot]'")
    base = OptimConfig(warmup_steps=100, min_lr_ratio=0.1, decay_frac=0.2)
    shown = {"constant": replace(base, schedule="constant"), "cosine (to 0.1)": replace(base, schedule="cosine"),
             "wsd, linear decay": replace(base, schedule="wsd"),
             "wsd, cosine decay": replace(base, schedule="wsd", decay_shape="cosine"),
             "wsd, 1-sqrt decay": replace(base, schedule="wsd", decay_shape="1-sqrt"),
             "cosine_warmdown": replace(base, schedule="cosine_warmdown")}
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    for i, (name, cfg) in enumerate(shown.items()):
        ax.plot(range(1000), [lr_scale(s, cfg, 1000) for s in range(1000)], color=f"C{i}", lw=1.6, label=name)
    ax.set(xlabel="step", ylabel="LR / peak LR",
           title="tinylm schedules: warmup_steps 100, min_lr_ratio 0.1, decay_frac 0.2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = REPO / "docs" / "optim" / "schedules.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def plot_curves(groups: dict[str, list[Path]], path: Path, title: str, target: float | None = None) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=120)
    for i, (name, runs) in enumerate(groups.items()):
        for j, run in enumerate(runs):
            vals = sorted(logged_losses(run, "val_loss").items())
            ax.plot([s for s, _ in vals], [v for _, v in vals], color=f"C{i}", lw=1.2, alpha=0.8,
                    label=name if j == 0 else None)
    if target is not None:
        ax.axhline(target, color="0.4", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel="step", ylabel="val loss", title=title, ylim=(None, 2.6))
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


PARTS = {"sweep": part_sweep, "sweep-long": part_sweep_long, "muon": part_muon, "schedules": part_schedules,
         "step-cost": part_step_cost, "schedule-plot": part_schedule_plot}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=[*PARTS, "all"])
    p.add_argument("--jobs", type=int, default=2, help="training processes at a time (one thread each)")
    p.add_argument("--out", default=str(REPO / "runs" / "exp-optim"))
    args = p.parse_args()
    use_shared_data()
    lab = Lab(Path(args.out), args.jobs)
    lab.prepare()
    results_path = lab.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in (("sweep", "muon", "schedules") if args.part == "all" else (args.part,)):
        PARTS[name](lab, results)
        results_path.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {results_path}")


if __name__ == "__main__":
    main()
