"""The output head's cross-entropy in chunks of tokens, gradients included, without the batch's logits.

The plain loss keeps (tokens x vocab) logits, and an fp32 copy of them, for the backward pass: at GPT-2
small, batch 16 x 1024 tokens x 50257 ids, that is 1.6 GB in bf16 plus 3.3 GB in fp32. Here each chunk's
logits live only while their chunk is scored: the forward computes the loss and, at the same time, the
gradients of the hidden states and of the head's weight (softmax - one-hot, times the weight or the hidden
states), and the backward pass only scales them. The same matrix products as the plain loss, none repeated
(Liger-Kernel's fused linear cross-entropy, written with torch's own operations).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                vocab: int) -> torch.Tensor:
        # x (N, C) hidden states, weight (V, C) with rows from vocab on padding, targets (N,) ids
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        N = x.size(0)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, N, chunk):
            xc, tc = x[s:s + chunk], targets[s:s + chunk]  # (n, C), (n,)
            # under autocast the product runs in bf16/fp16 as the plain head's does; the softmax in fp32
            logits = F.linear(xc, weight)
            mm_dtype = logits.dtype  # the dtype autocast multiplies in (the weight's without autocast)
            logits = logits.float()  # (n, V)
            logits[:, vocab:] = -math.inf  # padding: probability exactly 0, and so its gradient
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if not grads:
                continue
            # d(sum of the chunk's losses)/d(logits) = softmax - one-hot; the 1/N of the mean comes after the
            # products, in fp32, so that fp16 does not flush these O(1/N) entries to zero
            g = logits.sub_(lse[:, None]).exp_()  # (n, V): the softmax, in place of the logits
            g[torch.arange(g.size(0), device=g.device), tc] -= 1
            g = g.to(mm_dtype)
            if dx is not None:
                dx[s:s + chunk] = (g @ weight.to(mm_dtype)).to(x.dtype)  # (n, C)
            if dw is not None:
                dw += (g.t() @ xc.to(mm_dtype)).float()  # (V, C), summed over chunks in fp32
        if dx is not None:
            dx /= N
        if dw is not None:
            dw /= N
        ctx.save_for_backward(dx, dw)
        ctx.weight_dtype = weight.dtype
        return total / N

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        dx, dw = ctx.saved_tensors
        return (None if dx is None else dx * grad.to(dx.dtype),
                None if dw is None else (dw * grad).to(ctx.weight_dtype), None, None, None)


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                          vocab: int | None = None) -> torch.Tensor:
    """The mean of ``F.cross_entropy(F.linear(x, weight)[:, :vocab].float(), targets)`` over the N rows of x (N, C),
    computed ``chunk`` rows at a time: peak memory chunk x vocab instead of N x vocab. Rows of ``weight`` from
    ``vocab`` on (default: none) are padding, left out of the softmax. Equal to the plain loss in fp32 to
    rounding, gradients too (tests/test_head_loss.py)."""
    return _ChunkedCrossEntropy.apply(x, weight, targets, chunk, weight.size(0) if vocab is None else vocab)
