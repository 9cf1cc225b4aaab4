"""Training throughput (tokens/s): tinylm vs Hugging Face GPT-2, side by side, on the same batches.

    .venv/bin/python benchmarks/bench_train.py                    # full run: ~13 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --steps 4 --vocab char --loop-check-steps 0   # smoke test
    .venv/bin/python benchmarks/bench_train.py --wait-idle 95 --json bench_train.json --profile
    .venv/bin/python benchmarks/bench_train.py --vocab char --layers 6 --width 384 --heads 6  # the 10M-parameter row

Contenders (one process, one thread setting, the same sequence of batches for each):

* tinylm, precision "auto" (what ``tinylm train`` uses by default: bf16 only where the CPU has
  AVX512-BF16/AMX, else fp32), then the other precision path forced (fp32 where auto is bf16; bf16 where
  auto is fp32 only with --emulated-bf16: emulated bf16 is tens of times slower), then ``torch.compile``
  (auto precision; the compile time is reported apart from the steady-state step time).
* transformers ``GPT2LMHeadModel(GPT2Config(...))``, random init, its default attention
  implementation and default ``torch.optim.AdamW`` implementation, in fp32 and under bf16 autocast (bf16 as
  for tinylm).

Same shape for both: by default 4 layers, width 256, 4 heads (--layers/--width/--heads), context 128,
batch 32, dropout 0, tied embeddings, learned positions, GELU MLP x4. Same optimizer hyperparameters
(AdamW lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, global-norm clip 1.0). Differences that remain are
the libraries' own choices and are printed: tinylm has no biases and LayerNorm without bias,
decays only hidden matrices, uses fused AdamW and its own attention choice, and its default GELU is the exact
(erf) one, faster on a CPU than GPT-2's tanh approximation (a tinylm row with tanh GELU is timed too, HF's function
in tinylm's step); GPT-2 has biases everywhere and decays every parameter (plain ``model.parameters()``, as a
user would write it).

Method: random windows of tiny Shakespeare (character ids built with numpy, fixed seed); warm-up
steps excluded; the timed steps are split into rounds run in turn (A B C D E, A B C D E) so that
machine drift hits every contender alike; the median step gives tokens/s.

tinylm's step is the library's own: a ``tinylm.training.trainer.Trainer`` is built from a config (shape set,
everything else default) over shards made by ``tinylm.data.prepare``, and each step is its
``train_step`` (forward under ``autocast_context``, backward, ``clip_grad_norm_``, the non-finite
check, ``optimizer.step``, ``zero_grad``), fed the shared batch instead of its loader's. The
Trainer's real ``BatchLoader`` is called beside every timed step and its wait timed apart. Finally
``tinylm.training.trainer.train`` runs a few steps on its own batches as a cross-check of the tokens/s and the
data_ms / compute_ms it logs. The peer's step is the same operations written out in plain PyTorch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import SHARED, Meter, cpu_idle_pct, load_average, machine, machine_line, time_call, wait_for_quiet

from tinylm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from tinylm.data.loader import BatchLoader
from tinylm.data.prepare import prepare
from tinylm.training.runtime import autocast_context, cpu_has_fast_bf16, resolve_precision
from tinylm.training.tracking import read_metrics
from tinylm.training.trainer import Trainer

N_LAYER, N_EMBD, N_HEAD, BLOCK, BATCH = 4, 256, 4, 128, 32
SEED = 1337
DEVICE = torch.device("cpu")


# --------------------------------------------------------------------------- data

def shakespeare_path() -> Path:
    # the tests' variable, then the library's, then shared/data beside the repository
    env = os.environ.get("TINYLM_SHARED_DATA") or os.environ.get("TINYLM_DATA_DIR")
    root = Path(env) if env else SHARED / "data"
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
    precision: str  # fp32 | bf16, as resolved
    raw: torch.nn.Module  # the module that owns the parameters
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # one optimizer step on (x, y) -> loss
    notes: str = ""
    loader: BatchLoader | None = None  # when set, its batch wait is timed beside every step
    step_s: list[list[float]] = field(default_factory=list)  # per round
    cpu_s: float = 0.0  # process CPU seconds during timed steps (all threads)
    wall_s: float = 0.0  # wall seconds of the same steps
    data_s: list[float] = field(default_factory=list)
    first_step_s: float = math.nan
    last_loss: float = math.nan


@dataclass
class Setup:
    data: DataConfig  # the prepared shards every tinylm Trainer reads
    runs: Path  # scratch parent of the Trainers' run folders
    made: int = 0
    trainers: list = field(default_factory=list)  # closed (run folders unlocked, loaders stopped) at the end


def tinylm_model_config(vocab: int) -> ModelConfig:
    # only the shape is set; every other option is tinylm's default
    return ModelConfig(vocab_size=vocab, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD,
                       n_embd=N_EMBD, dropout=0.0)


class _Feed:
    """Stands in for a Trainer's BatchLoader: hands it the shared batch of the current step."""

    batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def make_tinylm(setup: Setup, vocab: int, precision: str, compile_model: bool = False,
                name: str = "", mlp: str = "") -> Contender:
    """A real ``tinylm.training.trainer.Trainer``; each step is its ``train_step`` on the shared batch. ``mlp`` replaces
    the default MLP kind (e.g. "gelu": GPT-2's tanh GELU, the function HF's gelu_new computes)."""
    setup.made += 1
    model = tinylm_model_config(vocab)
    model.mlp = mlp or model.mlp
    cfg = Config(model=model, data=setup.data,
                 train=TrainConfig(batch_size=BATCH, precision=precision, compile=compile_model,
                                   device=DEVICE.type, eval_tokens=BATCH * BLOCK))
    cfg.run.dir, cfg.run.name, cfg.run.progress = str(setup.runs), f"tinylm-{setup.made}", False
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    setup.trainers.append(trainer)
    loader, feed = trainer.loader, _Feed()
    trainer.use_batches(feed)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feed.batch = (x, y)
        return trainer.train_step(1.0)["loss"]  # peak LR: the schedule does not change the cost

    d = trainer.optimizer.defaults
    impl = "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"
    c = Contender(name or f"tinylm {trainer.precision}", trainer.precision, trainer.raw_model, step,
                  notes=f"Trainer.train_step, attention {trainer.attention}, AdamW {impl}"
                        + (", torch.compile" if compile_model else ""))
    c.loader = loader  # the Trainer's own loader, timed apart (see timed_steps)
    return c


