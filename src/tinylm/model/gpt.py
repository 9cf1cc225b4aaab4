"""The whole GPT in one file: a decoder-only, pre-norm transformer.

Options (all in :class:`tinylm.config.ModelConfig`): LayerNorm or RMSNorm, learned or rotary
positions, GELU / SwiGLU / ReLU² MLP, QK-norm, tied embeddings, dropout, biases.
Shapes: B = batch, T = time (tokens), C = n_embd, nh = heads, hs = head size = C / nh.

One forward for training and generation. Training calls :meth:`GPT.forward` on whole sequences;
generation passes a :class:`KVCache` too: the prompt is read once, then each new token costs one
position (its query against the stored keys and values) instead of a full forward.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import attend, choose
from .head_loss import chunked_cross_entropy

Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos2, sin2) at the positions at hand; None: learned positions
Mask = torch.Tensor | str | None  # "causal", None (every stored slot), or a boolean (B, 1, T, length + T)

_labels = False  # whether label() records: `tinylm profile` turns it on with profile_labels()


def label(name: str) -> contextlib.AbstractContextManager:
    """A torch.profiler range named ``name`` while :func:`profile_labels` is on, else nothing: a range costs
    microseconds, and generation runs this forward once per token. `tinylm profile` sums time per label."""
    return torch.profiler.record_function(name) if _labels else contextlib.nullcontext()


@contextlib.contextmanager
def profile_labels() -> Iterator[None]:
    """Turn the model's (and the training loop's) :func:`label` ranges on for the duration."""
    global _labels
    before, _labels = _labels, True
    try:
        yield
    finally:
        _labels = before


def padded_vocab(cfg: ModelConfig) -> int:
    """The head's width: vocab_size rounded up to a multiple of vocab_pad_to (50257 with 64 -> 50304)."""
    return -(-cfg.vocab_size // cfg.vocab_pad_to) * cfg.vocab_pad_to


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    return {"rmsnorm": lambda: nn.RMSNorm(dim, eps=1e-6), "layernorm": lambda: nn.LayerNorm(dim, bias=cfg.bias)}[
        cfg.norm]()


def rope_tables(head_size: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables for :func:`apply_rope`: cos2 = [cos, cos] and sin2 = [-sin, sin] of
    position x frequency, each (length, head_size)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (..., T, hs) by their position's angles.

    With x = [x1, x2]: x * [cos, cos] + [x2, x1] * [-sin, sin] = [x1 cos - x2 sin, x2 cos + x1 sin];
    rolling the last axis by half swaps the halves. Three operations instead of a split and a cat.
    """
    return torch.addcmul(x * cos2.to(x.dtype), x.roll(x.size(-1) // 2, dims=-1), sin2.to(x.dtype))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when it would do nothing (generation calls it ~3 times a layer
    per token, where even a no-op call costs measurable time: BENCHMARKS.md, decode step)."""
    return F.dropout(x, p, True) if training and p > 0 else x


class KVCache:
    """Keys and values of every layer for the tokens read so far (inference only).

    Without a cache, generating token t+1 re-runs all t tokens through the model (nanoGPT's
    ``generate``): O(t) positions per token. With it, each layer's keys and values are stored once
    and a new token costs one position. Slots are aligned across the batch: rows with shorter
    prompts are *left*-padded, ``valid`` marks the real slots, and each row counts its positions
    from its own first real token, so a padded row computes what it would compute alone.

        cache = model.new_cache(batch=1)
        logits, _ = model(torch.tensor([[5, 6, 7]]), cache=cache)  # prefill: (1, 1, vocab)
        logits, _ = model(torch.tensor([[8]]), cache=cache)        # next token: (1, 1, vocab)
        cache.length  # -> 4
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, head_size: int, max_len: int, *,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layer, 2, batch, n_head, max_len, head_size)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)  # (L, 2, B, nh, max_len, hs)
        self._split_layers()
        self.length = 0  # slots filled, the same in every row
        self.valid: torch.Tensor | None = None  # (B, max_len) bool, False = padding; None = no padding yet
        self.n_real: torch.Tensor | None = None  # (B,) real tokens per row; kept only once there is padding
        self.hidden: torch.Tensor | None = None  # (B, T, C) final hidden states of the tokens read last

    def _split_layers(self) -> None:
        # views made once: indexing self.kv at every step costs time
        # keys, values: each (B, nh, max_len, hs)
        self.layers = [(self.kv[i, 0], self.kv[i, 1]) for i in range(self.kv.size(0))]

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

    def begin(self, T: int, valid: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, Mask]:
        """Make room for T new tokens of each row; ``valid`` (B, T) marks real ones (None: all real).

        Returns their positions, (T,) or per row (B, T), and the attention mask for them:
        "causal" (a prefill into an empty cache without padding), None (one new token without
        padding sees every stored slot), or a boolean (B, 1, T, length + T) tensor.
        """
        B, start = self.batch, self.length
        if start + T > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, {start} are used and {T} more "
                             f"do not fit; slide the window (re-read the newest tokens into a new cache)")
        if valid is not None and self.valid is None:  # first padding: every earlier slot was real
            self.valid = torch.ones(B, self.max_len, dtype=torch.bool, device=device)
            self.n_real = torch.full((B,), start, dtype=torch.long, device=device)
        if self.valid is None:
            positions = torch.arange(start, start + T, device=device)  # (T,)
            return positions, "causal" if start == 0 else None if T == 1 else causal_mask(None, start, T, device)
        real = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        self.valid[:, start:start + T] = real
        # a row's position = real tokens before it in that row (padding gets 0, unused)
        positions = (self.n_real[:, None] + real.cumsum(1) - 1).clamp(min=0)  # (B, T)
        self.n_real = self.n_real + real.sum(1)
        return positions, causal_mask(self.valid, start, T, device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' k, v (B, nh, T, hs) after the stored ones; returns all of this
        layer's keys and values so far, each (B, nh, length + T, hs)."""
        start, T = self.length, k.size(2)
        keys, values = self.layers[layer]  # each (B, nh, max_len, hs)
        keys.narrow(2, start, T).copy_(k)
        values.narrow(2, start, T).copy_(v)
        return keys.narrow(2, 0, start + T), values.narrow(2, 0, start + T)


def causal_mask(valid: torch.Tensor | None, start: int, T: int, device: torch.device) -> torch.Tensor:
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
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of a KV cache's layers is this one's
        self.n_head, self.head_size = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.head_size, eps=1e-6) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_size, eps=1e-6) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.weights_dropout = cfg.weights_dropout
        self.kernel = "sdpa" if cfg.attention == "auto" else cfg.attention  # GPT.choose_attention resolves auto

    def forward(self, x: torch.Tensor, B: int, rope: Rope, cache: KVCache | None, mask: Mask) -> torch.Tensor:
        """x (B*T, C) -> (B*T, C). With a cache, the T tokens also attend to the stored ones
        (``mask`` as :meth:`KVCache.begin` returns it), and their keys and values are stored."""
        T, C = x.size(0) // B, x.size(1)
        with label("attn.qkv"):
            qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        with label("attn.kernel"):  # QK-norm and rotation included: everything between the two projections
            q, k, v = qkv.unbind(0)  # each (B, nh, T, hs)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(torch.stack((q, k)), *rope).unbind(0)  # rotate both in one go
            if cache is not None:
                k, v = cache.store(self.layer, k, v)  # each (B, nh, length + T, hs)
            y = attend(q, k, v, mask, self.weights_dropout if self.training else 0.0, self.kernel)
            y = y.transpose(1, 2).reshape(B * T, C)  # (B*T, C): heads side by side again
        with label("attn.proj"):
            return dropout(self.proj(y), self.dropout, self.training)


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
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        else:  # gelu_exact: erf; gelu: tanh's approximation (GPT-2's), slower on a CPU (BENCHMARKS.md)
            h = F.gelu(self.up(x), approximate={"gelu_exact": "none", "gelu": "tanh"}[self.kind])
        return dropout(self.down(h), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.norm2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, B: int, rope: Rope, cache: KVCache | None = None,
                mask: Mask = "causal") -> torch.Tensor:
        with label("norm"):
            h = self.norm1(x)
        x = x + self.attn(h, B, rope, cache, mask)
        with label("norm"):
            h = self.norm2(x)
        with label("mlp"):
            return x + self.mlp(h)


