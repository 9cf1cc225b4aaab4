"""The one table of how Hugging Face's GPT-2 and Llama name and size what tinylm computes, read both ways.

``hf_import`` reads a folder through it, ``hf_export`` writes one: a name changed here changes both.
"""
from __future__ import annotations

import math

from ..config import ModelConfig
from ..errors import TinyLMError

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default, GPT-2's layer_norm_epsilon
RMSNORM_EPS = 1e-6  # model.make_norm's RMSNorm, Llama's rms_norm_eps
#: GPT-2's activation_function -> the tinylm model.mlp that computes it (export writes the first name of each)
GELU_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}

# GPT-2 (HF, inside transformer.h.<i>) -> tinylm (inside blocks.<i>), each with a weight and a bias;
# True: a Conv1D layer, which stores its weight as (in, out), the transpose of nn.Linear's
GPT2_BLOCK = {"ln_1": ("norm1", False), "attn.c_attn": ("attn.qkv", True), "attn.c_proj": ("attn.proj", True),
              "ln_2": ("norm2", False), "mlp.c_fc": ("mlp.up", True), "mlp.c_proj": ("mlp.down", True)}
# Llama (HF, inside model.layers.<i>) -> tinylm (inside blocks.<i>), weights only
LLAMA_BLOCK = {"input_layernorm": "norm1", "self_attn.o_proj": "attn.proj", "post_attention_layernorm": "norm2",
               "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}
# tinylm's fused attn.qkv weight is these three stacked by rows: all heads' q, then k, then v
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def mlp_hidden(m: ModelConfig) -> int:
    """The MLP's hidden width, as model.MLP computes it."""
    hidden = int(m.mlp_ratio * m.n_embd)
    return int(2 * hidden / 3) if m.mlp == "swiglu" else hidden


def mlp_ratio_for(hidden: int, n_embd: int, mlp: str) -> float:
    """The ``--model.mlp_ratio`` whose MLP is ``hidden`` wide: the inverse of :func:`mlp_hidden`.

    ``mlp_ratio_for(3072, 768, "gelu") -> 4.0``; ``mlp_ratio_for(2048, 768, "swiglu") -> 4.0``.
    """
    wide = -(-3 * hidden // 2) if mlp == "swiglu" else hidden  # swiglu keeps int(2 * wide / 3) of it
    ratio = wide / n_embd
    while int(ratio * n_embd) < wide:  # wide / n_embd * n_embd may round just below wide
        ratio = math.nextafter(ratio, math.inf)
    if mlp_hidden(ModelConfig(n_embd=n_embd, mlp=mlp, mlp_ratio=ratio)) != hidden:
        raise TinyLMError(f"an MLP {hidden} wide at width {n_embd} has no --model.mlp_ratio that gives it")
    return ratio
