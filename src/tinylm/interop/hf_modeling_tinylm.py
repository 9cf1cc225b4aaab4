"""tinylm's GPT for transformers' ``trust_remote_code``: ``tinylm export --format hf-code`` copies this file into
the folder as ``modeling_tinylm.py``, for the models no transformers architecture computes (learned positions
with RMSNorm, SwiGLU or QK-norm; rotary positions with LayerNorm and SwiGLU or QK-norm; rotary positions with
RMSNorm and biases), or any other.

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

Self-contained on purpose (torch and transformers only, never tinylm): it is tinylm's model/gpt.py without
training, written to be checked against it line by line; the weights keep tinylm's names. Shapes: B =
batch, T = new tokens, P = tokens already in the cache, C = n_embd, nh = heads, hs = head size = C / nh.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

Rotation = tuple[torch.Tensor, torch.Tensor] | None  # rotary positions' (cos2, sin2); None: learned positions
# transformers 5 calls the KV cache `cache` where 4 said `past_key_values`: forward takes either, answers in kind
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class TinyLMConfig(PretrainedConfig):
    """tinylm's [model] settings (its ModelConfig), as ``tinylm export`` writes them into config.json."""
    model_type = "tinylm"
    # the names transformers' generic code (caches, generation) asks for
    attribute_map: ClassVar[dict[str, str]] = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                                               "num_attention_heads": "n_head", "max_position_embeddings": "block_size"}

    def __init__(self, vocab_size: int = 2, block_size: int = 256, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384, mlp: str = "gelu_exact", mlp_hidden: int = 1536, norm: str = "layernorm",
                 pos: str = "learned", rope_base: float = 10000.0, qk_norm: bool = False, bias: bool = False,
                 tie_word_embeddings: bool = True, **kwargs):
        self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd = (
            vocab_size, block_size, n_layer, n_head, n_embd)
        self.mlp, self.mlp_hidden, self.norm, self.pos, self.rope_base = mlp, mlp_hidden, norm, pos, rope_base
        self.qk_norm, self.bias = qk_norm, bias
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def make_norm(c: TinyLMConfig, dim: int) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6) if c.norm == "rmsnorm" else nn.LayerNorm(dim, bias=c.bias)


def rope(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos2 = [cos, cos] and sin2 = [-sin, sin] of position x frequency: each (B, 1, T, hs) for positions (B, T)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # (B, T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1)[:, None], torch.cat((-sin, sin), dim=-1)[:, None]


def apply_rope(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (B, nh, T, hs): [x1 cos - x2 sin, x2 cos + x1 sin]."""
    return x * cos2.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin2.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: TinyLMConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.head_size = layer, c.n_head, c.n_embd // c.n_head
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.q_norm = nn.RMSNorm(self.head_size, eps=1e-6) if c.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_size, eps=1e-6) if c.qk_norm else None

    def forward(self, x: torch.Tensor, rotation: Rotation, cache: Cache | None, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotation is not None:
            q, k = apply_rope(q, *rotation), apply_rope(k, *rotation)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)  # each (B, nh, P + T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: TinyLMConfig):
        super().__init__()
        self.kind = c.mlp
        if self.kind == "swiglu":
            self.gate = nn.Linear(c.n_embd, c.mlp_hidden, bias=c.bias)
        self.up = nn.Linear(c.n_embd, c.mlp_hidden, bias=c.bias)
        self.down = nn.Linear(c.mlp_hidden, c.n_embd, bias=c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        else:  # gelu_exact: erf; gelu: tanh's approximation
            h = F.gelu(self.up(x), approximate="tanh" if self.kind == "gelu" else "none")
        return self.down(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, c: TinyLMConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = make_norm(c, c.n_embd), Attention(c, layer)
        self.norm2, self.mlp = make_norm(c, c.n_embd), MLP(c)

    def forward(self, x: torch.Tensor, rotation: Rotation, cache: Cache | None, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotation, cache, mask)
        return x + self.mlp(self.norm2(x))


class TinyLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyLMConfig
    base_model_prefix = "tinylm"

    def __init__(self, config: TinyLMConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(c, layer) for layer in range(c.n_layer))
        self.norm_f = make_norm(c, c.n_embd)
        # a tied head is the embedding itself (forward multiplies by wte.weight): nothing to tie or to save twice
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # only for weights a folder lacks
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, labels: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        """input_ids (B, T), the tokens after the P in ``cache`` (a transformers Cache; generate passes one)
        -> logits (B, T, vocab). ``attention_mask`` (B, P + T): 0 marks padding."""
        B, T = input_ids.shape
        cache = cache if cache is not None else past_key_values
        P = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(P, P + T, device=input_ids.device).expand(B, T)  # (B, T)
        # which keys each query sees: itself and earlier slots, not padding; always its own slot (a padding
        # query would otherwise see nothing and give NaN; its output is never used)
        i = torch.arange(P, P + T, device=input_ids.device)[:, None]  # (T, 1) slot of each query
        j = torch.arange(P + T, device=input_ids.device)[None, :]  # (1, P + T) slot of each key
        mask = (j <= i)[None, None]  # (1, 1, T, P + T)
        if attention_mask is not None:
            mask = (mask & attention_mask[:, None, None, :].bool()) | (j == i)  # (B, 1, T, P + T)
        x = self.wte(input_ids)  # (B, T, C)
        rotation = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rotation = rope(position_ids, self.config.n_embd // self.config.n_head, self.config.rope_base)
        for block in self.blocks:
            x = block(x, rotation, cache, mask)
        x = self.norm_f(x)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight)  # (B, T, vocab)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: cache})
