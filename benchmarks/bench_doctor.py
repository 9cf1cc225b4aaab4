"""How long `tinylm doctor` takes on every shipped preset, and `tinylm profile` on two shapes.

    .venv/bin/python benchmarks/bench_doctor.py [--parts doctor,profile] [--out runs/bench-doctor]

* ``doctor``: `tinylm doctor --config configs/<preset>.toml --json` with default settings, each preset in
  its own process: wall seconds (the goal: under two minutes on the 2-core machine), exit status, each
  check's verdict and seconds. A preset whose data needs a download it cannot make (offline) shows
  its one-line error instead.
* ``profile``: `tinylm profile` on the tiny-Shakespeare preset, and on the GPT-2-small shape (12 layers,
  width 768, 12 heads, context 1024, vocab 50257) at batch 1 and 2 steps on a CPU (the seeds' batch
  8 takes minutes per step there; on a GPU it runs at batch 8). The seeds expect, at that shape, the
  MLP at 60-70% of the compute, attention 20-30%, embeddings negligible.

Reads the corpora from TINYLM_DATA_DIR (default ../shared/data beside the repository); writes a
markdown summary to <out>/bench_doctor.md beside each command's own files.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine, machine_line, use_shared_data

PRESETS = sorted((REPO / "configs").glob("*.toml"))
GPT2_SMALL = ["--model.n_layer", "12", "--model.n_embd", "768", "--model.n_head", "12", "--model.block_size", "1024",
              "--model.vocab_size", "50257", "--model.mlp", "gelu", "--model.norm", "layernorm", "--model.pos",
              "learned"]


def tinylm(args: list[str], out: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tinylm", *args, "--run.dir", str(out), "--run.progress", "false"],
                          capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - t0, proc


def bench_doctor(out: Path) -> list[str]:
    lines = ["## tinylm doctor, default settings", "", "| preset | seconds | exit | checks |",
             "| --- | ---: | ---: | --- |"]
    for preset in PRESETS:
        seconds, proc = tinylm(["doctor", "--config", str(preset), "--json"], out)
        try:
            checks = ", ".join(f"{c['name']} {c['status']} ({c['seconds']:.1f}s)"
                               for c in json.loads(proc.stdout)["checks"])
        except ValueError:
            checks = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        lines.append(f"| {preset.name} | {seconds:.1f} | {proc.returncode} | {checks} |")
        print(lines[-1], flush=True)
    return lines


def bench_profile(out: Path, cuda: bool) -> list[str]:
    preset = str(REPO / "configs" / "tinyshakespeare-char.toml")
    runs = {"tinyshakespeare-char": ["--config", preset, "--steps", "5"],
            "GPT-2 small shape": ["--config", preset, *GPT2_SMALL, "--train.batch_size", "8" if cuda else "1",
                                  "--steps", "5" if cuda else "2"]}
    lines = ["## tinylm profile", ""]
    for name, args in runs.items():
        folder = out / f"profile-{name.split()[0].lower()}"
        seconds, proc = tinylm(["profile", *args, "--out", str(folder)], out)
        table = (folder / "profile.md").read_text() if proc.returncode == 0 else proc.stderr[-2000:]
        lines += [f"### {name} ({seconds:.0f} s in all)", "", f"`tinylm profile {' '.join(args)}`", "", table, ""]
        print(lines[-2], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="doctor,profile")
    p.add_argument("--out", default="runs/bench-doctor")
    args = p.parse_args()
    use_shared_data()
    import torch
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    lines = [f"# bench_doctor, {info['date']}", "", machine_line(info), ""]
    parts = args.parts.split(",")
    if "doctor" in parts:
        lines += [*bench_doctor(out), ""]
    if "profile" in parts:
        lines += bench_profile(out, torch.cuda.is_available())
    (out / "bench_doctor.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'bench_doctor.md'}")


if __name__ == "__main__":
    main()
