"""Every GPU figure tinylm tracks, from one command: `make gpu-check` (under 8 minutes on one H100/H200).

    PYTHONPATH=src:benchmarks python3 benchmarks/gpu_check.py --out gpu-check/    # on a machine with a GPU
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/smoke              # the script itself, on the CPU

Runs, one stage after another, each in its own process (a crash or a hang in one is reported and the rest go on),
the most wanted first, and skips what no longer fits in ``--budget`` seconds:

1. ``bench16``: bench_gpu.py at GPT-2 small, batch 16, bf16: tinylm eager and compiled, Hugging Face GPT-2, the
   plain PyTorch GPT (peer_gpt.py); then ``levers16``: each ``--variant`` (tinylm compiled, one lever per row).
2. ``cuda-tests``: tests/test_cuda.py.
3. ``precision``: tinylm eager at batch 16 in fp32 (TF32 matmuls) against bench16's bf16 row: speed and memory.
4. ``profile``: `tinylm profile` at GPT-2 small, batch 8: the share of GPU time per component.
5. ``preset``: `tinylm train --config configs/tinyshakespeare-gpu.toml`: val loss and seconds of training; then
   ``fp8-curve``: GPT-2 small trained 300 steps in bf16 and in fp8 (compiled): the loss curves and tokens/s.
6. ``suite`` and ``ddp-tests``: the test suite's non-slow part and tests/test_ddp.py (pytest-xdist when installed),
   with the GPU visible.
7. ``bench32``: bench_gpu.py at batch 32, every contender.

Writes ONE report, ``gpu-check.md`` (machine, versions, every figure, each goal met or not), and ``gpu-check.json``.
Needs nothing but the machine's own Python with torch (CUDA), numpy, transformers (for the Hugging Face row) and
pytest, and this tree on PYTHONPATH: no pip, no venv. Data: tiny Shakespeare from $TINYLM_SHARED_DATA (a folder
holding tinyshakespeare/input.txt), GPT-2's tokenizer files from $TIKTOKEN_CACHE_DIR for the tests that use it.
``--smoke`` runs every stage on the CPU at tiny shapes (the suite runs it), so a GPU's minutes are never spent on a
crash in this script; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_train import shakespeare_path
from common import gpu_line, machine, machine_line

from tinylm.fileio import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "tinyshakespeare-gpu.toml"
# the goals a GPU run is checked against (GPT-2 small on an H100/H200 unless said)
BF16_SPEEDUP_GOAL = 1.5  # bf16 over fp32 (TF32) tokens/s: the seeds expect 1.5-2.5x on an A100
BF16_MEMORY_SAVING_GOAL = 0.40  # the seeds: bf16 needs ~40% less memory than fp32
PRESET_VAL_GOAL, PRESET_SECONDS_GOAL = 1.47, 60.0  # tiny Shakespeare on one GPU
MLP_SHARE, ATTENTION_SHARE = (0.60, 0.70), (0.20, 0.30)  # the seeds' expectation of the forward's GPU time
FP8_STEPS, FP8_SPEEDUP_GOAL = 300, 1.3  # fp8 training against bf16 at GPT-2 small (compiled, same batches)


class Stage:
    """One step of the check: a name, a share of the budget it may take (seconds), and the function that runs it
    (given the output folder, returns its figures and goals)."""

    def __init__(self, name: str, timeout: float, run: Callable[[Path], dict]):
        self.name, self.timeout, self.run = name, timeout, run


def environment(smoke: bool) -> dict[str, str]:
    """The child processes' environment: this tree on PYTHONPATH; on the CPU (``smoke``) no GPU is looked for."""
    paths = [str(REPO / "src"), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run(cmd: list[str], timeout: float, env: dict[str, str], log_path: Path) -> subprocess.CompletedProcess:
    """``cmd`` with its output in ``log_path``; a timeout kills it and comes back as return code -9."""
    with open(log_path, "w") as out:
        try:
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            out.write(f"\ngpu_check: killed after {timeout:.0f} s\n")
            return subprocess.CompletedProcess(cmd, -9)


def tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def pytest_counts(text: str) -> dict[str, int]:
    """pytest's summary line -> counts: ``"2 failed, 598 passed, 5 skipped in 3.1s" -> {"failed": 2, ...}``."""
    lines = [line for line in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors)\b", line)]
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", lines[-1] if lines
                              else ""):
        counts["error" if what.startswith("error") else what] = int(n)
    return counts


