"""Training throughput (tokens/s): tinylm vs Hugging Face GPT-2, side by side, on the same batches.

    .venv/bin/python benchmarks/bench_train.py                    # full run (~5 min on 2 cores)
    .venv/bin/python benchmarks/bench_train.py --steps 4 --vocab 65 --loop-check-steps 0   # smoke test
    .venv/bin/python benchmarks/bench_train.py --json bench_train.json --profile

Contenders (one process, one thread setting, the same sequence of batches for each):

* tinylm, precision "auto" (what ``tinylm train`` uses by default: bf16 only where the CPU has
  AVX512-BF16/AMX, else fp32), then explicit bf16 autocast, then ``torch.compile`` (auto precision;
  the compile time is reported apart from the steady-state step time).
* transformers ``GPT2LMHeadModel(GPT2Config(...))``, random init, its default attention
  implementation and default ``torch.optim.AdamW`` implementation, in fp32 and under bf16 autocast.

Same shape for both: 4 layers, width 256, 4 heads, context 128, batch 32, dropout 0, tied
embeddings, learned positions, tanh-GELU MLP x4. Same optimizer hyperparameters (AdamW lr 1e-3,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1, global-norm clip 1.0). Differences that remain are
the libraries' own choices and are printed: tinylm has no biases and LayerNorm without bias,
decays only hidden matrices, uses foreach AdamW; GPT-2 has biases everywhere and decays every
parameter (plain ``model.parameters()``, as a user would write it).

Method: random windows of tiny Shakespeare (character ids built with numpy, fixed seed); warm-up
steps excluded; the timed steps are split into rounds run in turn (A B C D E, A B C D E) so that
machine drift hits every contender alike; the median step time gives tokens/s. For tinylm the
data wait (``BatchLoader`` + ``TokenWindows`` over shards made by ``tinylm.data.prepare``) is
timed on every timed step, outside the step time, and compared with it. Finally the library's own
loop, ``tinylm.train.train``, is run for a few steps as a cross-check of its logged tokens/s and
data_ms / compute_ms.

The step itself mirrors one iteration of ``tinylm.train.train`` with no accumulation (forward
under ``autocast_context``, backward, ``clip_grad_norm_``, ``optimizer.step``,
``zero_grad(set_to_none=True)``); the GradScaler there is disabled except for fp16 on CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import tinylm
from tinylm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from tinylm.data import BatchLoader, TokenWindows, prepare
from tinylm.model import GPT
from tinylm.optim import build_optimizer
from tinylm.train import autocast_context, cpu_has_fast_bf16, resolve_precision

REPO = Path(__file__).resolve().parents[1]
N_LAYER, N_EMBD, N_HEAD, BLOCK, BATCH = 4, 256, 4, 128, 32
SEED = 1337
DEVICE = torch.device("cpu")


# --------------------------------------------------------------------------- data

def shakespeare_path() -> Path:
    # the tests' variable, then the library's, then shared/data beside the repository
    env = os.environ.get("TINYLM_SHARED_DATA") or os.environ.get("TINYLM_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    path = root / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        sys.exit(f"tiny Shakespeare not found at {path}; set TINYLM_SHARED_DATA to the folder "
                 f"that holds tinyshakespeare/input.txt")
    return path


def char_ids(path: Path) -> tuple[np.ndarray, int]:
    """The training 90% of the text as character ids (sorted unique characters, like nanoGPT)."""
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lut[c] for c in text), dtype=np.int64, count=len(text))
    return ids[: int(0.9 * len(ids))], len(chars)


def make_batches(ids: np.ndarray, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of random windows: x (B, T) and y = x shifted left by one, both int64."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, len(ids) - BLOCK - 1, size=(n, BATCH))
    cols = np.arange(BLOCK + 1)
    out = []
    for o in offsets:
        buf = torch.from_numpy(ids[o[:, None] + cols[None, :]])  # (B, T + 1)
        out.append((buf[:, :-1].contiguous(), buf[:, 1:].contiguous()))
    return out


# --------------------------------------------------------------------------- contenders

@dataclass
class Contender:
    name: str
    precision: str  # fp32 | bf16
    model: torch.nn.Module  # what is called (maybe compiled)
    raw: torch.nn.Module  # what owns the parameters
    optimizer: torch.optim.Optimizer
    forward: callable  # (model, x, y) -> loss
    notes: str = ""
    loader: BatchLoader | None = None  # when set, its batch wait is timed beside every step
    step_s: list[list[float]] = field(default_factory=list)  # per round
    cpu_s: float = 0.0  # process CPU seconds during timed steps (all threads)
    wall_s: float = 0.0  # wall seconds of the same steps
    data_s: list[float] = field(default_factory=list)
    first_step_s: float = math.nan
    last_loss: float = math.nan

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step as ``tinylm.train.train`` does it (batch = one micro-batch)."""
        with autocast_context(self.precision, DEVICE):
            loss = self.forward(self.model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def tinylm_model_config(vocab: int) -> ModelConfig:
    # only the shape is set; every other option is tinylm's default
    return ModelConfig(vocab_size=vocab, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD,
                       n_embd=N_EMBD, dropout=0.0)


def tinylm_forward(model, x, y):
    return model(x, y)[1]


def make_tinylm(vocab: int, precision: str, compile_model: bool = False, name: str = "") -> Contender:
    torch.manual_seed(SEED)
    raw = GPT(tinylm_model_config(vocab)).to(DEVICE).train()
    opt = build_optimizer(raw, OptimConfig(), DEVICE.type)
    model = torch.compile(raw) if compile_model else raw
    impl = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else "for-loop"
    return Contender(name or f"tinylm {precision}", precision, model, raw, opt, tinylm_forward,
                     notes=f"SDPA, AdamW {impl}" + (", torch.compile" if compile_model else ""))


def hf_config(vocab: int):
    from transformers import GPT2Config

    extra = {} if vocab > 50256 else {"bos_token_id": None, "eos_token_id": None}
    return GPT2Config(vocab_size=vocab, n_positions=BLOCK, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra)


def hf_forward(model, x, y):
    # shift_labels: train on exactly tinylm's (x, y) pairs (labels= alone would shift x itself)
    return model(input_ids=x, labels=y, shift_labels=y).loss


def make_hf(vocab: int, precision: str) -> Contender:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(hf_config(vocab)).to(DEVICE).train()
    o = OptimConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            weight_decay=o.weight_decay)
    return Contender(f"HF GPT-2 {precision}", precision, model, model, opt, hf_forward,
                     notes=f"attn={model.config._attn_implementation}, "
                           f"act={model.config.activation_function}, AdamW default (for-loop on CPU)")


