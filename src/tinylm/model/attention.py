"""The attention kernel, chosen by measurement: torch's fused SDPA or the explicit matmul-softmax-matmul.

Both compute softmax(q k^T / sqrt(hs) + mask) v. Which is faster depends on the device, the dtype and the
shape, and not always the way one would guess: on a CPU with native bf16 the explicit form can beat SDPA's
flash kernel in bf16 at one shape and lose to it at another (BENCHMARKS.md, "Training throughput", has the
measurements). So ``model.attention = auto`` measures both once per machine, dtype and shape (a fraction of a
second, cached like the CPU peak) and keeps the faster; on CUDA it takes SDPA (flash / memory-efficient
kernels) without measuring.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..machine_cache import machine_cached

MARGIN = 0.9  # the explicit form is chosen only when it takes under 90% of SDPA's time: SDPA is the default


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | str | None, dropout_p: float,
           kind: str) -> torch.Tensor:
    """q (B, nh, T, hs), k and v (B, nh, L, hs) -> (B, nh, T, hs).

    ``mask``: "causal" (T == L), None (every key visible) or boolean, True = visible, (T, L) or (B, 1, T, L).
    """
    if kind == "sdpa":
        causal = isinstance(mask, str)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                              dropout_p=dropout_p)
    return explicit_attention(q, k, v, mask, dropout_p)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | str | None,
                       dropout_p: float) -> torch.Tensor:
    """The textbook form in three batched products: scores = mask + q k^T / sqrt(hs) in one baddbmm, softmax
    (in fp32, like SDPA's kernels, then back to q's dtype), scores @ v."""
    B, nh, T, hs = q.shape
    L = k.size(2)
    qf, kf, vf = q.reshape(B * nh, T, hs), k.reshape(B * nh, L, hs), v.reshape(B * nh, L, hs)
    scale = 1.0 / math.sqrt(hs)
    if mask is None:
        scores = torch.bmm(qf, kf.transpose(1, 2)) * scale
    else:
        visible = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T) if isinstance(mask, str) else mask
        bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill_(~visible, float("-inf"))
        if bias.dim() == 4:  # (B, 1, T, L): one mask per row, the same for its heads
            bias = bias.expand(B, nh, T, L).reshape(B * nh, T, L)
        scores = torch.baddbmm(bias, qf, kf.transpose(1, 2), alpha=scale)  # (B*nh, T, L)
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.bmm(weights, vf).view(B, nh, T, hs)


def choose(kind: str, device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int],
           dropout: float = 0.0) -> str:
    """The kernel to run for ``kind`` (auto | sdpa | math) on ``device`` in ``dtype`` for queries of ``shape``
    (batch, heads, tokens, head size) with attention ``dropout`` (training's; 0 for evaluation and generation):
    ``kind`` itself unless auto; auto = SDPA on CUDA, elsewhere the faster of the two by :func:`measure` (cached
    per machine, dtype, shape and dropout: with dropout, SDPA leaves its fast CPU kernel)."""
    if kind != "auto":
        return kind
    if device.type != "cpu":
        return "sdpa"
    key = f"{dtype}|causal {'x'.join(map(str, shape))}" + (f"|dropout {dropout:g}" if dropout else "")
    times = machine_cached("attention", key, lambda: measure(dtype, shape, dropout))
    return "math" if times["math"] < MARGIN * times["sdpa"] else "sdpa"


def measure(dtype: torch.dtype, shape: tuple[int, int, int, int], dropout: float = 0.0,
            trials: int = 3) -> dict[str, float]:
    """Seconds of one causal forward + backward of each kernel at ``shape`` in ``dtype`` with ``dropout`` on the CPU
    (the best of ``trials``, after a warm-up): {"sdpa": s, "math": s}."""
    g = torch.Generator().manual_seed(0)  # its own stream: probing must not move training's random state
    q, k, v = (torch.randn(shape, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
    times = {}
    with torch.random.fork_rng(devices=[]):  # dropout's masks must not move training's random state either
        for kind in ("sdpa", "math"):
            best = math.inf
            for trial in range(trials + 1):
                t0 = time.perf_counter()
                attend(q, k, v, "causal", dropout, kind).sum().backward()
                if trial:  # the first call warms up
                    best = min(best, time.perf_counter() - t0)
            times[kind] = best
    return times
