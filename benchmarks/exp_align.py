"""Does ``--data.align doc`` (every training window starts at a document) help on TinyStories? (issue 13)

    .venv/bin/python benchmarks/exp_align.py                         # shared 4.2 MB head, 2 seeds, ~10 min on 2 cores
    .venv/bin/python benchmarks/exp_align.py --steps 2000 --seeds 0 1 2
    .venv/bin/python benchmarks/exp_align.py --corpus tinystories --doc-separator eot --max-bytes 200MB \\
        --set model.n_layer=6 model.n_embd=256 model.n_head=8 model.block_size=512 --steps 5000   # on a GPU

Trains the same model twice per seed, ``--data.align none`` and ``doc``, on one prepared folder (align
is not a prepare setting, so both read the same shards and evaluate on the same validation windows),
as real ``tinylm train`` processes (one torch thread each, ``--jobs`` at a time). Prints a markdown
table of the final val loss per seed and the mean difference (doc - none; negative: aligning helps),
and writes ``--out``/results.json. The default corpus is the shared lower-cased head of the train
split, whose stories are separated by single line breaks (paragraphs by blank lines): ``line``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, use_shared_data

from tinylm.training.tracking import logged_losses

# a small model that learns TinyStories' grammar within minutes on a CPU
BASE = ["model.n_layer=4", "model.n_embd=128", "model.n_head=4", "model.block_size=256", "data.tokenizer=bpe",
        "data.vocab_size=2048", "train.batch_size=16", "optim.lr=2e-3", "optim.warmup_steps=50"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="tinystories-train-head")
    p.add_argument("--doc-separator", default="line")
    p.add_argument("--max-bytes", default="")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "exp_align")
    args = p.parse_args(argv)
    use_shared_data()
    data = args.out / "data"
    common = [f"data.corpus={args.corpus}", f"data.doc_separator={args.doc_separator}",
              f"data.max_bytes={args.max_bytes}", f"data.dir={data}", f"run.dir={args.out}",
              f"train.max_steps={args.steps}", f"train.eval_interval={max(args.steps // 10, 1)}",
              "run.progress=false", *BASE, *args.set]
    subprocess.run([sys.executable, "-m", "tinylm", "prepare", *_flags(common)], check=True)
    runs = [(align, seed) for seed in args.seeds for align in ("none", "doc")]
    with ThreadPoolExecutor(args.jobs) as pool:
        finals = dict(zip(runs, pool.map(lambda r: _train(common, *r), runs), strict=True))
    rows = ["| seed | val loss, align none | val loss, align doc | doc - none |", "| --- | --- | --- | --- |"]
    diffs = []
    for seed in args.seeds:
        none, doc = finals["none", seed], finals["doc", seed]
        diffs.append(doc - none)
        rows.append(f"| {seed} | {none:.4f} | {doc:.4f} | {doc - none:+.4f} |")
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    rows.append(f"| mean | | | {statistics.mean(diffs):+.4f} (sd {spread:.4f}) |")
    print("\n".join(rows))
    (args.out / "results.json").write_text(json.dumps(
        {"settings": common, "final_val_loss": {f"{a}/{s}": v for (a, s), v in finals.items()}}, indent=2) + "\n")


def _flags(overrides: list[str]) -> list[str]:
    return [part for o in overrides for part in (f"--{o.split('=', 1)[0]}", o.split("=", 1)[1])]


def _train(common: list[str], align: str, seed: int) -> float:
    """One ``tinylm train`` run; its last val loss. A finished run (its folder has a val loss at the
    last step) is reused, so an interrupted experiment continues where it stopped."""
    name = f"align-{align}-seed{seed}"
    overrides = [*common, f"data.align={align}", f"train.seed={seed}", f"run.name={name}"]
    run_dir = Path(next(o for o in common if o.startswith("run.dir=")).split("=", 1)[1]) / name
    steps = int(next(o for o in common if o.startswith("train.max_steps=")).split("=", 1)[1])
    done = logged_losses(run_dir, "val_loss") if (run_dir / "metrics.jsonl").is_file() else {}
    if steps not in done:
        subprocess.run([sys.executable, "-m", "tinylm", "train", *_flags(overrides)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, stdout=subprocess.DEVNULL)
        done = logged_losses(run_dir, "val_loss")
    return done[max(done)]


if __name__ == "__main__":
    main()