# --------------------------------------------------------------------------- measurement

def timed_steps(c: Contender, batches, record: list[float] | None) -> None:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for x, y in batches:
        if c.loader is not None and record is not None:
            t0 = time.perf_counter()
            c.loader.next_batch()  # timed apart; the step trains on the shared batch
            c.data_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loss = c.step(x, y)
        dt = time.perf_counter() - t0
        if record is not None:
            record.append(dt)
    c.last_loss = float(loss)
    if record is not None:
        c.cpu_s += time.process_time() - cpu0
        c.wall_s += time.perf_counter() - wall0


def run_setting(vocab: int, ids: np.ndarray, args, loader: BatchLoader | None, log) -> dict:
    """Build every contender for one vocab size, warm them up, then time them in rounds."""
    auto = resolve_precision("auto", DEVICE)
    contenders = [make_tinylm(vocab, auto, name=f"tinylm default ({auto})")]
    contenders[0].loader = loader
    if auto != "bf16":
        contenders.append(make_tinylm(vocab, "bf16"))
    if args.compile:
        contenders.append(make_tinylm(vocab, auto, compile_model=True, name=f"tinylm compile ({auto})"))
    if args.peer:
        contenders += [make_hf(vocab, "fp32"), make_hf(vocab, "bf16")]

    warm = make_batches(ids, args.warmup, SEED)
    for c in contenders:
        t0 = time.perf_counter()
        timed_steps(c, warm[:1], None)  # the first step pays for torch.compile and allocations
        c.first_step_s = time.perf_counter() - t0
        timed_steps(c, warm[1:], None)
        log(f"  warm-up {c.name}: first step {c.first_step_s:.2f}s")

    steps = args.steps
    if steps <= 0:  # auto: about --seconds of timed steps per contender, from tinylm's warm-up speed
        probe = []
        for batch in make_batches(ids, 2, SEED + 1):
            t0 = time.perf_counter()
            timed_steps(contenders[0], [batch], None)
            probe.append(time.perf_counter() - t0)
        steps = max(args.rounds, round(args.seconds / min(probe)))
    per_round = math.ceil(steps / args.rounds)
    batches = make_batches(ids, per_round * args.rounds, SEED + 2)
    log(f"  timing {per_round} steps x {args.rounds} rounds per contender")
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        chunk = batches[r * per_round:(r + 1) * per_round]
        for c in contenders:
            c.step_s.append([])
            timed_steps(c, chunk, c.step_s[-1])
            log(f"  round {r + 1} {c.name}: median {1000 * statistics.median(c.step_s[-1]):.0f} ms/step")
        loads.append(os.getloadavg()[0])

    tokens = BATCH * BLOCK
    rows = []
    for c in contenders:
        all_s = [s for rnd in c.step_s for s in rnd]
        med = statistics.median(all_s)
        row = {"vocab": vocab, "contender": c.name, "precision": c.precision, "notes": c.notes,
               "params": sum(p.numel() for p in c.raw.parameters()),
               "steps": len(all_s), "median_step_ms": 1000 * med, "mean_step_ms": 1000 * statistics.mean(all_s),
               "min_step_ms": 1000 * min(all_s), "max_step_ms": 1000 * max(all_s),
               "round_median_ms": [1000 * statistics.median(rnd) for rnd in c.step_s],
               "tokens_per_s": tokens / med, "first_step_s": c.first_step_s, "final_loss": c.last_loss,
               # busy threads on average; well below torch's thread count = waiting for the CPU
               "cpu_per_wall": c.cpu_s / c.wall_s}
        if "compile" in c.name:
            row["compile_s"] = c.first_step_s - med  # first call minus a steady step
        if c.data_s:
            row["data_wait_median_ms"] = 1000 * statistics.median(c.data_s)
            row["data_wait_mean_ms"] = 1000 * statistics.mean(c.data_s)
            row["data_wait_pct_of_step"] = 100 * statistics.mean(c.data_s) / med
        rows.append(row)
    return {"vocab": vocab, "steps_per_contender": per_round * args.rounds, "load_1min": loads, "rows": rows}


