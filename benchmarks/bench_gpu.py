"""GPT-2 small (124M, context 1024) training on one GPU: tinylm eager and compiled vs Hugging Face GPT-2, same batches.

    .venv/bin/python benchmarks/bench_gpu.py                      # or: make bench-gpu
    .venv/bin/python benchmarks/bench_gpu.py --contenders eager,plain --steps 10   # a subset
    .venv/bin/python benchmarks/bench_gpu.py --batch 32 --json bench_gpu.json       # for BENCHMARKS.md
    .venv/bin/python benchmarks/bench_gpu.py --precision fp32 --contenders eager   # fp32 (TF32 matmuls) vs bf16
    .venv/bin/python benchmarks/bench_gpu.py --variant pad64=model.vocab_pad_to:64  # + a tinylm compiled variant
    .venv/bin/python benchmarks/bench_gpu.py --smoke            # no GPU: the whole script on the CPU, a tiny shape

Without a CUDA device it says so in one line and exits (status 1). ``--smoke`` runs every contender on the CPU at a
tiny shape (2 layers, width 64, context 64, vocab 256, fp32) for a few steps: it checks the script itself (the
test suite runs it), so a GPU session's short time is not spent on a crash; its figures mean nothing.

Contenders, one after another in one process (each freed before the next, so each peak memory is its own):

* tinylm eager: a ``tinylm.training.trainer.Trainer`` (bf16 autocast, fused AdamW, TF32, the prefetching loader: what
  ``tinylm train`` does on CUDA); each step is its ``train_step`` on its own loader's batches.
* tinylm compiled: the same with ``--train.compile true``; the first step (compilation) is reported apart.
* tinylm compiled variants (``--variant NAME=key:value,...``): the compiled Trainer with config overrides, e.g. a
  padded vocabulary; one lever at a time, each in its own row.
* transformers ``GPT2LMHeadModel(GPT2Config(...))``, random init, its default attention implementation, under
  bf16 autocast; a plain PyTorch step (forward, backward, clip 1.0, fused AdamW, zero_grad) fed by a tinylm
  loader with the same settings and seed: the same sequence of batches as tinylm's.
* the plain PyTorch GPT (``peer_gpt.py``: what a user writes by hand after nanoGPT), compiled, with the same
  plain step and batches as the Hugging Face contender.

MFU counts the same useful FLOPs for every contender (tinylm's ``flops_per_token`` at the true vocabulary: a
padded vocabulary's extra columns are not useful work).

Shape (both): 12 layers, width 768, 12 heads, context 1024, vocab 50257, learned positions, LayerNorm and linear
biases, tanh-GELU MLP x4, tied head, dropout 0. Optimizer: AdamW with tinylm's default hyperparameters (decay on
hidden matrices only for tinylm, on every parameter for GPT-2, as a user would write it).

Figures per contender: ms per optimizer step (the mean over the timed steps, the GPU synchronized at both ends
only: no per-step sync the loop would not do), tokens/s, MFU (training FLOPs per token x tokens/s over the GPU's
datasheet dense bf16 peak; ``tinylm.training.accounting``), peak memory (``torch.cuda.max_memory_allocated`` since the
contender was built), and the data wait: host time spent getting the next batch, as a share of the step.

Data: tiny Shakespeare prepared at character level by ``tinylm.data.prepare``; the model's vocabulary is 50257
anyway (a step's cost does not depend on the ids' values).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from bench_train import shakespeare_path
from common import gpu_line, machine, machine_line
from peer_gpt import PlainGPT

from tinylm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, set_value
from tinylm.data.loader import BatchLoader, TokenWindows, with_prefetch
from tinylm.data.prepare import prepare
from tinylm.fileio import write_text_atomic
from tinylm.model.gpt import GPT
from tinylm.training.accounting import describe_peak, mfu, peak_flops
from tinylm.training.runtime import autocast_context, enable_tf32
from tinylm.training.trainer import Trainer

SEED = 1337
# the goals for GPT-2 small in bf16 on an H100/H200: the compiled step, the eager one, the data wait
MFU_GOAL, EAGER_MFU_GOAL, DATA_WAIT_GOAL = 0.50, 0.30, 0.01


@dataclass(frozen=True)
class Setup:
    """Where and at what shape the contenders run: GPT-2 small in bf16 on the GPU, or ``--smoke``'s tiny CPU check."""
    device: torch.device = field(default_factory=lambda: torch.device("cuda"))
    precision: str = "bf16"
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    block: int = 1024
    vocab: int = 50257

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab, block_size=self.block, n_layer=self.n_layer, n_head=self.n_head,
                           n_embd=self.n_embd, pos="learned", norm="layernorm", mlp="gelu", tie_embeddings=True,
                           bias=True, dropout=0.0)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


