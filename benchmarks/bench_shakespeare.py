"""Tiny Shakespeare at character level: tinylm's preset against nanoGPT's CPU recipe, one run.

    .venv/bin/python benchmarks/bench_shakespeare.py [--only preset|nanogpt] [--out runs/bench]

Both contenders train through the same library code (`tinylm.training.trainer.train`) on the same data
(nanoGPT's split: first 90% train, last 10% val); they differ only in their settings:

* ``preset``: configs/tinyshakespeare-char.toml (must reach val loss <= 1.60 within 10 minutes).
* ``nanogpt``: nanoGPT's documented CPU command for this data set (README, "I only have a
  macbook"): 4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, lr 1e-3 with
  cosine decay to 1e-4, 100 warmup steps, beta2 0.99, no dropout, no bias, GELU, LayerNorm, learned
  positions, 20 eval batches.
  nanoGPT reports val loss 1.88 for it.

Reads tiny Shakespeare from TINYLM_DATA_DIR (default ../shared/data beside the repository).
Prints a markdown table: final val loss, training wall clock, tokens/s, data wait share.
"""
from __future__ import annotations

import argparse
import json
import shutil
from functools import partial
from pathlib import Path

from common import REPO, machine, machine_line, time_call, use_shared_data

from tinylm.config import build_config
from tinylm.training.tracking import read_metrics
from tinylm.training.trainer import train

NANOGPT_CPU = ["--model.block_size", "64", "--model.n_layer", "4", "--model.n_head", "4",
               "--model.n_embd", "128", "--train.batch_size", "12",
               "--train.max_steps", "2000", "--optim.lr", "1e-3", "--optim.warmup_steps", "100",
               "--optim.beta2", "0.99", "--train.eval_interval", "250",
               "--model.mlp", "gelu", "--model.norm", "layernorm", "--model.pos", "learned"]


def run(name: str, overrides: list[str], out: Path) -> dict:
    cfg = build_config(REPO / "configs" / "tinyshakespeare-char.toml",
                       [*overrides, "--run.dir", str(out), "--run.name", name, "--run.progress", "false",
                        "--data.dir", str(out / "data")])
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    training = time_call(partial(train, cfg))
    result = training.result
    rows = read_metrics(cfg.run_dir)
    steps = [r for r in rows if "loss" in r]
    data_ms = sum(r["data_ms"] for r in steps) / len(steps)
    compute_ms = sum(r["compute_ms"] for r in steps) / len(steps)
    tps = sorted(r["tokens_per_s"] for r in steps)[len(steps) // 2]
    return {"name": name, "val_loss": result.val_loss, "best_val_loss": result.best_val_loss,
            "train_seconds": result.train_seconds, "wall_seconds": training.wall,
            "tokens_seen": result.tokens_seen, "median_tokens_per_s": tps,
            "data_share": data_ms / (data_ms + compute_ms),
            "evals": [(r["step"], round(r["val_loss"], 4)) for r in rows if "val_loss" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("preset", "nanogpt"))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-shakespeare"))
    args = ap.parse_args()
    out = Path(args.out)
    use_shared_data()
    info = machine()
    print(f"# {info['date']} | {machine_line(info)}")
    contenders = {"preset": [], "nanogpt": NANOGPT_CPU}
    results = [run(n, o, out) for n, o in contenders.items() if args.only in (None, n)]
    print("\n| contender | val loss (final) | best | train time | tokens seen | tok/s (median) | data wait |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['name']} | {r['val_loss']:.4f} | {r['best_val_loss']:.4f} | {r['train_seconds']:.0f} s | "
              f"{r['tokens_seen']:,} | {r['median_tokens_per_s']:,.0f} | {100 * r['data_share']:.2f}% |")
    for r in results:
        print(f"{r['name']} evals (step, val loss): {r['evals']}")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