def goal(text: str, value: str, met: bool | None) -> dict:
    """One row of the report's goal table (``met`` None: not measured)."""
    return {"goal": text, "value": value, "met": met}


class Check:
    """The stages at the shapes of a GPU run or of ``--smoke``; each returns {"figures": ..., "goals": [...]}."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]):
        self.args, self.env, self.smoke, self.py = args, env, args.smoke, sys.executable
        self.bench = {}  # batch -> bench_gpu's JSON

    def bench_gpu(self, out: Path, batch: int, *extra: str, name: str | None = None) -> dict:
        path = out / f"{name or f'bench{batch}'}.json"
        size = ["--smoke", "--steps", "2", "--warmup", "1", "--batch", "2"] if self.smoke else ["--batch", str(batch)]
        contenders = ["--contenders", "eager,hf"] if self.smoke else []
        proc = run([self.py, "benchmarks/bench_gpu.py", *size, *contenders, *extra, "--json", str(path)],
                   self.args.stage_timeout, self.env, out / f"{path.stem}.log")
        if proc.returncode != 0 or not path.is_file():
            raise RuntimeError(f"bench_gpu exited {proc.returncode}:\n{tail(out / f'{path.stem}.log')}")
        return json.loads(path.read_text())

    def stage_bench(self, batch: int, *, levers: bool = False) -> Callable[[Path], dict]:
        """bench_gpu at ``batch``: every contender, or (``levers``) only the ``--variant`` rows."""
        def stage(out: Path) -> dict:
            variants = [a for v in self.args.variant for a in ("--variant", v)]
            if levers:
                report = self.bench_gpu(out, batch, "--contenders", "", *variants, name=f"levers{batch}")
            else:
                report = self.bench[batch] = self.bench_gpu(out, batch)
            rows = [{k: r[k] for k in ("contender", "step_ms", "tokens_per_s", "mfu", "peak_mem_gib",
                                        "data_wait_pct", "first_step_s", "notes")} for r in report["results"]]
            goals = [goal(f"batch {batch}: {g['goal']}", g["value"], g["met"]) for g in report["goals"]]
            goals += [goal(f"batch {batch}: a contender runs", line, False) for line in report["failed"]]
            return {"figures": {"peak": report["peak"], "rows": rows, "failed": report["failed"]}, "goals": goals}
        return stage

    def stage_precision(self, out: Path) -> dict:
        fp32 = self.bench_gpu(out, 16, "--precision", "fp32", "--contenders", "eager", name="fp32")["results"][0]
        bf16 = next((r for r in self.bench.get(16, {}).get("results", []) if r["contender"].startswith("tinylm eager")),
                    None)
        if bf16 is None:  # bench16 did not run: measure bf16 eager here
            bf16 = self.bench_gpu(out, 16, "--contenders", "eager", name="bf16")["results"][0]
        speedup = bf16["tokens_per_s"] / fp32["tokens_per_s"]
        saving = 1 - bf16["peak_mem_gib"] / fp32["peak_mem_gib"] if fp32["peak_mem_gib"] == fp32["peak_mem_gib"] \
            else float("nan")
        return {"figures": {"fp32": fp32, "bf16": bf16, "bf16_speedup": speedup, "bf16_memory_saving": saving},
                "goals": [goal(f"bf16 >= {BF16_SPEEDUP_GOAL}x fp32 (TF32) tokens/s, eager, batch 16", f"{speedup:.2f}x",
                               speedup >= BF16_SPEEDUP_GOAL),
                          goal(f"bf16 peak memory ~{100 * BF16_MEMORY_SAVING_GOAL:.0f}% below fp32's",
                               f"{100 * saving:.0f}% below", saving >= BF16_MEMORY_SAVING_GOAL - 0.05)]}

    def stage_profile(self, out: Path) -> dict:
        data = Path(tempfile.mkdtemp(prefix="gpu-check-data-"))
        shape = (["--model.n_layer", "2", "--model.n_embd", "64", "--model.n_head", "2", "--model.block_size", "64",
                  "--train.batch_size", "2", "--train.device", "cpu"] if self.smoke else
                 ["--model.n_layer", "12", "--model.n_embd", "768", "--model.n_head", "12", "--model.block_size",
                  "1024", "--train.batch_size", "8", "--model.mlp", "gelu", "--model.norm", "layernorm",
                  "--model.pos", "learned", "--model.bias", "true", "--model.dropout", "0"])
        cmd = [self.py, "-m", "tinylm", "profile", "--data.corpus", str(shakespeare_path()),
               "--data.tokenizer", "char", "--data.dir", str(data / "char"), "--run.dir", str(data / "runs"),
               "--run.name", "gpt2-small", "--model.vocab_size", "50257", *shape,
               "--steps", "2" if self.smoke else "5", "--out", str(out / "profile")]
        proc = run(cmd, self.args.stage_timeout, self.env, out / "profile.log")
        if proc.returncode != 0:
            raise RuntimeError(f"tinylm profile exited {proc.returncode}:\n{tail(out / 'profile.log')}")
        result = json.loads((out / "profile" / "profile.json").read_text())
        rows = {r["label"]: r for r in result["rows"]}
        forward = sum(rows[k]["ms_per_step"] for k in ("embedding", "norm", "attn.qkv", "attn.kernel", "attn.proj",
                                                       "mlp", "head+loss", "forward-rest"))
        mlp = rows["mlp"]["ms_per_step"] / forward
        attention = sum(rows[k]["ms_per_step"] for k in ("attn.qkv", "attn.kernel", "attn.proj")) / forward
        return {"figures": {"step_ms": result["step_ms"], "mlp_share_of_forward": mlp,
                            "attention_share_of_forward": attention, "rows": result["rows"]},
                "goals": [goal("profile: MLP 60-70% of the forward's GPU time (the seeds)", f"{100 * mlp:.0f}%",
                               MLP_SHARE[0] <= mlp <= MLP_SHARE[1]),
                          goal("profile: attention 20-30% of the forward's GPU time (the seeds)",
                               f"{100 * attention:.0f}%", ATTENTION_SHARE[0] <= attention <= ATTENTION_SHARE[1])]}

    def stage_preset(self, out: Path) -> dict:
        if not PRESET.is_file():
            raise RuntimeError(f"{PRESET.relative_to(REPO)} does not exist yet")
        runs = Path(tempfile.mkdtemp(prefix="gpu-check-preset-"))
        extra = (["--train.device", "cpu", "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
                  "--train.time_budget", "5s", "--train.eval_interval", "0", "--train.compile", "false"]
                 if self.smoke else [])
        cmd = [self.py, "-m", "tinylm", "train", "--config", str(PRESET), "--data.corpus", str(shakespeare_path()),
               "--data.dir", str(runs / "data"), "--run.dir", str(runs), "--run.name", "preset",
               "--run.progress", "false", *extra]
        t0 = time.perf_counter()
        proc = run(cmd, self.args.stage_timeout, self.env, out / "preset.log")
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the preset's run exited {proc.returncode}:\n{tail(out / 'preset.log')}")
        records = [json.loads(line) for line in (runs / "preset" / "metrics.jsonl").read_text().splitlines() if line]
        evals = [r for r in records if "val_loss" in r]
        steps = [r for r in records if "loss" in r and "elapsed_s" in r]
        val = evals[-1]["val_loss"] if evals else float("nan")
        seconds = steps[-1]["elapsed_s"] if steps else float("nan")
        return {"figures": {"final_val_loss": val, "training_s": seconds, "wall_s": wall,
                            "steps": steps[-1]["step"] if steps else 0,
                            "best_val_loss": min((r["val_loss"] for r in evals), default=float("nan"))},
                "goals": [goal(f"tinyshakespeare-gpu: val <= {PRESET_VAL_GOAL} in <= {PRESET_SECONDS_GOAL:.0f} s of "
                               f"training", f"{val:.4f} after {seconds:.0f} s",
                               val <= PRESET_VAL_GOAL and seconds <= PRESET_SECONDS_GOAL * 1.05)]}

    def stage_fp8_curve(self, out: Path) -> dict:
        """GPT-2 small for FP8_STEPS steps in bf16 and in fp8 (compiled, same seed and batches): is fp8's loss
        curve within the noise of bf16's, and how fast is each? (``--smoke``: fp32 stands in for fp8 on the CPU.)"""
        runs = Path(tempfile.mkdtemp(prefix="gpu-check-fp8-"))
        other = "fp32" if self.smoke else "fp8"
        shape = (["--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--model.block_size", "32",
                  "--train.batch_size", "2", "--train.device", "cpu", "--train.compile", "false"] if self.smoke else
                 ["--model.n_layer", "12", "--model.n_embd", "768", "--model.n_head", "12", "--model.block_size",
                  "1024", "--train.batch_size", "16", "--model.mlp", "gelu", "--model.norm", "layernorm",
                  "--model.pos", "learned", "--model.dropout", "0", "--train.compile", "true"])
        steps = 20 if self.smoke else FP8_STEPS
        curves = {}
        for precision in ("bf16", other):
            cmd = [self.py, "-m", "tinylm", "train", "--data.corpus", str(shakespeare_path()), "--data.tokenizer",
                   "char", "--data.dir", str(runs / "data"), "--run.dir", str(runs), "--run.name", precision,
                   "--model.vocab_size", "50257", *shape, "--train.precision", precision, "--train.max_steps",
                   str(steps), "--train.log_interval", "1", "--train.eval_interval", "0", "--train.eval_tokens",
                   "4096", "--run.progress", "false", "--run.report", "false", "--sample.max_new_tokens", "1"]
            log = out / f"train-{precision}.log"
            proc = run(cmd, self.args.stage_timeout / 2, self.env, log)
            if proc.returncode != 0:
                raise RuntimeError(f"the {precision} run exited {proc.returncode}:\n{tail(log)}")
            records = [json.loads(line) for line in (runs / precision / "metrics.jsonl").read_text().splitlines()]
            curves[precision] = [r for r in records if "loss" in r and "tokens_per_s" in r]
        last = max(steps // 5, 5)  # the last fifth of the run
        mean = {p: sum(r["loss"] for r in c[-last:]) / last for p, c in curves.items()}
        bf16 = [r["loss"] for r in curves["bf16"][-last:]]
        noise = 2 * (sum((x - mean["bf16"]) ** 2 for x in bf16) / (last - 1)) ** 0.5  # two standard deviations
        speed = {p: sum(r["tokens_per_s"] for r in c[-last:]) / last for p, c in curves.items()}
        ratio, gap = speed[other] / speed["bf16"], abs(mean[other] - mean["bf16"])
        return {"figures": {"steps": steps, "mean_loss_last": mean, "bf16_noise_2sd": noise, "tokens_per_s": speed},
                "goals": [goal(f"{other} loss over the last {last} of {steps} steps within bf16's noise (2 sd)",
                               f"{mean[other]:.4f} vs {mean['bf16']:.4f} (2 sd {noise:.4f})", gap <= noise),
                          goal(f"{other} >= {FP8_SPEEDUP_GOAL}x bf16 tokens/s in training", f"{ratio:.2f}x",
                               ratio >= FP8_SPEEDUP_GOAL)]}

    def stage_pytest(self, name: str, args: list[str]) -> Callable[[Path], dict]:
        def stage(out: Path) -> dict:
            run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], self.args.stage_timeout, self.env,
                out / f"{name}.log")
            text = (out / f"{name}.log").read_text(errors="replace")
            counts = pytest_counts(text)
            failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)))
            ok = bool(counts) and not counts.get("failed") and not counts.get("error")
            return {"figures": {"counts": counts, "failed": failed},
                    "goals": [goal(f"{name}: no test fails", ", ".join(f"{v} {k}" for k, v in counts.items()) or
                                   "no summary (see the log)", ok)]}
        return stage

    def stages(self) -> list[Stage]:
        t = self.args.stage_timeout
        workers = ["-n", str(max(2, (os.cpu_count() or 2) - 2))] if importlib.util.find_spec("xdist") else []
        suite = ["tests/test_gpu_host.py", "-k", "peak_table"] if self.smoke else ["-m", "not slow and not cuda",
                                                                                   *workers]
        ddp = [] if self.smoke else [Stage("ddp-tests", t, self.stage_pytest("ddp-tests",
                                                                             ["tests/test_ddp.py", *workers]))]
        levers = [Stage("levers16", t, self.stage_bench(16, levers=True))] if self.args.variant else []
        return [Stage("bench16", t, self.stage_bench(16)), *levers,
                Stage("cuda-tests", t, self.stage_pytest("cuda-tests", ["-m", "cuda", "tests/test_cuda.py"])),
                Stage("precision", t, self.stage_precision), Stage("profile", t, self.stage_profile),
                Stage("preset", t, self.stage_preset), Stage("fp8-curve", t, self.stage_fp8_curve),
                Stage("suite", t, self.stage_pytest("suite", suite)), *ddp,
                Stage("bench32", t, self.stage_bench(32))]


