"""Evidence for the production training loop, on tiny Shakespeare at character level.

    .venv/bin/python benchmarks/bench_loop.py [--parts options,accum,ddp,crash,concurrency,fulldisk]
                                              [--out runs/bench-loop]

* ``options``: step time (median compute ms per step) and peak memory with each of
  torch.compile / activation checkpointing / bf16 autocast on, against the fp32 eager baseline,
  for the preset's small model (0.8M) and a 10M model. Every configuration runs in its own
  process so peak RSS is its own.
* ``accum``: batch 4 x 4 accumulation vs batch 16 x 1, 300 steps: max loss difference.
* ``ddp``: 2 processes over gloo vs 1 process, same global batch, 50 steps: max loss difference.
* ``crash``: SIGKILL at random moments (>= 5 kills), resume each time: kills survived, steps lost
  per kill, unreadable checkpoints, and the max loss difference to the uninterrupted run
  (the resume-exactness figure).
* ``concurrency``: two ``tinylm train`` started at once on one run folder, several rounds: how many
  were refused, whether every checkpoint loads, and whether any step was logged twice.
* ``fulldisk``: a run folder on a small tmpfs (needs root and ``mount``), filled so the next
  checkpoint cannot fit: the exit code and message, temporary folders left, whether the last
  checkpoint loads, and, once space is freed, resume vs the uninterrupted run.

Reads tiny Shakespeare from TINYLM_DATA_DIR (default ../shared/data beside the repository).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

from common import REPO, machine, machine_line, time_call, use_shared_data

from tinylm.config import build_config, to_toml
from tinylm.diagnostics.crash import crash_harness
from tinylm.errors import TinyLMError
from tinylm.training import checkpoint as ckpt
from tinylm.training.tracking import logged_losses, read_metrics

PRESET = REPO / "configs" / "tinyshakespeare-char.toml"
MODELS = {"small 0.8M": [],
          "10M": ["--model.n_layer", "6", "--model.n_embd", "384", "--model.n_head", "6", "--train.batch_size", "16"]}
OPTIONS = {"fp32 eager (baseline)": [], "torch.compile": ["--train.compile", "true"],
           "activation checkpointing": ["--train.activation_checkpointing", "true"],
           "bf16 autocast": ["--train.precision", "bf16"]}


def config(out: Path, name: str, overrides: list[str]):
    # no time budget: a clock-driven LR would make runs differ by timing, not by what is measured
    cfg = build_config(PRESET, [*overrides, "--run.dir", str(out), "--run.name", name, "--run.progress", "false",
                                "--data.dir", str(out / "data"), "--train.eval_interval", "0",
                                "--train.time_budget", ""])
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return cfg


def train_command(cfg, *launcher: str) -> list[str]:
    """``tinylm train`` for cfg, through a preset written beside its run folder."""
    preset = cfg.run_dir.parent / f"{cfg.run.name}.toml"
    preset.parent.mkdir(parents=True, exist_ok=True)
    preset.write_text(to_toml(cfg))
    return [*(launcher or (sys.executable,)), "-m", "tinylm", "train", "--config", str(preset)]


def run_process(cfg, *launcher: str) -> None:
    subprocess.run(train_command(cfg, *launcher), check=True, stdout=subprocess.DEVNULL)


def records(cfg) -> list[dict]:
    return read_metrics(cfg.run_dir)


def max_diff(a, b) -> float:
    a, b = logged_losses(a.run_dir), logged_losses(b.run_dir)
    assert sorted(a) == sorted(b), "the runs logged different steps"
    return max(abs(a[s] - b[s]) for s in a)


def part_options(out: Path) -> list[str]:
    lines = ["| model | option | ms / step (median) | vs baseline | peak RSS (MB) | compile time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, mo in MODELS.items():
        steps = "12" if model.startswith("small") else "6"
        base = None
        for option, oo in OPTIONS.items():
            cfg = config(out, f"opt-{len(lines)}", mo + oo + ["--train.max_steps", steps, "--train.log_interval", "1"])
            run_process(cfg)
            rows = records(cfg)
            step_ms = statistics.median(r["compute_ms"] + r["data_ms"] for r in rows if "loss" in r and r["step"] > 1)
            base = base or step_ms
            compile_s = next((f"{r['compile_s']:.0f} s" for r in rows if r.get("event") == "compiled"), "-")
            mem = max(r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r)
            lines.append(f"| {model} | {option} | {step_ms:.0f} | {base / step_ms:.2f}x | {mem:.0f} | {compile_s} |")
            print(lines[-1], flush=True)
    return lines


def part_accum(out: Path) -> list[str]:
    common = ["--train.max_steps", "300", "--train.log_interval", "1", "--model.block_size", "128"]
    full = config(out, "accum-16x1", [*common, "--train.batch_size", "16"])
    acc = config(out, "accum-4x4", [*common, "--train.batch_size", "16", "--train.micro_batch_size", "4"])
    run_process(full)
    run_process(acc)
    a, b = logged_losses(full.run_dir), logged_losses(acc.run_dir)
    return [f"grad accumulation, 300 steps: batch 16 x 1 final loss {a[300]:.4f}, batch 4 x 4 final loss "
            f"{b[300]:.4f}, max |difference| over all steps {max_diff(full, acc):.2e}"]


def part_ddp(out: Path) -> list[str]:
    common = ["--train.max_steps", "50", "--train.log_interval", "1", "--model.block_size", "128",
              "--train.batch_size", "16", "--train.threads", "1"]
    one = config(out, "ddp-1", common)
    two = config(out, "ddp-2", common)
    run_process(one)
    run_process(two, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    return [f"DDP 2 x gloo vs 1 process, 50 steps, global batch 16: max |loss difference| {max_diff(one, two):.2e}"]


def part_crash(out: Path) -> list[str]:
    common = ["--train.max_steps", "80", "--train.log_interval", "1", "--train.save_interval", "5",
              "--model.block_size", "64", "--train.batch_size", "16"]
    ref = config(out, "crash-ref", common)
    run_process(ref)
    cfg = config(out, "crash", common)
    harness = time_call(partial(crash_harness, cfg, min_kills=6, seed=1))
    report = harness.result
    return [f"crash harness: {report.kills} SIGKILLs survived in {harness.wall:.0f} s, steps lost per kill "
            f"{report.lost_steps} (save interval 5), unreadable checkpoints {report.unreadable_checkpoints}, "
            f"max |loss difference| to the uninterrupted run {max_diff(ref, cfg)}"]


def unreadable(run_dir: Path) -> int:
    """How many of a run's step folders fail to load completely."""
    bad = 0
    for step in ckpt.step_dirs(run_dir / "checkpoints"):
        try:
            ckpt.read_meta(step)
            for part in ("model", "optimizer", "trainer"):
                ckpt.load_part(step, part)
        except TinyLMError:
            bad += 1
    return bad


