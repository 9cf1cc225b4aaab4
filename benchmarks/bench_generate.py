"""Generation speed: tinylm's KV cache vs full recompute (nanoGPT's loop) vs Hugging Face `generate`.

    .venv/bin/python benchmarks/bench_generate.py --run runs/tinyshakespeare-char          # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_generate.py --run R --rounds 1 --new-tokens 50 --shapes ckpt   # smoke test
    .venv/bin/python benchmarks/bench_generate.py --run R --wait-quiet 0.1 --compile --json out.json  # for the docs

Part 1, a trained checkpoint (``--run``): greedy decoding of ``--new-tokens`` (500) tokens after a
``--prompt-tokens`` (32) token prompt cut from the validation text:

* **tinylm, KV cache**: ``tinylm.generation.generate.generate(strategy="greedy")``. The prompt is read once,
  then each token costs one position; at the context length the window slides (the newest 3/4
  of the context is re-read into a new cache, once per block_size/4 tokens).
* **tinylm, KV cache, compiled step** (``--compile``): the same after ``model.compile_decoding()``,
  on a copy of the model: each one-token step runs through ``torch.compile``. The warm-up run
  pays the compilation (its time is printed); the timed runs do not.
* **full recompute, nanoGPT's loop**: crop to the last block_size tokens, run the whole window
  through the model, apply the head to the last position only, take the argmax, append. This is
  nanoGPT's ``generate`` with greedy selection, run on the same model object.

The tokens of the two agree while the text fits the context (both are exact there; printed).
Beyond it they may differ, because the windows differ (slide by a quarter vs crop at every step).
The same comparison then runs on a model of ``ModelConfig``'s default size (6 x 384, context 256,
the checkpoint's vocabulary) with random weights: speed does not depend on what the weights are,
and the ratio shows how the cache's advantage grows with the model (``--no-default-size`` skips it).

Part 2, against Hugging Face transformers: ``GPT2LMHeadModel(GPT2Config(...))`` with random weights,
and a tinylm GPT of the same shape (learned positions, LayerNorm with bias, tanh-GELU MLP x4,
biases, tied embeddings, context 1024 so that prompt + 500 tokens fit) holding *the same weights*,
copied from the HF model. Both compute the same function: the script checks that the logits agree
and counts how many greedy tokens are identical. HF runs ``model.generate(input_ids,
attention_mask, max_new_tokens=N, do_sample=False, use_cache=True)`` (its default cache and sdpa
attention). Shapes: the checkpoint's (layers, width, heads, vocab) and GPT-2 small (12 x 768,
vocab 50257).

Method: one process; every contender at the same torch thread count (``--threads``, default 2);
each contender is warmed up once, then ``--rounds`` rounds run every contender once in turn, so
drift hits all alike; the median time gives tokens/s = batch x new tokens / time. For each run the
CPU time / wall time is recorded (near the thread count = the run had the CPU) and the load average
is printed at the start; ``--wait-quiet X`` waits before every timed run until other processes use
less than X of the machine's CPU (measured from /proc/stat over one second), and repeats a run
whose CPU/wall fell below 0.8 x threads (another job took a core; counted as "runs redone").
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from common import machine, machine_line, time_call, wait_for_quiet

from tinylm.config import ModelConfig, SampleConfig
from tinylm.generation.decode_report import validation_prompts
from tinylm.generation.generate import generate
from tinylm.model.gpt import GPT
from tinylm.training.checkpoint import load_for_inference


@dataclass
class Result:
    part: str
    shape: str
    batch: int
    contender: str
    times: list[float] = field(default_factory=list)  # wall seconds per timed run
    cpu_ratio: list[float] = field(default_factory=list)  # CPU seconds / wall seconds per timed run
    new_tokens: int = 0
    note: str = ""
    repeated: int = 0  # timed runs thrown away because another process took the CPU
    warmup: float = 0.0  # wall seconds of the untimed first run (with --compile: the compilation)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.median


def forward_last(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's inference forward: every block on the whole window, the head on the last position."""
    B, T = idx.shape
    pos = torch.arange(T, device=idx.device)
    x = model.wte(idx)  # (B, T, C)
    if model.wpe is not None:
        x = x + model.wpe(pos)
    x = x.view(B * T, -1)  # the blocks take the residual stream as a (B*T, C) matrix
    rope = (model.rope_cos[pos], model.rope_sin[pos]) if model.wpe is None else None
    for block in model.blocks:
        x = block(x, B, rope)
    return model.lm_head(model.norm_f(x.view(B, T, -1)[:, -1:]))  # (B, 1, vocab)


