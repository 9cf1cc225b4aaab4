"""The eval set's independence (issue 13): one checkpoint, evaluated with micro-batch 16 and 4 in one process
and with 2 DDP processes (torchrun; gloo on a CPU), gives the same val loss and bits per byte.

    .venv/bin/python benchmarks/exp_eval_independence.py              # trains a small run first (a minute or two)
    .venv/bin/python benchmarks/exp_eval_independence.py --run runs/tinystories-cpu --tokens all   # a run of yours

Every figure comes from a real ``tinylm eval`` process. For contrast the table also gives what the
scheme before this change scored: the first ``eval_batches x micro-batch x processes`` windows (20
batches, as the presets had), so the set itself changed with the batch and process settings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import REPO, machine, machine_line, use_shared_data

OLD_EVAL_BATCHES = 20  # what configs/tinyshakespeare-char.toml had before train.eval_tokens
SETTINGS = (("micro-batch 16, 1 process", 16, 1), ("micro-batch 4, 1 process", 4, 1),
            ("micro-batch 4, 2 DDP processes", 4, 2))


def _env() -> dict:
    """Child processes import tinylm from this checkout, one torch thread per process (as the tests do)."""
    path = os.pathsep.join(filter(None, (str(REPO / "src"), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _tinylm(*argv: str, processes: int = 1) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "tinylm", *argv], env=_env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"tinylm {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def train_small_run(out: Path, steps: int) -> Path:
    """tiny Shakespeare at character level (configs/tinyshakespeare-char.toml), ``steps`` steps."""
    run = out / "eval-independence"
    if not (run / "checkpoints" / "last").exists():
        print(f"training {run} ({steps} steps) ...", file=sys.stderr)
        _tinylm("train", "--config", str(REPO / "configs" / "tinyshakespeare-char.toml"), "--train.max_steps",
                str(steps), "--train.time_budget", "", "--train.eval_interval", "0", "--optim.warmup_steps",
                str(steps // 5), "--data.dir", str(out / "data"), "--run.dir", str(out),
                "--run.name", run.name, "--run.progress", "false")
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a run folder to evaluate (default: train a small one under --out)")
    p.add_argument("--out", default=str(REPO / "runs" / "exp-eval"), help="where the small run goes")
    p.add_argument("--steps", type=int, default=60, help="training steps of the small run")
    p.add_argument("--tokens", default="all", help="tokens to score (N or all; tinylm eval --tokens)")
    p.add_argument("--device", default="cpu", help="tinylm eval --device (cpu: gloo; cuda: nccl, one GPU each)")
    args = p.parse_args()
    use_shared_data()
    run = Path(args.run) if args.run else train_small_run(Path(args.out), args.steps)

    def evaluate(micro: int, processes: int, tokens: str) -> dict:
        out = _tinylm("eval", str(run), "--tokens", tokens, "--batch-size", str(micro), "--device", args.device,
                      "--json", processes=processes)
        return json.loads(out)

    print(f"{machine_line(machine())}\n\nrun {run}, `tinylm eval --tokens {args.tokens}`\n")
    print("| setting | tokens scored | val loss | bits per byte | previous scheme: tokens | val loss |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name, micro, processes in SETTINGS:
        new = evaluate(micro, processes, args.tokens)
        old = evaluate(micro, processes, str(OLD_EVAL_BATCHES * micro * processes * _block_size(run)))
        rows.append(new)
        print(f"| {name} | {new['tokens']:,} | {new['loss']:.6f} | {new['bits_per_byte']:.6f} | {old['tokens']:,} | "
              f"{old['loss']:.6f} |")
    spread = max(r["loss"] for r in rows) - min(r["loss"] for r in rows)
    print(f"\nlargest difference of the val losses: {spread:.2e} (the same windows: rounding only)")


def _block_size(run: Path) -> int:
    from tinylm.training.checkpoint import checkpoint_config, resolve_checkpoint
    return checkpoint_config(resolve_checkpoint(run)).model.block_size


if __name__ == "__main__":
    main()
