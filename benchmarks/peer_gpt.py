"""The GPT-2 a user writes by hand in plain PyTorch: bench_gpu's "plain PyTorch GPT" peer (not part of tinylm).

What a careful user of nanoGPT's design writes: one fused QKV projection, ``scaled_dot_product_attention`` with
``is_causal`` (FlashAttention on a GPU), LayerNorm with bias, tanh-GELU MLP x4, learned positions, the head tied to
the token embedding, the vocabulary padded to a multiple of 64 (50257 -> 50304: the matmuls get aligned shapes;
the padded ids are never targets, so they only learn to be unlikely), and the loss from logits cast to fp32.
No KV cache, no dropout, no options: the point is to be the shortest fast step, to time tinylm against it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), SelfAttention(width, heads)
        self.norm2, self.up, self.down = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, width: int, heads: int, pad_to: int = 64):
        super().__init__()
        padded = math.ceil(vocab / pad_to) * pad_to
        self.tokens, self.positions = nn.Embedding(padded, width), nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, padded, bias=False)
        self.head.weight = self.tokens.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # GPT-2's init: residual projections scaled down by sqrt(2 x layers)
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))  # (B, T, padded vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