SMOKE = Setup(torch.device("cpu"), "fp32", n_layer=2, n_embd=64, n_head=2, block=64, vocab=256)


@dataclass
class Result:
    contender: str
    notes: str
    params: int
    first_step_s: float  # the first step alone (compilation, allocation)
    step_ms: float  # mean over the timed steps
    tokens_per_s: float
    mfu: float | None
    peak_mem_gib: float  # nan on the CPU (--smoke)
    data_wait_pct: float  # host time getting batches, % of the step
    final_loss: float


@dataclass
class Contender:
    name: str
    notes: str
    params: int
    step: Callable[[], tuple[torch.Tensor, float]]  # one optimizer step -> (loss tensor, host seconds for data)
    close: Callable[[], None]


def tinylm_contender(setup: Setup, data: DataConfig, runs: Path, batch: int, compile_model: bool,
                     variant: tuple[str, dict[str, str]] | None = None) -> Contender:
    """A real Trainer; its ``train_step`` on its own (prefetching) loader. ``variant``: (name, dotted overrides)."""
    cfg = Config(model=setup.model_config(), data=data,
                 train=TrainConfig(batch_size=batch, precision=setup.precision, device=setup.device.type,
                                   compile=compile_model, seed=SEED, eval_tokens=batch * setup.block))
    name = variant[0] if variant else "compiled" if compile_model else "eager"
    for key, value in (variant[1] if variant else {}).items():
        set_value(cfg, key, value)
    cfg.run.dir, cfg.run.name, cfg.run.progress = str(runs), name, False
    trainer = Trainer(cfg, log=lambda *a, **k: None)

    def step() -> tuple[torch.Tensor, float]:
        stats = trainer.train_step(1.0)  # peak LR: the schedule does not change the cost
        return stats["loss"], stats["data_s"]


    opt = trainer.optimizer.defaults
    impl = "fused" if opt.get("fused") else "foreach" if opt.get("foreach") else "for-loop"
    notes = (f"Trainer.train_step, attention {trainer.attention}, AdamW {impl}, loader {type(trainer.loader).__name__}"
             + (", torch.compile" if compile_model else "")
             + "".join(f", {k} {v}" for k, v in (variant[1] if variant else {}).items()))
    return Contender(f"tinylm {name} {setup.precision}", notes, trainer.raw_model.num_params(), step, trainer.close)


def hf_contender(setup: Setup, data: DataConfig, batch: int) -> Contender:
    """GPT2LMHeadModel with a plain PyTorch step, fed the batches a tinylm loader of the same seed gives."""
    from transformers import GPT2Config, GPT2LMHeadModel

    device = setup.device
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=setup.vocab, n_positions=setup.block, n_embd=setup.n_embd, n_layer=setup.n_layer,
                        n_head=setup.n_head,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).to(device).train()
    # shift_labels: train on exactly tinylm's (x, y) pairs (labels= alone would shift x itself)
    step, close = plain_step(setup, data, batch, model, lambda x, y: model(input_ids=x, labels=y, shift_labels=y).loss)
    notes = f"attn={model.config._attn_implementation}, act={config.activation_function}, AdamW fused"
    return Contender(f"HF GPT-2 {setup.precision}", notes, sum(p.numel() for p in model.parameters()), step, close)


def plain_contender(setup: Setup, data: DataConfig, batch: int) -> Contender:
    """peer_gpt.PlainGPT, compiled, with the same plain step and batches as the Hugging Face contender."""
    torch.manual_seed(SEED)
    model = PlainGPT(setup.vocab, setup.block, setup.n_layer, setup.n_embd, setup.n_head).to(setup.device).train()
    compiled = torch.compile(model)
    step, close = plain_step(setup, data, batch, model, compiled)
    notes = f"peer_gpt.py: fused QKV, SDPA is_causal, vocab padded to {model.head.out_features}, torch.compile"
    return Contender(f"plain PyTorch GPT compiled {setup.precision}", notes,
                     sum(p.numel() for p in model.parameters()), step, close)


def plain_step(setup: Setup, data: DataConfig, batch: int, model: torch.nn.Module,
               loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> tuple[Callable[[], tuple[torch.Tensor, float]], Callable[[], None]]:
    """The step a user writes (forward under autocast, backward, clip 1.0, fused AdamW, zero_grad) on the batches
    a tinylm loader of the same seed gives: (step, close)."""
    o = OptimConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            weight_decay=o.weight_decay, fused=True)
    loader = with_prefetch(BatchLoader(TokenWindows(data.dir, "train", setup.block), batch, seed=SEED,
                                       device=setup.device), "auto")

    def step() -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        x, y = loader.next_batch()
        data_s = time.perf_counter() - t0
        with autocast_context(setup.precision, setup.device):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), data_s

    def close() -> None:
        if hasattr(loader, "close"):
            loader.close()

    return step, close