class Head(nn.Linear):
    """The output head, hidden states (..., C) -> logits (..., vocab), with its product computed padded.

    With model.vocab_pad_to > 1 the weight gets zero rows below it up to that multiple (GPT-2's 50257 -> 50304
    with 64), the width GPU matrix tiles want, and the padding's logits are cut off before they leave: no
    softmax sees them, and the parameter, checkpoints, optimizer state and exports keep the true vocabulary.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.n_embd, cfg.vocab_size, bias=False)
        self.padded = padded_vocab(cfg)

    def padded_weight(self) -> torch.Tensor:
        """The weight (padded vocab, C): the true rows, then zeros."""
        extra = self.padded - self.out_features
        return F.pad(self.weight, (0, 0, 0, extra)) if extra else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padded == self.out_features:  # no padding: nn.Linear's product (decoding calls it every token)
            return F.linear(x, self.weight)
        return F.linear(x, self.padded_weight())[..., :self.out_features]  # (..., vocab): a view of the padded


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("ModelConfig.vocab_size must be set (>= 2) before building the model")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = Head(cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
            # built once; derived from the config, so not saved in checkpoints
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs)
            self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hs)
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets given (with
        ``model.loss_chunk`` the logits are None: the loss is computed in chunks without them).

        With a KV cache (generation), idx holds the T tokens that follow those already in it;
        their keys and values are stored, and only the last position's logits (B, 1, vocab) are
        returned: generation needs the next token's distribution, and the head over a whole
        prompt would cost a (T x C) @ (C x vocab) product for nothing. The final hidden states of
        all T tokens are left in ``cache.hidden`` (contrastive search compares them). ``valid``
        (B, T) marks real tokens when rows are left-padded (False = padding).
        """
        B, T = idx.shape
        if cache is None:
            if self.cfg.block_size < T:
                raise ValueError(f"sequence of {T} tokens exceeds the context length {self.cfg.block_size}")
            pos, mask = torch.arange(T, device=idx.device), "causal"  # (T,)
        else:
            pos, mask = cache.begin(T, valid, idx.device)  # (T,) or per row (B, T)
        with label("embedding"):
            x = self.wte(idx)  # (B, T, C)
            if self.wpe is not None:
                x = x + self.wpe(pos)  # (T, C) broadcast over B, or (B, T, C)
        # the residual stream as a matrix: Linear layers multiply it without reshaping
        x = dropout(x, self.cfg.dropout, self.training).view(B * T, -1)  # (B*T, C)
        rope = None
        if self.wpe is None:
            rope = self.rope_cos[pos], self.rope_sin[pos]  # each (T, hs) or (B, T, hs)
            if pos.dim() == 2:
                rope = rope[0][:, None], rope[1][:, None]  # (B, 1, T, hs): broadcast over heads
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, B, rope, use_reentrant=False)
            else:
                x = block(x, B, rope, cache, mask)
        with label("norm"):
            x = self.norm_f(x).view(B, T, -1)  # (B, T, C)
        if cache is not None:
            cache.length += T
            cache.hidden = x
            return self.lm_head(x[:, -1:]), None  # (B, 1, vocab)
        with label("head+loss"):
            if targets is not None and self.cfg.loss_chunk:  # no logits kept: the loss alone
                return None, chunked_cross_entropy(x.view(B * T, -1), self.lm_head.padded_weight(), targets.view(-1),
                                                   self.cfg.loss_chunk, self.cfg.vocab_size)
            logits = self.lm_head(x)  # (B, T, vocab)
            if targets is None:
                return logits, None
            # the loss in fp32 even under autocast: log-softmax over a large vocab loses bits in bf16
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
            return logits, loss

    def choose_attention(self, device: torch.device, dtype: torch.dtype, batch: int, seq: int | None = None,
                         training: bool = False) -> str:
        """Resolve ``model.attention`` for ``batch`` sequences of ``seq`` tokens (default block_size) in ``dtype`` on
        ``device``, with the config's dropout when ``training`` (:func:`.attention.choose`: auto measures once
        per machine) and set it in every layer. Until called, auto runs SDPA. Returns the kernel: sdpa | math."""
        c = self.cfg
        kind = choose(c.attention, device, dtype, (batch, c.n_head, seq or c.block_size, c.n_embd // c.n_head),
                      c.weights_dropout if training else 0.0)
        self.set_attention(kind)
        return kind

    def set_attention(self, kind: str) -> None:
        """Run attention with ``kind`` (sdpa | math) in every layer."""
        for block in self.blocks:
            block.attn.kernel = kind

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows and up to ``max_len`` (default block_size) positions."""
        c = self.cfg
        max_len = max_len or c.block_size
        if max_len > c.block_size:
            raise ValueError(f"a cache of {max_len} positions exceeds the context length {c.block_size}: "
                             f"the model has no positions beyond it")
        p = self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head, max_len, dtype=p.dtype, device=p.device)

    def decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row, idx (B, 1), after those in ``cache``: generation's every step.

        :meth:`forward` with the cache, compiled once :meth:`compile_decoding` was called.
        Returns the logits (B, 1, vocab); the hidden states (B, 1, C) are in ``cache.hidden``.
        """
        return (self._compiled_decode or self.forward)(idx, cache=cache)[0]

    def compile_decoding(self) -> None:
        """From now on run :meth:`decode` through ``torch.compile``: faster steps, slow start.

        At batch 1 a step of a small model is ~100 tiny tensor operations whose fixed costs
        outweigh their arithmetic; compiled, they fuse into a few kernels. Compiling takes tens of
        seconds on a CPU at the first step, and again for a batch of another kind (batch 1 vs
        more, left-padded or not); prompt reads and window slides stay uncompiled. On a CPU it
        needs a C++ compiler. Measured in BENCHMARKS.md (``bench_generate.py --compile``).
        """
        self._compiled_decode = torch.compile(self.forward, dynamic=True)

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

    def flops_by_component(self, seq_len: int | None = None) -> dict[str, int]:
        """Training FLOPs per token (forward + backward = 3 x forward) of each labelled component, e.g. for
        4 layers, width 128, relu2 MLP, context 256, vocab 65: attn.qkv 1.2M, attn.kernel 1.6M, attn.proj
        0.4M, mlp 3.1M, head+loss 0.05M. Their sum is :meth:`flops_per_token` less 6 x the norms' few weights
        (elementwise, not matmuls); embeddings and norms count 0."""
        c = self.cfg
        T, C, L = seq_len or c.block_size, c.n_embd, c.n_layer
        mlp = self.blocks[0].mlp
        mlp_weights = sum(m.weight.numel() for m in (mlp.up, mlp.down, getattr(mlp, "gate", None)) if m is not None)
        return {"embedding": 0, "norm": 0, "attn.qkv": 6 * 3 * C * C * L, "attn.kernel": 12 * L * C * T,
                "attn.proj": 6 * C * C * L, "mlp": 6 * mlp_weights * L, "head+loss": 6 * c.vocab_size * C}

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
