"""The whole GPT in one file: a decoder-only, pre-norm transformer.

Options (all in :class:`tinylm.config.ModelConfig`): LayerNorm or RMSNorm, learned or rotary
positions, GELU / SwiGLU / ReLU² MLP, QK-norm, tied embeddings, dropout, biases.
Shapes: B = batch, T = time (tokens), C = n_embd, nh = heads, hs = head size = C / nh.

Training calls :meth:`GPT.forward` on whole sequences. Generation calls
:meth:`GPT.forward_cached` with a :class:`KVCache`: the prompt is read once, then each new token
costs one position (its query against the stored keys and values) instead of a full forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rope_tables(head_size: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (length, head_size // 2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x (B, nh, T, hs) by position angles."""
    x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of every layer for the tokens read so far (inference only).

    Without a cache, generating token t+1 re-runs all t tokens through the model (nanoGPT's
    ``generate``): O(t) positions per token. With it, each layer's keys and values are stored once
    and a new token costs one position. Slots are aligned across the batch: rows with shorter
    prompts are *left*-padded, ``valid`` marks the real slots, and each row counts its positions
    from its own first real token, so a padded row computes what it would compute alone.

        cache = model.new_cache(batch=1)
        logits, _ = model.forward_cached(torch.tensor([[5, 6, 7]]), cache)  # prefill: (1, 1, vocab)
        logits, _ = model.forward_cached(torch.tensor([[8]]), cache)        # next token: (1, 1, vocab)
        cache.length  # -> 4
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, head_size: int, max_len: int, *,
                 dtype: torch.dtype, device: torch.device | str):
        # keys and values side by side, so that a new token's pair is stored in one copy
        shape = (n_layer, 2, batch, n_head, max_len, head_size)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)  # (L, 2, B, nh, max_len, hs)
        self._split_layers()
        self.length = 0  # slots filled, the same in every row
        self.valid: torch.Tensor | None = None  # (B, max_len) bool, False = padding; None = no padding yet
        self.n_real: torch.Tensor | None = None  # (B,) real tokens per row; kept only once there is padding
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary tables for rotate_half_form

    def _split_layers(self) -> None:
        # one view per layer, made once: indexing self.kv[layer] at every step costs time
        self.layers = [self.kv[i] for i in range(self.kv.size(0))]  # each (2, B, nh, max_len, hs)

    @property
    def max_len(self) -> int:
        return self.kv.size(4)

    @property
    def batch(self) -> int:
        return self.kv.size(2)

    @property
    def full(self) -> bool:
        return self.length >= self.max_len

    def select(self, rows: torch.Tensor) -> None:
        """Keep, reorder or repeat batch rows: new row i is old row ``rows[i]``.

        Beam search reorders its beams this way; contrastive search repeats each row once per
        candidate. ``select(torch.tensor([0, 0, 1]))`` turns a 2-row cache into 3 rows.
        """
        self.kv = self.kv.index_select(2, rows)
        self._split_layers()
        if self.valid is not None:
            self.valid = self.valid.index_select(0, rows)
            self.n_real = self.n_real.index_select(0, rows)


# Generation runs one token per step, where each operation's fixed cost (nn.Module's per-call
# bookkeeping, PyTorch's dispatch) outweighs a small model's arithmetic. The cached path therefore
# calls the modules' weights directly and carries the residual stream as a matrix (B*T, C), which
# F.linear multiplies without the reshapes a (B, T, C) input costs. Same functions, no dropout
# (inference only).

def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def norm(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.RMSNorm):
        return F.rms_norm(x, layer.normalized_shape, layer.weight, layer.eps)
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