def measure(setup: Setup, make: Callable[[], Contender], args, flops_per_token: float, peak: float | None,
            log) -> Result:
    """Build, one first step (timed alone), warm-up steps, then ``args.steps`` timed steps; free everything."""
    gc.collect()
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    c = make()
    try:
        setup.synchronize()
        t0 = time.perf_counter()
        c.step()
        setup.synchronize()
        first = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            c.step()
        setup.synchronize()
        data_s, t0 = 0.0, time.perf_counter()
        for _ in range(args.steps):
            loss, wait = c.step()
            data_s += wait
        setup.synchronize()
        seconds = time.perf_counter() - t0
        step_s = seconds / args.steps
        tokens_per_s = args.batch * setup.block / step_s
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan
        result = Result(c.name, c.notes, c.params, first, 1000 * step_s, tokens_per_s,
                        mfu(tokens_per_s, flops_per_token, peak), peak_mem, 100 * data_s / seconds, float(loss))
    finally:
        c.close()
    log(f"  {c.name}: first step {first:.1f} s, {result.step_ms:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
        f"MFU {pct(result.mfu)}, peak {gib(result.peak_mem_gib)}, data wait {result.data_wait_pct:.2f}%")
    return result


def pct(x: float | None) -> str:
    return "n/a (GPU not in tinylm.training.accounting.GPU_PEAKS)" if x is None else f"{100 * x:.1f}%"


def gib(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f} GiB"


