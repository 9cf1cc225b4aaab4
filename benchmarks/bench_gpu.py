"""GPT-2 small (124M, context 1024) training on one GPU: tinylm eager and compiled vs Hugging Face GPT-2, same batches.

    .venv/bin/python benchmarks/bench_gpu.py                      # or: make bench-gpu
    .venv/bin/python benchmarks/bench_gpu.py --steps 10 --warmup 2 --no-compile     # smoke test
    .venv/bin/python benchmarks/bench_gpu.py --batch 32 --json bench_gpu.json       # for BENCHMARKS.md
    .venv/bin/python benchmarks/bench_gpu.py --smoke            # no GPU: the whole script on the CPU, a tiny shape

Without a CUDA device it says so in one line and exits (status 1). ``--smoke`` runs every contender on the CPU at a
tiny shape (2 layers, width 64, context 64, vocab 256, fp32) for a few steps: it checks the script itself (the
test suite runs it), so a GPU session's short time is not spent on a crash; its figures mean nothing.

Contenders, one after another in one process (each freed before the next, so each peak memory is its own):

* tinylm eager: a ``tinylm.train.Trainer`` (bf16 autocast, fused AdamW, TF32, the prefetching loader: what
  ``tinylm train`` does on CUDA); each step is its ``train_step`` on its own loader's batches.
* tinylm compiled: the same with ``--train.compile true``; the first step (compilation) is reported apart.
* transformers ``GPT2LMHeadModel(GPT2Config(...))``, random init, its default attention implementation, under
  bf16 autocast; a plain PyTorch step (forward, backward, clip 1.0, fused AdamW, zero_grad) fed by a tinylm
  loader with the same settings and seed: the same sequence of batches as tinylm's.

Shape (both): 12 layers, width 768, 12 heads, context 1024, vocab 50257, learned positions, LayerNorm and linear
biases, tanh-GELU MLP x4, tied head, dropout 0. Optimizer: AdamW with tinylm's default hyperparameters (decay on
hidden matrices only for tinylm, on every parameter for GPT-2, as a user would write it).

Figures per contender: ms per optimizer step (the mean over the timed steps, the GPU synchronized at both ends
only: no per-step sync the loop would not do), tokens/s, MFU (training FLOPs per token x tokens/s over the GPU's
datasheet dense bf16 peak; ``tinylm.accounting``), peak memory (``torch.cuda.max_memory_allocated`` since the
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from bench_train import shakespeare_path
from common import gpu_line, machine, machine_line

from tinylm.accounting import mfu, peak_flops
from tinylm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from tinylm.data import BatchLoader, TokenWindows, prepare, with_prefetch
from tinylm.fileio import write_text_atomic
from tinylm.model import GPT
from tinylm.runtime import autocast_context, enable_tf32
from tinylm.train import Trainer

SEED = 1337
MFU_GOAL, DATA_WAIT_GOAL = 0.40, 0.01  # the goals for the compiled bf16 step on an H100/H200


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


def tinylm_contender(setup: Setup, data: DataConfig, runs: Path, batch: int, compile_model: bool) -> Contender:
    """A real Trainer; its ``train_step`` on its own (prefetching) loader."""
    cfg = Config(model=setup.model_config(), data=data,
                 train=TrainConfig(batch_size=batch, precision=setup.precision, device=setup.device.type,
                                   compile=compile_model, seed=SEED, eval_tokens=batch * setup.block))
    cfg.run.dir, cfg.run.name, cfg.run.progress = str(runs), "compiled" if compile_model else "eager", False
    trainer = Trainer(cfg, log=lambda *a, **k: None)

    def step() -> tuple[torch.Tensor, float]:
        stats = trainer.train_step(1.0)  # peak LR: the schedule does not change the cost
        return stats["loss"], stats["data_s"]

    def close() -> None:
        if hasattr(trainer.loader, "close"):
            trainer.loader.close()
        trainer.close()

    opt = trainer.optimizer.defaults
    impl = "fused" if opt.get("fused") else "foreach" if opt.get("foreach") else "for-loop"
    notes = (f"Trainer.train_step, attention {trainer.attention}, AdamW {impl}, loader {type(trainer.loader).__name__}"
             + (", torch.compile" if compile_model else ""))
    return Contender(f"tinylm {'compiled' if compile_model else 'eager'} {setup.precision}", notes,
                     trainer.raw_model.num_params(), step, close)


def hf_contender(setup: Setup, data: DataConfig, batch: int) -> Contender:
    """GPT2LMHeadModel with a plain PyTorch step, fed the batches a tinylm loader of the same seed gives."""
    from transformers import GPT2Config, GPT2LMHeadModel

    device = setup.device
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=setup.vocab, n_positions=setup.block, n_embd=setup.n_embd, n_layer=setup.n_layer,
                        n_head=setup.n_head,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).to(device).train()
    o = OptimConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            weight_decay=o.weight_decay, fused=True)
    loader = with_prefetch(BatchLoader(TokenWindows(data.dir, "train", setup.block), batch, seed=SEED, device=device),
                           "auto")

    def step() -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        x, y = loader.next_batch()
        data_s = time.perf_counter() - t0
        with autocast_context(setup.precision, device):
            # shift_labels: train on exactly tinylm's (x, y) pairs (labels= alone would shift x itself)
            loss = model(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), data_s

    def close() -> None:
        if hasattr(loader, "close"):
            loader.close()

    notes = f"attn={model.config._attn_implementation}, act={config.activation_function}, AdamW fused"
    return Contender(f"HF GPT-2 {setup.precision}", notes, sum(p.numel() for p in model.parameters()), step, close)


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
    return "n/a (GPU not in tinylm.accounting.GPU_PEAKS)" if x is None else f"{100 * x:.1f}%"


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


def goal_lines(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.contender.startswith("tinylm compiled") and r.mfu is not None:
            lines.append(f"{r.contender}: MFU {100 * r.mfu:.1f}% (goal >= {100 * MFU_GOAL:.0f}% on an H100/H200: "
                         f"{'met' if r.mfu >= MFU_GOAL else 'NOT met'}), data wait {r.data_wait_pct:.2f}% of the "
                         f"step (goal < {100 * DATA_WAIT_GOAL:.0f}%: "
                         f"{'met' if r.data_wait_pct < 100 * DATA_WAIT_GOAL else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens per step (one micro-batch)")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU needed: every contender on the CPU at a tiny shape, to check the script itself")
    p.add_argument("--steps", type=int, default=30, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender, the first timed alone")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Hugging Face transformers")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use inductor's usual cache (default: a fresh one, so the first step is a cold compile)")
    p.add_argument("--json", type=Path, help="write every figure and the machine description here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--batch, --steps and --warmup must be >= 1 (the first step pays for allocation and compilation)")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(f"bench_gpu: {gpu_line()}: this benchmark needs an NVIDIA GPU and a CUDA build of torch; "
                 f"run `make bench-gpu` on a GPU machine")
    if args.peer:
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            sys.exit("bench_gpu: transformers is not installed: `.venv/bin/pip install -e '.[bench]'` "
                     "(or pass --no-peer to time tinylm alone)")
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", module="transformers")

    def log(*a) -> None:
        print(*a, flush=True)

    setup = SMOKE if args.smoke else Setup()
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
        f"tokens/step; {flops_per_token / 1e6:.0f} MFLOP/token; "
        f"peak {'unknown' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'} ({setup.precision})")

    path = shakespeare_path()
    results: list[Result] = []
    cache_before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile and not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # read at first compile
        try:
            data = DataConfig(corpus=str(path), tokenizer="char", dir=str(Path(tmp) / "shakespeare-char"))
            prepare(data, progress=False, log=lambda *a, **k: None)
            makers = [lambda: tinylm_contender(setup, data, Path(tmp) / "runs", args.batch, False)]
            if args.compile:
                makers.append(lambda: tinylm_contender(setup, data, Path(tmp) / "runs", args.batch, True))
            if args.peer:
                makers.append(lambda: hf_contender(setup, data, args.batch))
            for make in makers:
                results.append(measure(setup, make, args, flops_per_token, peak, log))
        finally:  # the folder is gone after this block: a later compile in this process must not look there
            if cache_before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_before

    log("\n## results\n")
    log(markdown(results))
    log("")
    for line in goal_lines(results):
        log(line)
    if args.json:
        write_text_atomic(args.json, json.dumps({"machine": info, "command": sys.argv, "smoke": args.smoke,
                                                 "batch": args.batch,
                                                 "steps": args.steps, "flops_per_token": flops_per_token,
                                                 "peak_flops": peak, "results": [asdict(r) for r in results]},
                                                indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