def hf_config(vocab: int):
    from transformers import GPT2Config

    extra = {} if vocab > 50256 else {"bos_token_id": None, "eos_token_id": None}
    return GPT2Config(vocab_size=vocab, n_positions=BLOCK, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra)


def make_hf(vocab: int, precision: str) -> Contender:
    """GPT2LMHeadModel with a plain PyTorch step: the operations of tinylm's, without its checks."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(hf_config(vocab)).to(DEVICE).train()
    o = OptimConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            weight_decay=o.weight_decay)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(precision, DEVICE):
            # shift_labels: train on exactly tinylm's (x, y) pairs (labels= alone would shift x itself)
            loss = model(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return Contender(f"HF GPT-2 {precision}", precision, model, step,
                     notes=f"attn={model.config._attn_implementation}, "
                           f"act={model.config.activation_function}, AdamW default (for-loop on CPU)")


# --------------------------------------------------------------------------- measurement

def gemm_floor_ms(vocab: int, reps: int = 5) -> float:
    """Milliseconds of one training step's linear-layer matmuls alone, in fp32, at this shape.

    Each linear (in -> out) over M = batch x context rows costs three GEMMs per step: the
    forward (M, in) @ (in, out), and in the backward dX = dY @ W (M, out) @ (out, in) and
    dW = dY^T @ X (out, M) @ (M, in). Per block: qkv (d -> 3d), attention output (d -> d),
    MLP (d -> 4d, 4d -> d); plus the head (d -> vocab). Attention's own matmuls (inside SDPA)
    are left out, so this is a lower bound on what any fp32 implementation of the step pays.
    """
    m, d = BATCH * BLOCK, N_EMBD
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * N_LAYER + [(d, vocab)]
    gemms = []
    for i, o in shapes:
        gemms += [(torch.randn(m, i), torch.randn(i, o)), (torch.randn(m, o), torch.randn(o, i)),
                  (torch.randn(o, m), torch.randn(m, i))]
    def all_gemms() -> None:
        for a, b in gemms:
            torch.mm(a, b)

    all_gemms()  # warms up the allocator and the BLAS
    floor = Meter()
    for _ in range(reps):
        floor(all_gemms)
    return 1000 * floor.median


def timed_steps(c: Contender, batches, record: list[float] | None) -> None:
    """One step per batch; with ``record``, each step's wall time is appended to it, and its wall and
    CPU time added to the contender's (the loader's wait, timed apart, is in neither)."""
    step = None
    for x, y in batches:
        if c.loader is not None and record is not None:
            c.data_s.append(time_call(c.loader.next_batch).wall)  # the step trains on the shared batch
        step = time_call(partial(c.step, x, y))
        if record is not None:
            record.append(step.wall)
            c.wall_s += step.wall
            c.cpu_s += step.cpu
    if step is not None:
        c.last_loss = float(step.result)


def run_setting(setup: Setup, vocab: int, ids: np.ndarray, args, log) -> dict:
    """Build every contender for one vocab size, warm them up, then time them in rounds."""
    auto = resolve_precision("auto", DEVICE)
    bf16 = auto == "bf16" or args.emulated_bf16  # bf16 runs where the CPU has it, or where asked for
    contenders = [make_tinylm(setup, vocab, "auto", name=f"tinylm default ({auto})")]
    if bf16:  # the other precision path
        contenders.append(make_tinylm(setup, vocab, "bf16" if auto != "bf16" else "fp32"))
    if contenders[0].raw.cfg.mlp != "gelu":  # the default GELU is exact: also time HF's function, tanh's
        contenders.append(make_tinylm(setup, vocab, "auto", name=f"tinylm {auto}, tanh GELU", mlp="gelu"))
    if args.compile:
        contenders.append(make_tinylm(setup, vocab, "auto", compile_model=True, name=f"tinylm compile ({auto})"))
    for c in contenders[1:]:
        c.loader = None  # the data wait is timed once, beside the default contender
    if args.peer:
        contenders += [make_hf(vocab, p) for p in (("fp32", "bf16") if bf16 else ("fp32",))]
    if not bf16:
        log("  bf16 contenders skipped: this CPU has no AVX512-BF16/AMX, so bf16 is emulated (tens of times slower "
            "than fp32 on an AVX2-only CPU) and the bf16 goals are not measurable here; --emulated-bf16 runs them")

    warm = make_batches(ids, args.warmup, SEED)
    for c in contenders:
        # the first step pays for torch.compile and allocations
        c.first_step_s = time_call(partial(timed_steps, c, warm[:1], None)).wall
        timed_steps(c, warm[1:], None)
        log(f"  warm-up {c.name}: first step {c.first_step_s:.2f}s")

    steps = args.steps
    if steps <= 0:  # auto: about --seconds of timed steps per contender, from tinylm's warm-up speed
        probe = [time_call(partial(timed_steps, contenders[0], [batch], None)).wall
                 for batch in make_batches(ids, 2, SEED + 1)]
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
    floor = gemm_floor_ms(vocab)
    log(f"  GEMM floor (the step's linear-layer matmuls alone, fp32): {floor:.0f} ms")
    return {"vocab": vocab, "steps_per_contender": per_round * args.rounds, "load_1min": loads, "rows": rows,
            "gemm_floor_ms": floor}


def loop_check(setup: Setup, steps: int, log) -> dict:
    """Run the library's own loop (tinylm.training.trainer.train) and read back what it logged."""
    from tinylm.training.trainer import train

    log_every = max(steps // 4, 1)
    cfg = Config(model=tinylm_model_config(0), data=setup.data,  # vocab 0: from the data
                 train=TrainConfig(max_steps=steps, batch_size=BATCH, device=DEVICE.type, eval_interval=0,
                                   eval_tokens=BATCH * BLOCK, log_interval=log_every))
    cfg.sample.max_new_tokens = 1
    cfg.run.dir, cfg.run.name, cfg.run.progress = str(setup.runs), "loop-check", False
    train(cfg, log=lambda *a, **k: None)
    lines = read_metrics(cfg.run_dir)
    logged = [m for m in lines if "tokens_per_s" in m][1:]  # the first window holds the warm-up
    if not logged:
        return {}
    out = {"steps": steps, "windows": len(logged), "log_interval": log_every,
           "tokens_per_s": statistics.median(m["tokens_per_s"] for m in logged),
           "data_ms": statistics.median(m["data_ms"] for m in logged),
           "compute_ms": statistics.median(m["compute_ms"] for m in logged)}
    out["data_pct_of_compute"] = 100 * out["data_ms"] / out["compute_ms"]
    log(f"  tinylm.training.trainer.train: {out['tokens_per_s']:,.0f} tokens/s, data {out['data_ms']:.2f} ms, "
        f"compute {out['compute_ms']:.0f} ms per step")
    return out


def profile(setup: Setup, vocab: int, ids: np.ndarray, steps: int, log) -> dict:
    """Self-CPU time per op over a few steps, tinylm default vs the peer in fp32."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    makers = [("tinylm", lambda: make_tinylm(setup, vocab, "auto"))]
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
    # issue 16's goals: with native bf16, >= 2x HF fp32 and >= 1.3x HF bf16; fp32-only, >= 1.4x HF fp32
    goals = (("HF GPT-2 fp32", 2.0), ("HF GPT-2 bf16", 1.3)) if base["precision"] == "bf16" else \
        (("HF GPT-2 fp32", 1.4),)
    for peer, goal in goals:
        if peer in by:
            ratio = base["tokens_per_s"] / by[peer]["tokens_per_s"]
            lines.append(f"vocab {res['vocab']}: {base['contender']} / {peer} = {ratio:.2f}x "
                         f"(goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})")
    if "HF GPT-2 fp32" in by and "gemm_floor_ms" in res:
        floor, need = res["gemm_floor_ms"], by["HF GPT-2 fp32"]["median_step_ms"] / goals[0][1]
        lines.append(f"vocab {res['vocab']}: GEMM floor {floor:.0f} ms = {100 * floor / base['median_step_ms']:.0f}% "
                     f"of tinylm's step; {goals[0][1]}x HF fp32 needs a step of {need:.0f} ms, "
                     f"{abs(need - floor):.0f} ms {'below' if need < floor else 'above'} the fp32 GEMM floor "
                     f"(tinylm spends {base['median_step_ms'] - floor:.0f} ms above it)")
    if "data_wait_mean_ms" in base:
        lines.append(f"vocab {res['vocab']}: tinylm data wait (BatchLoader) median "
                     f"{base['data_wait_median_ms']:.2f} ms, mean {base['data_wait_mean_ms']:.2f} ms = "
                     f"{base['data_wait_pct_of_step']:.2f}% of the median step (goal < 2%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    global N_LAYER, N_EMBD, N_HEAD  # the shape every contender and the GEMM floor use: --layers/--width/--heads
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per contender and vocab; 0 = enough for about --seconds each")
    p.add_argument("--seconds", type=float, default=25.0, help="target timed seconds per contender (--steps 0)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before timing")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, contenders in turn within each")
    p.add_argument("--vocab", default="char,50257",
                   help="comma list of vocab sizes; char = tiny Shakespeare's prepared character ids, 50257 = GPT-2's "
                        "(the token ids stay character ids: step cost does not depend on their values)")
    p.add_argument("--layers", type=int, default=N_LAYER, help="transformer blocks (both models)")
    p.add_argument("--width", type=int, default=N_EMBD, help="residual width (both models)")
    p.add_argument("--heads", type=int, default=N_HEAD, help="attention heads (both models)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
    p.add_argument("--emulated-bf16", action="store_true",
                   help="also time bf16 (tinylm and HF) on a CPU without native bf16, where it is emulated and slow")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Hugging Face transformers")
    p.add_argument("--loop-check-steps", type=int, default=20,
                   help="steps of tinylm.training.trainer.train as a cross-check (char vocab); 0 skips it")
    p.add_argument("--profile", type=int, nargs="?", const=5, default=0, metavar="STEPS",
                   help="also print torch.profiler tables (tinylm default vs HF fp32), this many steps")
    p.add_argument("--json", type=Path, help="write every figure and the machine description here")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="PCT",
                   help="first wait (up to 60 min) until the CPU has been at least PCT%% idle for 5 s, "
                        "e.g. 95: on a shared machine other jobs would otherwise skew the figures")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use inductor's usual cache (default: a fresh one, so the compile time is a cold start)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.rounds < 1:
        p.error("--warmup and --rounds must be >= 1 (the first step pays for allocation and compilation)")
    if not 0 <= args.wait_idle < 100:
        p.error("--wait-idle is a percentage of idle CPU time, at least 0 and below 100")
    if min(args.layers, args.width, args.heads) < 1 or args.width % args.heads:
        p.error("--layers, --width and --heads must be positive, and --width divisible by --heads")
    N_LAYER, N_EMBD, N_HEAD = args.layers, args.width, args.heads
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

    idle = cpu_idle_pct()
    if args.wait_idle and idle < args.wait_idle:
        busy = wait_for_quiet(1 - args.wait_idle / 100, log, sample_s=5, pause_s=10, timeout_s=3600)
        idle = 100 * (1 - busy)
    info = machine("transformers")
    info.update(cpu_has_fast_bf16=cpu_has_fast_bf16(), auto_precision=resolve_precision("auto", DEVICE),
                cpu_idle_pct_at_start=idle)
    log(f"# tinylm training throughput, {info['date']}")
    log(f"machine: {machine_line(info)}")
    log(f"tinylm auto precision = {info['auto_precision']}; before start: CPU {idle:.0f}% idle over 5 s")
    m = asdict(tinylm_model_config(0))
    log(f"shape: {N_LAYER} layers, width {N_EMBD}, {N_HEAD} heads, context {BLOCK}, batch {BATCH} "
        f"({BATCH * BLOCK} tokens/step); tinylm options: norm={m['norm']} bias={m['bias']} pos={m['pos']} "
        f"mlp={m['mlp']} tie_embeddings={m['tie_embeddings']} qk_norm={m['qk_norm']} dropout=0")

    path = shakespeare_path()
    ids, char_vocab = char_ids(path)
    results = []
    loop, prof = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile and not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # read at first compile
        setup = Setup(DataConfig(corpus=str(path), tokenizer="char", dir=str(Path(tmp) / "shakespeare-char")),
                      Path(tmp) / "runs")
        try:
            meta = prepare(setup.data, progress=False, log=lambda *a, **k: None)
            log(f"data: {path} ({len(ids):,} training characters, vocab {char_vocab}; "
                f"tinylm.data.prepare vocab {meta['vocab_size']})")
            vocabs = [meta["vocab_size"] if s == "char" else int(s) for s in args.vocab.split(",")]
            if min(vocabs) < meta["vocab_size"]:
                sys.exit(f"bench_train.py: --vocab {args.vocab}: the prepared character data has {meta['vocab_size']} "
                         f"ids (its characters and <|endoftext|>); give char or sizes >= {meta['vocab_size']}")
            for v in vocabs:
                log(f"\n## vocab {v}")
                results.append(run_setting(setup, v, ids, args, log))
                log(f"  1-min load average per round boundary: {results[-1]['load_1min']}")
            if args.loop_check_steps:
                log(f"\n## cross-check: tinylm.train (the whole loop, vocab {meta['vocab_size']}, its own batches, "
                    f"run after the rounds)")
                loop = loop_check(setup, args.loop_check_steps, log)
            if args.profile:
                prof = profile(setup, meta["vocab_size"], ids, args.profile, log)
        finally:
            for trainer in setup.trainers:
                trainer.close()

    info["loadavg_end"] = os.getloadavg()
    log("\n## results\n")
    log(markdown(results))
    log("")
    for res in results:
        for line in ratios(res):
            log(line)
    loads = [load_average(info[k]) for k in ("loadavg", "loadavg_end")]
    log(f"\nCPU idle before start {idle:.0f}%; load average at start {loads[0]}, at end {loads[1]} "
        f"(this benchmark alone adds ~{info['torch_threads']}). CPU/wall = busy threads during timed "
        f"steps: well below {info['torch_threads']} means waiting for the CPU (or serial work)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "command": sys.argv, "results": results,
                                         "loop_check": loop, "profile": prof}, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