def part_concurrency(out: Path, rounds: int = 5) -> list[str]:
    common = ["--train.max_steps", "40", "--train.log_interval", "1", "--train.save_interval", "5",
              "--model.block_size", "64", "--train.batch_size", "16"]
    refused = completed = bad = twice = 0
    for r in range(rounds):
        cfg = config(out, f"together-{r}", common)
        cmd = train_command(cfg)
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode == 2 and ("in use by" in err or "already exists" in err):
                refused += 1
            elif p.returncode == 0:
                completed += 1
        bad += unreadable(cfg.run_dir)
        steps = [m["step"] for m in records(cfg) if "loss" in m]
        twice += len(steps) - len(set(steps))
    return [f"concurrency: {rounds} rounds of 2 `tinylm train` started together on one run folder: "
            f"{completed} completed, {refused} refused (naming the holder), unreadable checkpoints {bad}, "
            f"steps logged twice {twice}"]


def part_fulldisk(out: Path) -> list[str]:
    disk = out / "small-disk"
    disk.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        return ["fulldisk: skipped (cannot mount a tmpfs here: needs root)"]
    try:
        common = ["--train.log_interval", "1", "--train.save_interval", "5", "--model.block_size", "64",
                  "--train.batch_size", "16", "--model.n_layer", "2", "--model.n_embd", "64", "--model.n_head", "2"]
        ref = config(out, "disk-ref", [*common, "--train.max_steps", "40"])
        run_process(ref)
        cfg = config(disk, "full", [*common, "--train.max_steps", "20"])
        run_process(cfg)
        ballast = disk / "ballast"
        with open(ballast, "wb") as f:  # leave 64 KB: room for the logs, not for a checkpoint
            while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > 64 << 10:
                f.write(b"\0" * min(free - (64 << 10), 1 << 20))
        cfg.train.max_steps = 40
        full = subprocess.run([*train_command(cfg), "--resume"], capture_output=True, text=True)
        message = full.stderr.strip().splitlines()[-1] if full.stderr.strip() else ""
        temps = len(list((cfg.run_dir / "checkpoints").glob(".tmp-*")))
        last = ckpt.read_meta(ckpt.resolve_checkpoint(cfg.run_dir))["step"]
        bad = unreadable(cfg.run_dir)
        ballast.unlink()
        again = subprocess.run([*train_command(cfg), "--resume"], capture_output=True, text=True)
        return [f"full disk: exit {full.returncode}, {len(full.stderr.strip().splitlines())} line(s) on stderr "
                f"({message[:90]}...), temporary folders left {temps}, last checkpoint step {last}, unreadable "
                f"checkpoints {bad}; after freeing space, --resume exit {again.returncode}, max |loss difference| "
                f"to the uninterrupted run {max_diff(ref, cfg)}"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="options,accum,ddp,crash,concurrency,fulldisk")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-loop"))
    args = ap.parse_args()
    out = Path(args.out)
    use_shared_data()
    info = machine()
    print(f"# {info['date']} | {machine_line(info)}", flush=True)
    parts = {"options": part_options, "accum": part_accum, "ddp": part_ddp, "crash": part_crash,
             "concurrency": part_concurrency, "fulldisk": part_fulldisk}
    for name in args.parts.split(","):
        for line in parts[name](out):
            print(line, flush=True)


if __name__ == "__main__":
    main()
