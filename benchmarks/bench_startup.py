"""How long the command line takes to start, and which commands load torch.

    .venv/bin/python benchmarks/bench_startup.py                  # ~1 minute on 2 cores
    .venv/bin/python benchmarks/bench_startup.py --repeat 15 --json out.json

Each command runs as a fresh process, as a user starts it, --repeat times in rounds that alternate
the commands (so a busy moment hits all of them); the table gives the median wall time [best] and
the median CPU time. A separate run under ``python -X importtime`` says whether torch was imported
and what the slowest top-level import was. ``python -c pass`` is the interpreter's own start.
``tokenizer train`` trains on a 100 KB slice of tiny Shakespeare to vocab 512 (one process), so
its time is mostly the command's start.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import SHARED, Meter, machine, machine_line

DATA = Path(os.environ.get("TINYLM_SHARED_DATA", SHARED / "data"))


def commands(tmp: Path) -> dict[str, list[str]]:
    """What is timed: label -> the arguments after ``python``."""
    corpus = tmp / "slice.txt"
    corpus.write_text((DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000],
                      encoding="utf-8")
    return {
        "python -c pass": ["-c", "pass"],
        "tinylm --help": ["-m", "tinylm", "--help"],
        "tinylm config --keys": ["-m", "tinylm", "config", "--keys"],
        "python -c 'import tinylm.config'": ["-c", "import tinylm.config"],
        "python -c 'import tinylm'": ["-c", "import tinylm"],
        "tinylm tokenizer train (100 KB, vocab 512)": [
            "-m", "tinylm", "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "512",
            "--workers", "1", "--out", str(tmp / "tok.txt")],
    }


def import_profile(args: list[str]) -> tuple[bool, str]:
    """(whether torch was imported, the slowest top-level import and its cumulative ms) of one run."""
    err = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                         check=True).stderr
    rows = [m.groups() for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", err, re.M)]
    top = [(int(us), name) for us, indent, name in rows if len(indent) == 1]
    us, name = max(top, default=(0, "-"))
    return any(name == "torch" for _, _, name in rows), f"{name} {us / 1000:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="runs of each command (default 9)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(Path(tmp))
        meters = {label: Meter() for label in cmds}
        for _ in range(args.repeat):
            for label, cmd in cmds.items():
                meters[label](lambda cmd=cmd: subprocess.run([sys.executable, *cmd], check=True,
                                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        profiles = {label: import_profile(cmd) for label, cmd in cmds.items()}
    info["loadavg_after"] = os.getloadavg()
    print(f"## Command-line start-up ({info['date']})\n")
    print(f"machine: {machine_line(info)}; load average after: {' '.join(f'{x:.2f}' for x in info['loadavg_after'])}")
    print(f"command: python benchmarks/bench_startup.py --repeat {args.repeat}\n")
    print("| command | wall: median [best]; CPU median | torch imported | slowest top-level import |")
    print("|---|---|---|---|")
    for label, m in meters.items():
        torch_loaded, slowest = profiles[label]
        print(f"| `{label}` | {m.cell()} | {'yes' if torch_loaded else 'no'} | {slowest} |")
    if args.json:
        results = {label: {"wall": m.wall, "cpu": m.cpu, "median": statistics.median(m.wall),
                           "torch": profiles[label][0], "slowest_import": profiles[label][1]}
                   for label, m in meters.items()}
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
