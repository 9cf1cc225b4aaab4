"""Chinchilla and cost planning: how many parameters and tokens a compute (or dollar) budget buys,
how long it takes and what it costs.

Compute-optimal means D = 20 N tokens (Hoffmann et al. 2022's rule of thumb), or the frontier N*(C)
of a `tinylm scaling` fit when one is given. Training FLOPs are 6 N D (forward + backward through
every weight) plus attention's QK^T and AV products, 12 x n_layer x n_embd x context per token, for the
model shape of :func:`shape_for`. Worked example: 124M parameters -> 2.48B tokens, 6ND = 1.85e18 FLOPs.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyLMError
from .gpus import DEVICES, Device

TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio (Hoffmann et al. 2022, approach 1 and 2 ~ 20)
HEAD_SIZE = 64
ASPECT = 64  # n_embd / n_layer, the shape rule (nanochat's depth x 64; GPT-2 small is 768 / 12)
TABLE_SIZES = (10e6, 25e6, 50e6, 124e6, 350e6, 774e6, 1.3e9, 2.7e9, 7e9)  # --table: the seeds' cost model


def shape_for(n_layer: int, n_embd: int | None = None, head_size: int = HEAD_SIZE) -> dict[str, int]:
    """The model of a depth under tinylm's shape rule: width 64 x depth (unless given), heads of ``head_size``
    (64: one head below width 128).

    ``shape_for(12) -> {"n_layer": 12, "n_embd": 768, "n_head": 12}`` (GPT-2 small's shape).
    """
    n_embd = n_embd or ASPECT * n_layer
    return {"n_layer": n_layer, "n_embd": n_embd, "n_head": max(1, n_embd // head_size)}


def depth_for(params: float) -> int:
    """The depth whose shape has about ``params`` non-embedding parameters (12 x n_layer x n_embd^2)."""
    return max(1, round((params / (12 * ASPECT**2)) ** (1 / 3)))


def attention_flops_per_token(params: float, context: int) -> float:
    """Training FLOPs per token of attention's score and value products, 12 x n_layer x n_embd x context
    (as :meth:`tinylm.model.gpt.GPT.flops_per_token`), for the shape of ``params`` parameters."""
    s = shape_for(depth_for(params))
    return 12 * s["n_layer"] * s["n_embd"] * context


@dataclass
class Frontier:
    """A fitted compute-optimal frontier N*(C) = g x C^a (from `tinylm scaling`'s scaling.json)."""
    g: float
    a: float
    source: str

    def params(self, flops: float) -> float:
        return self.g * flops**self.a


def load_frontier(path: str | Path) -> Frontier:
    """The frontier a `tinylm scaling` study wrote (its scaling.json, or the study folder)."""
    p = Path(path)
    p = p / "scaling.json" if p.is_dir() else p
    try:
        f = json.loads(p.read_text(encoding="utf-8"))["frontier"]
        return Frontier(float(f["g"]), float(f["a"]), str(p))
    except (OSError, ValueError, KeyError, TypeError):
        raise TinyLMError(f"{p} is not a `tinylm scaling` result (scaling.json with a frontier); "
                          f"run `tinylm scaling` first or drop --scaling") from None


def device(name: str) -> Device:
    if name not in DEVICES:
        raise TinyLMError(f"--gpu {name!r} is not in the table; choose one of {', '.join(DEVICES)} "
                          f"(or add it to src/tinylm/analysis/gpus.py)")
    return DEVICES[name]


def peak_flops(dev: Device) -> float:
    """One device's peak FLOP/s: the accounting table's datasheet figure, or this CPU's measured peak."""
    from ..training.accounting import cpu_peak_flops, gpu_peak_flops
    if not dev.torch_name:
        import torch
        return cpu_peak_flops(torch.bfloat16 if dev.precision == "bf16" else torch.float32)
    peak = gpu_peak_flops(dev.torch_name, dev.precision)
    if peak is None:
        raise TinyLMError(f"no peak FLOP/s for {dev.torch_name!r}: add it to GPU_PEAKS in "
                          f"src/tinylm/training/accounting.py")
    return peak


def measured_mfu(run_dir: str | Path) -> float:
    """The median MFU a tinylm run logged (its metrics.jsonl): what this device really reached."""
    from ..training.tracking import read_metrics
    values = [r["mfu"] for r in read_metrics(Path(run_dir)) if r.get("mfu")]
    if not values:
        raise TinyLMError(f"{run_dir} has no MFU in its metrics.jsonl; train there first, or give --mfu")
    return statistics.median(values)


@dataclass
class Plan:
    params: float
    tokens: float
    flops_6nd: float
    flops: float  # with the attention term
    hours: float  # wall-clock on n_gpus devices
    usd: float
    gpu: str
    n_gpus: int
    mfu: float
    peak: float
    rule: str  # how N and D were chosen

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def usd_per_million_tokens(self) -> float:
        return self.usd / (self.tokens / 1e6)


def optimal_params(flops: float, frontier: Frontier | None) -> float:
    """N* for a 6ND compute budget: the fitted frontier, else D = 20 N, so C = 120 N^2."""
    return frontier.params(flops) if frontier else math.sqrt(flops / (6 * TOKENS_PER_PARAM))


def plan(*, params: float | None = None, tokens: float | None = None, flops: float | None = None,
         budget_usd: float | None = None, gpu: str = "h100", n_gpus: int = 1, mfu: float | None = None,
         context: int = 1024, frontier: Frontier | None = None) -> Plan:
    """A compute-optimal plan from exactly one of params, tokens, flops (6ND) or budget_usd.

    ``plan(params=124e6).tokens -> 2.48e9``; its ``flops_6nd -> 1.845e18``.
    """
    given = {k: v for k, v in (("--params", params), ("--tokens", tokens), ("--flops", flops),
                               ("--budget-usd", budget_usd)) if v is not None}
    if len(given) != 1:
        raise TinyLMError("give exactly one of --params, --tokens, --flops, --budget-usd "
                          f"(got {', '.join(given) or 'none'})")
    if any(v <= 0 for v in given.values()) or n_gpus < 1 or (mfu is not None and not 0 < mfu <= 1):
        raise TinyLMError("--params, --tokens, --flops and --budget-usd must be positive, --gpus >= 1, "
                          "and --mfu in (0, 1]")
    if context < 1:
        raise TinyLMError(f"--context {context} must be at least 1 token (the sequence length attention spans, "
                          f"e.g. 1024)")
    (flag, value), = given.items()
    too_large = TinyLMError(f"{flag} {value:g} is too large to plan: its FLOPs or cost overflow a float (above "
                            f"~1.8e308); give a smaller amount")
    if not math.isfinite(value):
        raise too_large
    dev = device(gpu)
    mfu = mfu or dev.mfu
    peak = peak_flops(dev)
    speed = peak * mfu * n_gpus  # FLOP/s achieved
    rule = f"fitted frontier N* = {frontier.g:.3g} C^{frontier.a:.3f} ({frontier.source})" if frontier else \
        f"{TOKENS_PER_PARAM} tokens per parameter (Chinchilla)"
    if budget_usd is not None:  # dollars -> hours -> FLOPs, then as --flops less attention's share
        total = budget_usd / (dev.usd_per_hour * n_gpus) * 3600 * speed
        flops = total
        for _ in range(20):  # attention's share depends on the shape, the shape on N, N on the FLOPs: settle it
            n = optimal_params(flops, frontier)
            flops = total / (1 + attention_flops_per_token(n, context) / (6 * n))
    if params is None and tokens is not None:
        if frontier:
            raise TinyLMError("--tokens with --scaling: give --flops or --params instead (the frontier is N*(C))")
        params = tokens / TOKENS_PER_PARAM
    if params is None:
        params = optimal_params(flops, frontier)
        tokens = flops / (6 * params)
    elif tokens is None:
        tokens = params * TOKENS_PER_PARAM if not frontier else _frontier_tokens(params, frontier)
    flops_6nd = 6 * params * tokens
    total = flops_6nd + attention_flops_per_token(params, context) * tokens
    hours = total / speed / 3600
    if not all(math.isfinite(x) for x in (params, tokens, total, hours * dev.usd_per_hour * n_gpus)):
        raise too_large
    return Plan(params, tokens, flops_6nd, total, hours, hours * dev.usd_per_hour * n_gpus, gpu, n_gpus, mfu, peak,
                rule)


def _frontier_tokens(params: float, frontier: Frontier) -> float:
    """D for which N is compute-optimal on the frontier: C = (N / g)^(1/a), D = C / 6N."""
    return (params / frontier.g) ** (1 / frontier.a) / (6 * params)


def _si(x: float) -> str:
    """``1.845e18 -> "1.85e18"``, ``124e6 -> "124M"``, ``2.48e9 -> "2.48B"``."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale and x < 1e15:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def format_plan(p: Plan) -> str:
    """The plan as lines for the console."""
    return "\n".join([
        f"rule: {p.rule}",
        f"parameters N: {_si(p.params)}   tokens D: {_si(p.tokens)} ({p.tokens_per_param:.1f} tokens/parameter)",
        f"compute: 6ND = {p.flops_6nd:.3g} FLOPs; with attention {p.flops:.3g} FLOPs (shape of depth "
        f"{depth_for(p.params)}, width {shape_for(depth_for(p.params))['n_embd']})",
        f"device: {p.n_gpus} x {p.gpu} at {p.peak:.3g} FLOP/s peak, MFU {p.mfu:.0%}",
        f"time: {_hours(p.hours)}   cost: ${p.usd:,.2f} (${DEVICES[p.gpu].usd_per_hour:.2f}/h per device)   "
        f"${p.usd_per_million_tokens:.4f} per million tokens",
    ])


def cost_table(gpu: str = "h100-spot", n_gpus: int = 1, mfu: float | None = None, context: int = 1024,
               frontier: Frontier | None = None) -> str:
    """The one-page cost model: compute-optimal training from 10M to 7B parameters, as a markdown table."""
    rows = [plan(params=n, gpu=gpu, n_gpus=n_gpus, mfu=mfu, context=context, frontier=frontier)
            for n in TABLE_SIZES]
    p0 = rows[0]
    lines = [f"Compute-optimal training on {n_gpus} x {gpu} (${DEVICES[gpu].usd_per_hour:.2f}/h each), MFU "
             f"{p0.mfu:.0%}, context {context}; {p0.rule}.", "",
             "| params | tokens | FLOPs (6ND) | FLOPs (+attn) | GPU-hours | time | cost | $ / M tokens |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {_si(p.params)} | {_si(p.tokens)} | {p.flops_6nd:.3g} | {p.flops:.3g} | {p.hours * n_gpus:.3g} | "
              f"{_hours(p.hours)} | ${p.usd:,.2f} | ${p.usd_per_million_tokens:.4f} |" for p in rows]
    return "\n".join(lines)


def parse_amount(text: str) -> float:
    """A count with an optional suffix: ``"124M" -> 124e6``, ``"2.5B" -> 2.5e9``, ``"1e18" -> 1e18``, ``"$500"``."""
    m = re.fullmatch(r"\s*\$?([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*", text.replace("_", ""), re.IGNORECASE)
    try:
        if m:
            return float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m[2].lower()]
    except ValueError:  # digits and dots that are no number: "1.2.3"
        pass
    raise TinyLMError(f"{text!r} is not an amount; write e.g. 124M, 2.5B, 1e18 or 500")


# --------------------------------------------------------------------------- a byte budget

BUDGET_VOCABS = (256, 1024, 4096, 8192, 16384)  # --bytes: the vocabularies compared by default
BUDGET_DEPTHS = (2, 4, 6, 8, 12, 16, 24)


@dataclass
class Fit:
    """The widest model of one vocabulary and depth whose quantized artifact fits the budget."""
    vocab: int
    n_layer: int
    n_embd: int
    n_head: int
    params: int
    bytes: int  # the artifact's estimated bytes (an upper bound: before compression)


def budget_shapes(budget: int, bits: int, *, vocabs: tuple[int, ...] = BUDGET_VOCABS,
                  depths: tuple[int, ...] = BUDGET_DEPTHS, context: int = 1024,
                  head_size: int = HEAD_SIZE) -> list[Fit]:
    """For each vocabulary and depth, the widest width (a multiple of ``head_size``) whose ``bits``-bit artifact
    fits ``budget`` bytes: tinylm's default block otherwise, positions learned up to ``context``, the tokenizer
    file counted at its upper bound. A depth too deep for even one head is left out.

    ``budget_shapes(16_000_000, 6, vocabs=(1024,), depths=(8,))`` -> one Fit of width 1024 (1024 x 1024 x 8).
    """
    import torch

    from ..config import ModelConfig
    from ..interop.artifact import estimate, tokenizer_bytes_bound
    from ..interop.quantize import default_group
    from ..model.gpt import GPT

    def shape(vocab: int, depth: int, heads: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab, n_layer=depth, n_embd=heads * head_size, n_head=heads,
                           block_size=context)

    def size(m: ModelConfig) -> int:
        return estimate(m, bits, default_group(bits), tokenizer_bytes_bound(m.vocab_size)).total

    fits = []
    for vocab in vocabs:
        for depth in depths:
            lo, hi = 0, 1  # widths in heads: lo fits (0: none does yet), hi does not
            while size(shape(vocab, depth, hi)) <= budget:
                lo, hi = hi, hi * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if size(shape(vocab, depth, mid)) <= budget else (lo, mid)
            if lo:
                m = shape(vocab, depth, lo)
                with torch.device("meta"):
                    params = GPT(m).num_params()
                fits.append(Fit(vocab, depth, m.n_embd, m.n_head, params, size(m)))
    return fits


def format_budget(budget: int, bits: int, fits: list[Fit], context: int) -> str:
    """:func:`budget_shapes` as a markdown table, with what the estimate counts."""
    lines = [f"Models whose int{bits} artifact fits {budget:,} bytes (the widest width per vocabulary and depth; "
             f"tinylm's default block, context {context}; weights, scales, tokenizer and header counted "
             f"before compression, so each fits):", "",
             "| vocab | depth | width | heads | parameters | artifact bytes (at most) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {f.vocab} | {f.n_layer} | {f.n_embd} | {f.n_head} | {_si(f.params)} | {f.bytes:,} |" for f in fits]
    if not fits:
        lines.append(f"| none: even one head of width {HEAD_SIZE} at depth {min(BUDGET_DEPTHS)} does not fit | "
                     f"| | | | |")
    return "\n".join(lines)