def markdown(results: list[Result]) -> str:
    out = ["| contender | ms/step | tokens/s | MFU | peak memory | data wait | first step | x HF | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    hf = next((r for r in results if r.contender.startswith("HF")), None)
    for r in results:
        ratio = f"{r.tokens_per_s / hf.tokens_per_s:.2f}" if hf else "-"
        mfu_cell = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        out.append(f"| {r.contender} | {r.step_ms:.1f} | {r.tokens_per_s:,.0f} | {mfu_cell} | "
                   f"{gib(r.peak_mem_gib)} | {r.data_wait_pct:.2f}% | {r.first_step_s:.1f} s | {ratio} | "
                   f"{r.notes}; {r.params / 1e6:.1f}M params |")
    return "\n".join(out)


def goals(results: list[Result], precision: str) -> list[dict]:
    """The GPU goals (GPT-2 small, bf16, on an H100/H200) checked on these results: each {goal, value, met}."""
    by = {r.contender.rsplit(" ", 1)[0]: r for r in results}
    compiled, eager, plain = by.get("tinylm compiled"), by.get("tinylm eager"), by.get("plain PyTorch GPT compiled")
    out = []
    if precision != "bf16":
        return out
    if compiled and compiled.mfu is not None:
        out.append({"goal": f"tinylm compiled MFU >= {100 * MFU_GOAL:.0f}%", "value": f"{100 * compiled.mfu:.1f}%",
                    "met": compiled.mfu >= MFU_GOAL})
        out.append({"goal": f"tinylm compiled data wait < {100 * DATA_WAIT_GOAL:.0f}% of the step",
                    "value": f"{compiled.data_wait_pct:.2f}%", "met": compiled.data_wait_pct < 100 * DATA_WAIT_GOAL})
    if eager and eager.mfu is not None:
        out.append({"goal": f"tinylm eager MFU >= {100 * EAGER_MFU_GOAL:.0f}%", "value": f"{100 * eager.mfu:.1f}%",
                    "met": eager.mfu >= EAGER_MFU_GOAL})
    if compiled and plain:
        out.append({"goal": "tinylm compiled ahead of the plain PyTorch GPT (tokens/s)",
                    "value": f"{compiled.tokens_per_s:,.0f} vs {plain.tokens_per_s:,.0f}",
                    "met": compiled.tokens_per_s > plain.tokens_per_s})
        if not math.isnan(compiled.peak_mem_gib):
            out.append({"goal": "tinylm compiled peak memory <= the plain PyTorch GPT's",
                        "value": f"{compiled.peak_mem_gib:.1f} vs {plain.peak_mem_gib:.1f} GiB",
                        "met": compiled.peak_mem_gib <= plain.peak_mem_gib})
    return out


CONTENDERS = ("eager", "compiled", "hf", "plain")  # tinylm eager, tinylm compiled, HF GPT-2, peer_gpt.PlainGPT


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``"pad64=model.vocab_pad_to:64,train.compile:true"`` -> ("pad64", {"model.vocab_pad_to": "64", ...})."""
    name, _, spec = text.partition("=")
    pairs = [item.partition(":") for item in spec.split(",") if item]
    if not name or not pairs or any(not k or not sep for k, sep, _ in pairs):
        raise ValueError(f"--variant {text!r}: write NAME=KEY:VALUE[,KEY:VALUE], e.g. pad64=model.vocab_pad_to:64")
    return name, {k: v for k, _, v in pairs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens per step (one micro-batch)")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU needed: every contender on the CPU at a tiny shape, to check the script itself")
    p.add_argument("--steps", type=int, default=30, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender, the first timed alone")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated, in order, from {', '.join(CONTENDERS)} (default: all)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 autocast, or fp32 (TF32 matmuls on a GPU; MFU against the TF32 peak)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VALUE[,KEY:VALUE]",
                   help="add a tinylm compiled contender with these config overrides, e.g. "
                        "pad64=model.vocab_pad_to:64 (repeatable)")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use inductor's usual cache (default: a fresh one, so the first step is a cold compile)")
    p.add_argument("--json", type=Path, help="write every figure and the machine description here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--batch, --steps and --warmup must be >= 1 (the first step pays for allocation and compilation)")
    chosen = [c for c in args.contenders.split(",") if c]
    if unknown := [c for c in chosen if c not in CONTENDERS]:
        p.error(f"--contenders: unknown {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        p.error(str(e))
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(f"bench_gpu: {gpu_line()}: this benchmark needs an NVIDIA GPU and a CUDA build of torch; "
                 f"run `make bench-gpu` on a GPU machine")
    if "hf" in chosen:
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            sys.exit("bench_gpu: transformers is not installed: `.venv/bin/pip install -e '.[bench]'` "
                     "(or leave hf out of --contenders)")
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", module="transformers")

    def log(*a) -> None:
        print(*a, flush=True)

    setup = replace(SMOKE if args.smoke else Setup(), precision="fp32" if args.smoke else args.precision)
    enable_tf32(setup.device)
    info = machine("transformers")
    info["gpu"] = gpu_line()
    title = "smoke test of this script on the CPU (tiny shape; the figures mean nothing)" if args.smoke else \
        "GPT-2 small training step on one GPU"
    log(f"# {title}, {info['date']}")
    log(f"GPU: {info['gpu']}")
    log(f"host: {machine_line(info)}")
    peak = peak_flops(setup.device, setup.precision)
    with torch.device("meta"):  # the FLOP count needs the shape, not the weights
        flops_per_token = GPT(setup.model_config()).flops_per_token()
    log(f"shape: {asdict(setup.model_config())}; batch {args.batch} x {setup.block} = {args.batch * setup.block:,} "
        f"tokens/step; {flops_per_token / 1e6:.0f} MFLOP/token; precision {setup.precision}; "
        f"{describe_peak(setup.device, setup.precision, peak)}")

    path = shakespeare_path()
    results: list[Result] = []
    failed: list[str] = []  # contenders that raised, in one line each
    cache_before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        if ({"compiled", "plain"} & set(chosen) or variants) and not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # read at first compile
        try:
            data = DataConfig(corpus=str(path), tokenizer="char", dir=str(Path(tmp) / "shakespeare-char"))
            prepare(data, progress=False, log=lambda *a, **k: None)
            runs = Path(tmp) / "runs"
            build = {"eager": lambda: tinylm_contender(setup, data, runs, args.batch, False),
                     "compiled": lambda: tinylm_contender(setup, data, runs, args.batch, True),
                     "hf": lambda: hf_contender(setup, data, args.batch),
                     "plain": lambda: plain_contender(setup, data, args.batch)}
            makers = [build[c] for c in chosen]
            makers += [lambda v=v: tinylm_contender(setup, data, runs, args.batch, True, v) for v in variants]
            for make in makers:
                try:
                    results.append(measure(setup, make, args, flops_per_token, peak, log))
                except Exception as e:  # one contender's failure (out of memory, a compile error) is a finding
                    failed.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
                    log(f"  a contender failed: {failed[-1]}")
        finally:  # the folder is gone after this block: a later compile in this process must not look there
            if cache_before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_before

    log("\n## results\n")
    log(markdown(results))
    log("")
    for line in failed:
        log(f"failed: {line}")
    checked = goals(results, setup.precision)
    for g in checked:
        log(f"{g['goal']}: {g['value']} ({'met' if g['met'] else 'NOT met'})")
    if args.json:
        write_text_atomic(args.json, json.dumps({"machine": info, "command": sys.argv, "smoke": args.smoke,
                                                 "batch": args.batch, "precision": setup.precision,
                                                 "peak": describe_peak(setup.device, setup.precision, peak),
                                                 "steps": args.steps, "flops_per_token": flops_per_token,
                                                 "peak_flops": peak, "results": [asdict(r) for r in results],
                                                 "goals": checked, "failed": failed},
                                                indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