def report(info: dict, results: dict[str, dict], smoke: bool) -> str:
    """The one markdown report: machine, then every goal, then each stage's figures."""
    title = f"# tinylm GPU check, {info['date']}" + (" (smoke test on the CPU: figures mean nothing)" if smoke else "")
    lines = [title,
             "", f"GPU: {info['gpu']}", f"host: {machine_line(info)}", f"tree: {info.get('git', '?')}", "",
             "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for name, r in results.items():
        for g in r.get("goals", []):
            met = "n/a" if g["met"] is None else "yes" if g["met"] else "**no**"
            lines.append(f"| {g['goal']} | {g['value']} | {met} |")
        if "error" in r:
            lines.append(f"| {name} | {r['error'].splitlines()[0]} | **not measured** |")
    for name, r in results.items():
        lines += ["", f"## {name} ({r['seconds']:.0f} s)", ""]
        if "error" in r:
            lines += ["```", r["error"], "```"]
            continue
        figures = r["figures"]
        if "rows" in figures and name.startswith(("bench", "levers")):
            lines += [figures["peak"], "",
                      "| contender | ms/step | tokens/s | MFU | peak memory | data wait | first step |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {row['contender']} | {row['step_ms']:.1f} | {row['tokens_per_s']:,.0f} | "
                      f"{'n/a' if row['mfu'] is None else format(row['mfu'], '.1%')} | "
                      f"{row['peak_mem_gib']:.1f} GiB | {row['data_wait_pct']:.2f}% | {row['first_step_s']:.1f} s |"
                      for row in figures["rows"]]
        elif name == "profile":
            lines += [f"{figures['step_ms']:.1f} ms/step; MLP {100 * figures['mlp_share_of_forward']:.0f}% and "
                      f"attention {100 * figures['attention_share_of_forward']:.0f}% of the forward's GPU time", "",
                      "| component | GPU ms / step | host ms / step | share of step |", "|---|---:|---:|---:|"]
            lines += [f"| {row['component']} | {row['ms_per_step']:.2f} | {row['host_ms_per_step']:.2f} | "
                      f"{100 * row['share_of_step']:.1f}% |" for row in figures["rows"]]
        else:
            lines += ["```", json.dumps(figures, indent=1, default=str)[:4000], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu-check.md/.json and logs")
    p.add_argument("--smoke", action="store_true", help="every stage on the CPU at tiny shapes (checks the script)")
    p.add_argument("--budget", type=float, default=470, help="seconds in all; a stage that no longer fits is skipped")
    p.add_argument("--stage-timeout", type=float, default=240, help="seconds one stage may take before it is killed")
    p.add_argument("--only", help="comma-separated stage names to run (default: all)")
    p.add_argument("--variant", action="append", default=[],
                   help="a bench_gpu --variant (NAME=KEY:VALUE,...) for the levers16 stage (repeatable)")
    args = p.parse_args(argv)
    import torch
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(f"gpu_check: {gpu_line()}: this check needs an NVIDIA GPU and a CUDA build of torch "
                 f"(--smoke runs it on the CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args, environment(args.smoke))
    stages = check.stages()
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {s.name for s in stages}:
            p.error(f"--only: unknown stage(s) {', '.join(sorted(unknown))}; "
                    f"choose from {', '.join(s.name for s in stages)}")
        stages = [s for s in stages if s.name in wanted]
    info = machine("transformers")
    info["gpu"] = gpu_line() if not args.smoke else "none (smoke test)"
    start, results = time.perf_counter(), {}
    for stage in stages:
        left = args.budget - (time.perf_counter() - start)
        if left < 20:
            results[stage.name] = {"error": f"skipped: {left:.0f} s of the {args.budget:.0f} s budget left",
                                   "seconds": 0.0}
            continue
        args.stage_timeout = min(stage.timeout, left)
        print(f"gpu_check: {stage.name} (up to {args.stage_timeout:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            results[stage.name] = stage.run(args.out)
        except Exception as e:  # a failed stage is a finding: the others still run
            results[stage.name] = {"error": f"{type(e).__name__}: {e}"}
        results[stage.name]["seconds"] = time.perf_counter() - t0
        for g in results[stage.name].get("goals", []):
            print(f"  {g['goal']}: {g['value']} ({'met' if g['met'] else 'NOT met'})", flush=True)
        if "error" in results[stage.name]:
            print(f"  failed: {results[stage.name]['error'].splitlines()[0]}", flush=True)
    md = report(info, results, args.smoke)
    write_text_atomic(args.out / "gpu-check.md", md)
    write_text_atomic(args.out / "gpu-check.json", json.dumps({"machine": info, "smoke": args.smoke,
                                                               "command": sys.argv, "stages": results},
                                                              indent=1, default=str) + "\n")
    print(md)
    print(f"gpu_check: wrote {args.out / 'gpu-check.md'} and gpu-check.json in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