def loop_check(corpus_dir: Path, steps: int, log) -> dict:
    """Run the library's own loop (tinylm.train.train) and read back what it logged."""
    from tinylm.train import train

    log_every = max(steps // 4, 1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.model = tinylm_model_config(0)  # 0: vocab from the data
        cfg.data.corpus, cfg.data.tokenizer, cfg.data.dir = str(corpus_dir), "char", str(Path(tmp) / "data")
        cfg.train = TrainConfig(max_steps=steps, batch_size=BATCH, eval_interval=0, eval_batches=1,
                                log_interval=log_every)
        cfg.sample.max_new_tokens = 1
        cfg.run.dir, cfg.run.name, cfg.run.progress = str(Path(tmp) / "runs"), "bench", False
        train(cfg, log=lambda *a, **k: None)
        lines = [json.loads(s) for s in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in lines if "tokens_per_s" in m][1:]  # the first window holds the warm-up
    if not logged:
        return {}
    out = {"steps": steps, "windows": len(logged), "log_interval": log_every,
           "tokens_per_s": statistics.median(m["tokens_per_s"] for m in logged),
           "data_ms": statistics.median(m["data_ms"] for m in logged),
           "compute_ms": statistics.median(m["compute_ms"] for m in logged)}
    out["data_pct_of_compute"] = 100 * out["data_ms"] / out["compute_ms"]
    log(f"  tinylm.train.train: {out['tokens_per_s']:,.0f} tokens/s, data {out['data_ms']:.2f} ms, "
        f"compute {out['compute_ms']:.0f} ms per step")
    return out


def profile(vocab: int, ids: np.ndarray, steps: int, log) -> dict:
    """Self-CPU time per op over a few steps, tinylm default vs the peer in fp32."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    makers = [("tinylm", lambda: make_tinylm(vocab, resolve_precision("auto", DEVICE)))]
    with contextlib.suppress(ImportError):
        import transformers  # noqa: F401
        makers.append(("hf", lambda: make_hf(vocab, "fp32")))
    batches = make_batches(ids, steps + 2, SEED + 3)
    for key, make in makers:
        c = make()
        timed_steps(c, batches[:2], None)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(c, batches[2:], None)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        log(f"\n### profile: {c.name}, vocab {vocab}, {steps} steps\n{table}")
        out[key] = table
    return out


# --------------------------------------------------------------------------- report

def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "cpu_has_fast_bf16": cpu_has_fast_bf16(),
            "auto_precision": resolve_precision("auto", DEVICE),
            "python": platform.python_version(), "torch": torch.__version__, "tinylm": tinylm.__version__
            if hasattr(tinylm, "__version__") else "src", "loadavg": os.getloadavg()}
    with contextlib.suppress(ImportError):
        import transformers
        info["transformers"] = transformers.__version__
    with contextlib.suppress(Exception):
        info["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True, check=True).stdout.strip()
    return info


def markdown(results: list[dict]) -> str:
    head = ("| vocab | contender | precision | median ms/step | tokens/s | x tinylm default | "
            "rounds (ms) | CPU/wall | notes |")
    out = [head, "|---|---|---|---:|---:|---:|---|---:|---|"]
    for res in results:
        base = res["rows"][0]["tokens_per_s"]
        for r in res["rows"]:
            rounds = " / ".join(f"{m:.0f}" for m in r["round_median_ms"])
            note = r["notes"] + (f"; compile {r['compile_s']:.1f} s" if "compile_s" in r else "")
            out.append(f"| {r['vocab']} | {r['contender']} | {r['precision']} | {r['median_step_ms']:.0f} | "
                       f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f} | {rounds} | "
                       f"{r['cpu_per_wall']:.2f} | {note} |")
    return "\n".join(out)


def ratios(res: dict) -> list[str]:
    by = {r["contender"]: r for r in res["rows"]}
    base = res["rows"][0]
    lines = []
    for peer, goal in (("HF GPT-2 fp32", 2.0), ("HF GPT-2 bf16", 1.2)):
        if peer in by:
            ratio = base["tokens_per_s"] / by[peer]["tokens_per_s"]
            lines.append(f"vocab {res['vocab']}: {base['contender']} / {peer} = {ratio:.2f}x "
                         f"(goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})")
    if "data_wait_mean_ms" in base:
        lines.append(f"vocab {res['vocab']}: tinylm data wait (BatchLoader) median "
                     f"{base['data_wait_median_ms']:.2f} ms, mean {base['data_wait_mean_ms']:.2f} ms = "
                     f"{base['data_wait_pct_of_step']:.2f}% of the median step (goal < 2%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per contender and vocab; 0 = enough for about --seconds each")
    p.add_argument("--seconds", type=float, default=25.0, help="target timed seconds per contender (--steps 0)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before timing")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, contenders in turn within each")
    p.add_argument("--vocab", default="65,50257",
                   help="comma list of vocab sizes; 65 = tiny Shakespeare's characters, 50257 = GPT-2's "
                        "(the token ids stay character ids: step cost does not depend on their values)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Hugging Face transformers")
    p.add_argument("--loop-check-steps", type=int, default=20,
                   help="steps of tinylm.train.train as a cross-check (vocab 65); 0 skips it")
    p.add_argument("--profile", type=int, nargs="?", const=5, default=0, metavar="STEPS",
                   help="also print torch.profiler tables (tinylm default vs HF fp32), this many steps")
    p.add_argument("--json", type=Path, help="write every figure and the machine description here")
    p.add_argument("--wait-load", type=float, default=0.0, metavar="LOAD",
                   help="first wait (up to 10 min) until the 1-minute load average is below LOAD")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use inductor's usual cache (default: a fresh one, so the compile time is a cold start)")
    args = p.parse_args(argv)
    def log(*a) -> None:
        print(*a, flush=True)

    warnings.filterwarnings("ignore", module="transformers")
    if args.peer:
        try:
            import transformers  # noqa: F401
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
        except ImportError:
            sys.exit("transformers is not installed: `.venv/bin/pip install transformers` "
                     "(or pass --no-peer to time tinylm alone)")

    if args.wait_load:
        deadline = time.time() + 600
        while os.getloadavg()[0] >= args.wait_load and time.time() < deadline:
            print(f"waiting: load average {os.getloadavg()[0]:.2f} >= {args.wait_load}", flush=True)
            time.sleep(15)
    info = machine()
    log(f"# tinylm training throughput, {info['date']}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"capability {info['cpu_capability']}, AVX512-BF16 {info['avx512_bf16']}, AMX {info['amx']} "
        f"-> tinylm auto precision = {info['auto_precision']}")
    log(f"software: python {info['python']}, torch {info['torch']}, transformers "
        f"{info.get('transformers', '-')}, tinylm git {info.get('git', '?')}")
    log(f"load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg'])}")
    m = asdict(tinylm_model_config(0))
    log(f"shape: {N_LAYER} layers, width {N_EMBD}, {N_HEAD} heads, context {BLOCK}, batch {BATCH} "
        f"({BATCH * BLOCK} tokens/step); tinylm options: norm={m['norm']} bias={m['bias']} pos={m['pos']} "
        f"mlp={m['mlp']} (tanh) tie_embeddings={m['tie_embeddings']} qk_norm={m['qk_norm']} dropout=0")

    path = shakespeare_path()
    ids, char_vocab = char_ids(path)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile and not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # read at first compile
        data_dir = Path(tmp) / "shakespeare-char"
        meta = prepare(DataConfig(corpus=str(path), tokenizer="char", dir=str(data_dir)), progress=False,
                       log=lambda *a, **k: None)
        log(f"data: {path} ({len(ids):,} training characters, vocab {char_vocab}; "
            f"tinylm.data.prepare vocab {meta['vocab_size']})")
        for v in (int(s) for s in args.vocab.split(",")):
            log(f"\n## vocab {v}")
            loader = BatchLoader(TokenWindows(data_dir, "train", BLOCK), BATCH, mode=DataConfig().sampling,
                                 seed=TrainConfig().seed)
            results.append(run_setting(v, ids, args, loader, log))
            log(f"  1-min load average per round boundary: {results[-1]['load_1min']}")
    loop = {}
    if args.loop_check_steps:
        log("\n## cross-check: tinylm.train.train (library loop, vocab 65, sequential, not interleaved)")
        loop = loop_check(path, args.loop_check_steps, log)
    prof = profile(char_vocab, ids, args.profile, log) if args.profile else {}

    info["loadavg_end"] = os.getloadavg()
    log("\n## results\n")
    log(markdown(results))
    log("")
    for res in results:
        for line in ratios(res):
            log(line)
    log(f"\nload average at start {' '.join(f'{x:.2f}' for x in info['loadavg'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])} (this benchmark alone adds ~{info['torch_threads']}; "
        f"a start load well above 0 means something else was running). CPU/wall = busy threads "
        f"during timed steps: well below {info['torch_threads']} means waiting for the CPU (or serial work)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "command": sys.argv, "results": results,
                                         "loop_check": loop, "profile": prof}, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