@torch.inference_mode()
def recompute_generate(model: GPT, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """nanoGPT's ``generate`` loop with greedy selection: no cache, the cropped context every step."""
    for _ in range(new_tokens):
        logits = forward_last(model, idx[:, -model.cfg.block_size:])
        idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def tinylm_generate(model: GPT, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = generate(model, idx.tolist(), SampleConfig(strategy="greedy", max_new_tokens=new_tokens))
    return torch.tensor([idx[i].tolist() + per[0].tokens for i, per in enumerate(out)])


def hf_generate(hf, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, use_cache=True)


def make_hf_pair(n_layer: int, n_embd: int, n_head: int, vocab: int, context: int, seed: int):
    """A random HF GPT-2 and a tinylm GPT of the same shape holding the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    hcfg = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
                      pad_token_id=0)
    hf = GPT2LMHeadModel(hcfg).eval()
    ours = GPT(ModelConfig(vocab_size=vocab, block_size=context, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                           mlp="gelu", norm="layernorm", pos="learned", bias=True, tie_embeddings=True)).eval()
    t = hf.transformer
    # HF's Conv1D stores weights as (in, out); nn.Linear as (out, in): transpose
    sd = {"wte.weight": t.wte.weight, "wpe.weight": t.wpe.weight,
          "norm_f.weight": t.ln_f.weight, "norm_f.bias": t.ln_f.bias, "lm_head.weight": t.wte.weight}
    for i, h in enumerate(t.h):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": h.ln_1.weight, p + "norm1.bias": h.ln_1.bias,
                   p + "attn.qkv.weight": h.attn.c_attn.weight.t(), p + "attn.qkv.bias": h.attn.c_attn.bias,
                   p + "attn.proj.weight": h.attn.c_proj.weight.t(), p + "attn.proj.bias": h.attn.c_proj.bias,
                   p + "norm2.weight": h.ln_2.weight, p + "norm2.bias": h.ln_2.bias,
                   p + "mlp.up.weight": h.mlp.c_fc.weight.t(), p + "mlp.up.bias": h.mlp.c_fc.bias,
                   p + "mlp.down.weight": h.mlp.c_proj.weight.t(), p + "mlp.down.bias": h.mlp.c_proj.bias})
    ours.load_state_dict({k: v.detach().clone().contiguous() for k, v in sd.items()})
    return hf, ours


def run_rounds(contenders: dict[str, tuple[Result, object]], rounds: int, log, wait_quiet: float = 0.0) -> dict:
    """Warm each contender up once, then ``rounds`` rounds of every contender in turn."""
    outputs = {}
    wait_for_quiet(wait_quiet, log)
    for name, (res, fn) in contenders.items():
        warmup = time_call(fn)
        res.warmup, outputs[name] = warmup.wall, warmup.result
        log(f"  warm-up {name}: {res.warmup:.2f} s")
    threads = torch.get_num_threads()
    for r in range(rounds):
        for name, (res, fn) in contenders.items():
            for attempt in range(4):
                wait_for_quiet(wait_quiet, log)
                run = time_call(fn)
                wall, ratio = run.wall, run.cpu_per_wall
                # a run whose threads did not get the CPU (another job took a core) is repeated
                if not wait_quiet or ratio >= 0.8 * threads or attempt == 3:
                    break
                res.repeated += 1
                log(f"  round {r + 1} {name}: {wall:.2f} s with CPU/wall {ratio:.2f}: another job took the CPU; again")
            res.times.append(wall)
            res.cpu_ratio.append(ratio)
            log(f"  round {r + 1} {name}: {wall:.2f} s (CPU/wall {ratio:.2f})")
    return outputs


def agree(a: torch.Tensor, b: torch.Tensor, start: int) -> int:
    """Tokens after ``start`` that agree before the first difference (minimum over rows)."""
    diff = (a[:, start:] != b[:, start:])
    firsts = [int(row.nonzero()[0]) if row.any() else diff.size(1) for row in diff]
    return min(firsts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder or checkpoint folder (part 1)")
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,8", help="batch sizes for part 1 and the checkpoint-shaped part 2")
    ap.add_argument("--shapes", default="ckpt,gpt2", help="part 2 shapes: ckpt (the checkpoint's), gpt2 (12 x 768)")
    ap.add_argument("--no-default-size", action="store_true", help="skip part 1 at ModelConfig's default size")
    ap.add_argument("--compile", action="store_true",
                    help="part 1 also times the cache with a compiled decode step "
                         "(one compilation per model and batch: 15-60 s each on 2 cores)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before every round, wait until other processes use less than this share of the CPU "
                         "(e.g. 0.1)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    try:
        import transformers  # imported here, used in part 2
        transformers.logging.set_verbosity_error()
    except ImportError:
        sys.exit("this benchmark needs transformers: .venv/bin/pip install -e '.[bench]'")
    torch.set_num_threads(args.threads)
    log = partial(print, file=sys.stderr, flush=True)
    wait_for_quiet(args.wait_quiet, log)
    info = machine("transformers")
    start_load, date = info["loadavg"][0], info["date"]
    batches = [int(b) for b in args.batches.split(",")]
    N = args.new_tokens
    groups: list[list[Result]] = []  # tinylm contender(s), then the one they are compared with
    checks: list[str] = []

    # ---- part 1: the trained checkpoint, cache vs full recompute
    _, cfg, model, tok = load_for_inference(args.run, device="cpu")
    m = cfg.model
    shape = (f"{m.n_layer}x{m.n_embd}, {m.n_head} heads, ctx {m.block_size}, vocab {m.vocab_size}, "
             f"{m.pos}/{m.norm}/{m.mlp}")
    part1 = [(model, shape, B, "1 checkpoint") for B in batches]
    if not args.no_default_size:
        torch.manual_seed(0)
        d = ModelConfig(vocab_size=m.vocab_size)
        big = GPT(d).eval()
        big_shape = (f"{d.n_layer}x{d.n_embd}, {d.n_head} heads, ctx {d.block_size}, vocab {d.vocab_size}, "
                     f"{d.pos}/{d.norm}/{d.mlp}")
        part1.append((big, big_shape, 1, "1 default size, untrained"))
    for model, shape, B, part in part1:
        prompts = validation_prompts(cfg.data.dir, B, args.prompt_tokens, continuation_tokens=1)
        idx = torch.tensor([prompt for prompt, _ in prompts])
        log(f"part 1: {part} ({shape}), batch {B}")
        cache = Result(part, shape, B, "tinylm, KV cache", new_tokens=N)
        full = Result(part, shape, B, "full recompute (nanoGPT loop)", new_tokens=N)
        contenders = {cache.contender: (cache, partial(tinylm_generate, model, idx, N))}
        if args.compile:
            compiled_model = copy.deepcopy(model)
            compiled_model.compile_decoding()
            compiled = Result(part, shape, B, "tinylm, KV cache, compiled step", new_tokens=N)
            contenders[compiled.contender] = (compiled, partial(tinylm_generate, compiled_model, idx, N))
        contenders[full.contender] = (full, partial(recompute_generate, model, idx, N))
        outs = run_rounds(contenders, args.rounds, log, args.wait_quiet)
        exact = model.cfg.block_size - args.prompt_tokens + 1  # tokens generated before either window moves
        same = agree(outs[cache.contender], outs[full.contender], args.prompt_tokens)
        checks.append(f"{part}, batch {B}: the first {same} of {N} tokens agree between cache and recompute "
                      f"(both exact for the first {min(exact, N)}; later the windows differ)")
        if args.compile:
            same_tokens = torch.equal(outs[compiled.contender], outs[cache.contender])
            checks.append(f"{part}, batch {B}: the compiled step's first run (compiling) took {compiled.warmup:.0f} s; "
                          f"its tokens {'equal' if same_tokens else 'DIFFER FROM'} the uncompiled cache's")
        groups.append([r for r, _ in contenders.values()])
        if B == 1 and part == "1 checkpoint":
            sample = tok.decode(outs[cache.contender][0, args.prompt_tokens:args.prompt_tokens + 120].tolist())
            checks.append(f"part 1 greedy text (first 120 tokens): {sample!r}")

    # ---- part 2: tinylm vs Hugging Face, same shape, same weights
    shapes = {"ckpt": (m.n_layer, m.n_embd, m.n_head, m.vocab_size, batches),
              "gpt2": (12, 768, 12, 50257, [1])}
    for name in [s for s in args.shapes.split(",") if s]:
        L, C, H, V, bs = shapes[name]
        context = 1024
        hf, ours = make_hf_pair(L, C, H, V, context, seed=0)
        desc = f"{L}x{C}, {H} heads, vocab {V}, ctx {context}, learned/layernorm/gelu, bias"
        torch.manual_seed(1)
        probe = torch.randint(0, V, (2, 64))
        with torch.inference_mode():
            diff = (hf(probe).logits - ours(probe)[0]).abs().max().item()
        checks.append(f"part 2 {name}: max |logit difference| tinylm vs HF, same weights: {diff:.2e}")
        for B in bs:
            torch.manual_seed(2)
            idx = torch.randint(0, V, (B, args.prompt_tokens))
            log(f"part 2: {desc}, batch {B}")
            a = Result(f"2 vs HF ({name})", desc, B, "tinylm generate (greedy, KV cache)", new_tokens=N)
            b = Result(f"2 vs HF ({name})", desc, B, "HF transformers generate (greedy, use_cache)", new_tokens=N,
                       note=f"transformers {transformers.__version__}, attn {hf.config._attn_implementation}")
            outs = run_rounds({a.contender: (a, partial(tinylm_generate, ours, idx, N)),
                               b.contender: (b, partial(hf_generate, hf, idx, N))}, args.rounds, log, args.wait_quiet)
            same = agree(outs[a.contender], outs[b.contender], args.prompt_tokens)
            checks.append(f"part 2 {name}, batch {B}: {same} of {N} greedy tokens identical to HF's "
                          f"before the first difference")
            groups.append([a, b])
        del hf, ours

    # ---- the table
    cmd = "python " + " ".join(sys.argv)
    print(f"- command: `{cmd}`\n- date: {date}\n- machine: {machine_line(info)}\n- torch threads: {args.threads}; "
          f"load average at start: {start_load:.2f}; {args.rounds} timed rounds after one warm-up\n")
    print("| part | model | batch | contender | median s [min-max] | tokens/s | CPU/wall | speed-up | runs redone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for group in groups:
        baseline = group[-1]
        for r in group:
            speedup = f"**{baseline.median / r.median:.1f}x**" if r is not baseline else "1.0x"
            print(f"| {r.part} | {r.shape} | {r.batch} | {r.contender} | {r.median:.2f} [{min(r.times):.2f}-"
                  f"{max(r.times):.2f}] | {r.tokens_per_s:,.0f} | {statistics.mean(r.cpu_ratio):.2f} | "
                  f"{speedup} | {r.repeated} |")
    print()
    for c in checks:
        print(f"- {c}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": cmd, "date": date, "machine": info, "threads": args.threads, "load_at_start": start_load,
            "end_load": os.getloadavg()[0], "checks": checks,
            "results": [{**asdict(r), "median": r.median, "tokens_per_s": r.tokens_per_s} for g in groups for r in g]},
            indent=2))
    log(f"load average at the end: {os.getloadavg()[0]:.2f} ({datetime.datetime.now():%H:%M:%S})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
