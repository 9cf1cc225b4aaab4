"""The one table of how Hugging Face's model families name and size what tinylm computes, read both ways.

``hf_import`` reads a folder through it, ``hf_export`` writes one: a name changed here changes both.
Three layouts: GPT-2's (learned positions, LayerNorm, one activation), GPT-NeoX's (rotary positions,
LayerNorm, one activation) and Llama's (rotary positions, RMSNorm, q/k/v/o projections), whose relatives
differ only in the MLP and in QK-norm (:data:`ROTARY`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..config import ModelConfig, arch_keys
from ..errors import TinyLMError

LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default, GPT-2's layer_norm_epsilon
RMSNORM_EPS = 1e-6  # model.make_norm's RMSNorm (and QK-norm's), the rotary families' rms_norm_eps
#: an MLP of one activation (GPT-2's activation_function, Arcee's and Apertus's hidden_act) -> the tinylm model.mlp
#: that computes it; export writes the first name of each (transformers.activations.ACT2FN defines them)
ACT_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu2": "relu2"}
HF_ACT = {ours: hf for hf, ours in reversed(ACT_FROM_HF.items())}  # tinylm's model.mlp -> the name written
UNGATED = tuple(dict.fromkeys(ACT_FROM_HF.values()))  # the model.mlp kinds of one activation: gelu, gelu_exact, relu2

# GPT-2 (HF, inside transformer.h.<i>) -> tinylm (inside blocks.<i>), each with a weight and a bias;
# True: a Conv1D layer, which stores its weight as (in, out), the transpose of nn.Linear's
GPT2_BLOCK = {"ln_1": ("norm1", False), "attn.c_attn": ("attn.qkv", True), "attn.c_proj": ("attn.proj", True),
              "ln_2": ("norm2", False), "mlp.c_fc": ("mlp.up", True), "mlp.c_proj": ("mlp.down", True)}
# tinylm's fused attn.qkv weight is these three stacked by rows: all heads' q, then k, then v
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
# GPT-NeoX (HF, inside gpt_neox.layers.<i>) -> tinylm (inside blocks.<i>), each with a weight and a bias; its
# fused query_key_value holds each head's q, k and v together (:func:`neox_qkv`)
NEOX_BLOCK = {"input_layernorm": "norm1", "attention.query_key_value": "attn.qkv", "attention.dense": "attn.proj",
              "post_attention_layernorm": "norm2", "mlp.dense_h_to_4h": "mlp.up", "mlp.dense_4h_to_h": "mlp.down"}


class Rotary(NamedTuple):
    """A transformers family with Llama's layout (``model.layers.<i>``, q/k/v/o_proj, RMSNorm, rotation pairs
    (i, i + hs/2), no biases) and how it differs from Llama."""
    architecture: str
    gated: bool  # SwiGLU (gate_proj, up_proj: hidden_act silu) or one activation (up_proj: hidden_act in HF_ACT)
    qk_norm: bool  # each head's q and k RMS-normalized before the rotation (self_attn.q_norm, k_norm)
    norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")  # a block's two RMSNorms


#: model_type -> family: together they compute every rope + rmsnorm model without biases
ROTARY = {"llama": Rotary("LlamaForCausalLM", gated=True, qk_norm=False),
          "qwen3": Rotary("Qwen3ForCausalLM", gated=True, qk_norm=True),
          "arcee": Rotary("ArceeForCausalLM", gated=False, qk_norm=False),
          "apertus": Rotary("ApertusForCausalLM", gated=False, qk_norm=True,
                            norms=("attention_layernorm", "feedforward_layernorm"))}
# model_type -> architecture; "tinylm": any model, with its own modeling code (hf_modeling_tinylm.py)
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", **{kind: r.architecture for kind, r in ROTARY.items()},
                 "gpt_neox": "GPTNeoXForCausalLM", "tinylm": "TinyLMForCausalLM"}
# the architecture's fields TinyLMConfig takes as they are (mlp_ratio and tie_embeddings go as mlp_hidden and
# tie_word_embeddings)
TINYLM_FIELDS = tuple(k for k in arch_keys() if k not in ("mlp_ratio", "tie_embeddings"))


def rotary_block(r: Rotary) -> dict[str, str]:
    """A rotary family's weights inside ``model.layers.<i>`` -> tinylm's inside ``blocks.<i>``, q/k/v aside
    (:data:`LLAMA_QKV`)."""
    names = {r.norms[0]: "norm1", "self_attn.o_proj": "attn.proj", r.norms[1]: "norm2",
             "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}
    if r.gated:
        names["mlp.gate_proj"] = "mlp.gate"
    if r.qk_norm:
        names |= {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}
    return names


def neox_qkv(t: torch.Tensor, n_head: int, to_neox: bool) -> torch.Tensor:
    """tinylm's qkv rows (q of all heads, then k, then v) <-> GPT-NeoX's (head 0's q, k, v, then head 1's, ...),
    for a weight (3C, C) or a bias (3C,)."""
    shape = (3, n_head, -1, *t.shape[1:]) if to_neox else (n_head, 3, -1, *t.shape[1:])
    return t.reshape(shape).transpose(0, 1).reshape(t.shape)


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