def rotate_half_form(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in fewer operations, for generation: the same values up to rounding.

    With cos2 = [cos, cos] and sin2 = [-sin, sin], x * cos2 + [x2, x1] * sin2 is
    [x1 cos - x2 sin, x2 cos + x1 sin]; rolling the last axis by half swaps the halves.
    """
    return torch.addcmul(x * cos2, x.roll(x.size(-1) // 2, dims=-1), sin2)


def cached_attention_mask(valid: torch.Tensor | None, start: int, T: int, device) -> torch.Tensor:
    """Which keys each of T new queries may see, for queries at slots start .. start+T-1.

    Causal (a query sees its own slot and earlier ones) and, with padding, only real slots. A query
    always sees its own slot: a padding query would otherwise have no key at all and give NaN
    (its output is never used). Returns (T, start+T) without padding, else (B, 1, T, start+T).
    """
    L = start + T
    i = torch.arange(start, L, device=device)[:, None]  # (T, 1) slot of each query
    j = torch.arange(L, device=device)[None, :]  # (1, L) slot of each key
    causal = j <= i  # (T, L)
    if valid is None:
        return causal
    return ((causal & valid[:, None, :L]) | (j == i)).unsqueeze(1)  # (B, 1, T, L): broadcast over heads


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_size = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.head_size, eps=1e-6) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_size, eps=1e-6) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _qkv(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, nh, T, hs), normalized and rotated as configured."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.proj(y))

    def forward_cached(self, x: torch.Tensor, rope, cache: KVCache, layer: int,
                       mask: torch.Tensor | None) -> torch.Tensor:
        """Like forward for T new tokens of each of the cache's B rows, x (B*T, C) -> (B*T, C),
        attending to the cached keys/values as well as their own.

        ``rope`` is (cos2, sin2) for :func:`rotate_half_form`, shaped (..., T, 3, 1, hs) to rotate
        q and k in one go and pass v through unchanged (its cos is 1, its sin 0). ``mask`` None
        means "no padding": a prefill into an empty cache is plain causal attention, and a single
        new token may see every stored slot.
        """
        B, C = cache.batch, x.size(1)
        T = x.size(0) // B
        qkv = linear(self.qkv, x).view(B, T, 3, self.n_head, self.head_size)  # (B, T, 3, nh, hs)
        if self.q_norm is not None:  # per-head norms: the same numbers in this layout
            qkv = torch.stack((norm(self.q_norm, qkv[:, :, 0]), norm(self.k_norm, qkv[:, :, 1]), qkv[:, :, 2]), dim=2)
        if rope is not None:
            qkv = rotate_half_form(qkv, *rope)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        start, end = cache.length, cache.length + T
        kv_cache = cache.layers[layer]  # (2, B, nh, max_len, hs)
        kv_cache.narrow(3, start, T).copy_(qkv[1:])
        q = qkv[0]  # (B, nh, T, hs)
        keys, values = kv_cache.narrow(3, 0, end).unbind(0)  # each (B, nh, end, hs)
        if mask is None and start == 0:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        elif mask is None and T == 1:
            y = F.scaled_dot_product_attention(q, keys, values)
        else:
            if mask is None:
                mask = cached_attention_mask(None, start, T, x.device)  # (T, end)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B * T, C)  # (B*T, C): heads side by side again
        return linear(self.proj, y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = int(cfg.mlp_ratio * cfg.n_embd)
        if self.kind == "swiglu":
            # two input branches instead of one: 2/3 of the width keeps the parameter count equal
            hidden = int(2 * hidden / 3)
            self.gate = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        else:
            h = F.gelu(self.up(x), approximate="tanh")
        return self.dropout(self.down(h))

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """forward without dropout, calling the weights directly (see :func:`linear`).

        Kept apart from :meth:`forward` on purpose: training goes through the Linear modules, so
        module hooks (profilers, adapters, the bf16 test) see every call; decoding skips them.
        """
        if self.kind == "swiglu":
            h = F.silu(linear(self.gate, x)) * linear(self.up, x)
        elif self.kind == "relu2":
            h = F.relu(linear(self.up, x)).square()
        else:
            h = F.gelu(linear(self.up, x), approximate="tanh")
        return linear(self.down, h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))

    def forward_cached(self, x: torch.Tensor, rope, cache: KVCache, layer: int, mask) -> torch.Tensor:
        x = x + self.attn.forward_cached(norm(self.norm1, x), rope, cache, layer, mask)
        return x + self.mlp.forward_inference(norm(self.norm2, x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("ModelConfig.vocab_size must be set (>= 2) before building the model")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
            # derived from the config, so not saved in checkpoints
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # recompute each block's activations during backward instead of storing them (set by the trainer)
        self.activation_checkpointing = False
        self._compiled_decode = None  # set by compile_decoding
        self.apply(self._init_weights)
        # residual projections write into the stream 2 * n_layer times: shrink them so the
        # stream's variance does not grow with depth (GPT-2 paper, section 2.3)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets given."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the context length {self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast over B
        x = self.drop(x)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.wpe is None else None
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        # the loss in fp32 even under autocast: log-softmax over a large vocab loses bits in bf16
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows and up to ``max_len`` (default block_size) positions."""
        c = self.cfg
        max_len = max_len or c.block_size
        if max_len > c.block_size:
            raise ValueError(f"a cache of {max_len} positions exceeds the context length {c.block_size}: "
                             f"the model has no positions beyond it")
        p = self.wte.weight
        cache = KVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head, max_len, dtype=p.dtype, device=p.device)
        if self.wpe is None:  # made once per cache, not at every token
            cos, sin = self.rope_cos.to(p.dtype), self.rope_sin.to(p.dtype)  # each (block_size, hs/2)
            cos2, sin2 = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # each (block_size, hs)
            # (block_size, 3, 1, hs) for q, k, v: slicing positions gives (T, 3, 1, hs), which
            # broadcasts over the heads of (B, T, 3, nh, hs); v is left as it is (cos 1, sin 0)
            cache.rope = (torch.stack((cos2, cos2, torch.ones_like(cos2)), dim=1)[:, :, None, :],
                          torch.stack((sin2, sin2, torch.zeros_like(sin2)), dim=1)[:, :, None, :])
        return cache

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None, *,
                       all_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Read new tokens idx (B, T) after those already in ``cache``, and store theirs.

        ``valid`` (B, T) marks real tokens when rows are left-padded (False = padding). Returns
        the logits, (B, T, vocab) if ``all_logits`` else (B, 1, vocab) for the last position only
        (all that generation needs), and the final hidden states (B, T, C) that ``lm_head`` reads
        (contrastive search compares them). Inference only: no dropout, no loss. The logits equal
        :meth:`forward`'s on the whole sequence up to float rounding (tests/test_generate.py).
        """
        B, T = idx.shape
        start = cache.length
        if start + T > cache.max_len:
            raise ValueError(f"the KV cache holds {cache.max_len} positions, {start} are used and {T} more "
                             f"do not fit; slide the window (re-read the newest tokens into a new cache)")
        if valid is not None and cache.valid is None:  # first padding: every earlier slot was real
            cache.valid = torch.ones(B, cache.max_len, dtype=torch.bool, device=idx.device)
            cache.n_real = torch.full((B,), start, dtype=torch.long, device=idx.device)
        if cache.valid is None:
            pos = None  # positions start .. start+T-1 in every row
            mask = None
        else:
            real = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=idx.device)
            cache.valid[:, start:start + T] = real
            # a row's position = real tokens before it in that row (padding gets 0, unused)
            pos = (cache.n_real[:, None] + real.cumsum(1) - 1).clamp(min=0)  # (B, T)
            cache.n_real = cache.n_real + real.sum(1)
            mask = cached_attention_mask(cache.valid, start, T, idx.device)  # (B, 1, T, start+T)
        x = F.embedding(idx, self.wte.weight)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + (self.wpe.weight[start:start + T] if pos is None else F.embedding(pos, self.wpe.weight))  # (T, C) or (B, T, C)
        else:
            cos2, sin2 = cache.rope  # each (block_size, 3, 1, hs)
            # (T, 3, 1, hs), or per row (B, T, 3, 1, hs)
            rope = (cos2[start:start + T], sin2[start:start + T]) if pos is None else (cos2[pos], sin2[pos])
        x = x.view(B * T, -1)  # (B*T, C): the blocks work on a matrix
        for layer, block in enumerate(self.blocks):
            x = block.forward_cached(x, rope, cache, layer, mask)
        cache.length += T
        h = norm(self.norm_f, x).view(B, T, -1)  # (B, T, C)
        logits = linear(self.lm_head, h if all_logits else h[:, -1:])  # (B, T or 1, vocab)
        return logits, h

    def decode(self, idx: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_cached` for one new token per row, idx (B, 1): generation's every step.

        Compiled once :meth:`compile_decoding` was called. Returns logits (B, 1, vocab), h (B, 1, C).
        """
        return (self._compiled_decode or self.forward_cached)(idx, cache)

    def compile_decoding(self) -> None:
        """From now on run :meth:`decode` through ``torch.compile``: faster steps, slow start.

        At batch 1 a step of a small model is ~100 tiny tensor operations whose fixed costs
        outweigh their arithmetic; compiled, they fuse into a few kernels. Compiling takes tens of
        seconds on a CPU at the first step, and again for a batch of another kind (batch 1 vs
        more, left-padded or not); prompt reads and window slides stay uncompiled. On a CPU it
        needs a C++ compiler. Measured in BENCHMARKS.md (``bench_generate.py --compile``).
        """
        self._compiled_decode = torch.compile(self.forward_cached, dynamic=True)

    def num_params(self, non_embedding: bool = False) -> int:
        """All parameters (a tied head counted once), or without the token/position tables.

        Non-embedding excludes wte, wpe, and an untied lm_head, following Kaplan et al. (2020).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the standard count used for MFU:

        6 * N_matmul + 12 * n_layer * n_embd * seq_len, where N_matmul = non-embedding parameters
        plus the output head (a real vocab x width matmul even when tied), and the second term is
        attention's QK^T and AV products (PaLM, appendix B; causal masking not discounted).
        """
        c = self.cfg
        T = seq_len or c.block_size
        n_matmul = self.num_params(non_embedding=True) + c.vocab_size * c.n_embd
        return 6 * n_matmul + 12 * c.n_layer * c.n_embd * T
