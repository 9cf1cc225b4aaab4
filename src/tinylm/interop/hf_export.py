"""A tinylm checkpoint -> a Hugging Face folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load.

Two model families have the same computation as a tinylm configuration:

* ``GPT2LMHeadModel``: learned positions, LayerNorm, GELU (tanh: GPT-2's ``gelu_new``; or exact). tinylm
  without biases is GPT-2 with zero biases (LayerNorm's included); GPT-2's Conv1D stores weights as (in, out).
* ``LlamaForCausalLM``: rotary positions, RMSNorm (eps 1e-6), SwiGLU, no biases; tinylm's fused
  qkv matrix is split into q_proj, k_proj and v_proj, its rotation pairs (i, i + hs/2) as Llama's.

Anything else (ReLU², QK-norm, a mix of the two families) is refused, naming the option. The BPE
tokenizer goes out as ``tokenizer.json`` with ``<|endoftext|>`` as BOS and EOS. The folder is built
beside ``--out`` and swapped in whole.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..checkpoint import checkpoint_config, checkpoint_tokenizer, load_part
from ..config import ModelConfig
from ..errors import TinyLMError
from ..fileio import replace_dir, scratch_sibling, write_failure, write_text_atomic
from ..tokenizer import ENDOFTEXT, Tokenizer
from ..version import __version__
from .hf_names import (
    ARCHITECTURES,
    GELU_FROM_HF,
    GPT2_BLOCK,
    LAYERNORM_EPS,
    LLAMA_BLOCK,
    LLAMA_QKV,
    RMSNORM_EPS,
    mlp_hidden,
)

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# the settings each family requires: each key's allowed values
FAMILIES = {
    "gpt2": {"pos": ("learned",), "norm": ("layernorm",), "mlp": tuple(dict.fromkeys(GELU_FROM_HF.values())),
             "qk_norm": (False,)},
    "llama": {"pos": ("rope",), "norm": ("rmsnorm",), "mlp": ("swiglu",), "qk_norm": (False,), "bias": (False,)},
}


def family(m: ModelConfig) -> str:
    """``gpt2`` or ``llama``: the family whose computation ``m`` is; otherwise an error naming the option."""
    name = "gpt2" if m.pos == "learned" else "llama"
    wrong = [f"--model.{k} {json.dumps(getattr(m, k))}" for k, v in FAMILIES[name].items() if getattr(m, k) not in v]
    if wrong:
        need = ", ".join(f"--model.{k} {' or '.join(json.dumps(x) for x in v)}"
                         for k, v in FAMILIES[name].items())
        raise TinyLMError(f"the Hugging Face export cannot write {', '.join(wrong)}: with --model.pos {m.pos} it "
                          f"writes {ARCHITECTURES[name]}, which needs {need}; use --format safetensors for the "
                          f"weights alone")
    return name


def gpt2_files(m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """GPT2Config's fields and GPT2LMHeadModel's tensors for a GPT-2-family tinylm model."""
    activation = next(hf for hf, ours in GELU_FROM_HF.items() if ours == m.mlp)
    config = {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", "vocab_size": m.vocab_size,
              "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
              "n_inner": mlp_hidden(m), "activation_function": activation, "layer_norm_epsilon": LAYERNORM_EPS,
              "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.weights_dropout,
              "scale_attn_weights": True, "tie_word_embeddings": m.tie_embeddings}

    def bias(name: str, size: int) -> torch.Tensor:  # no bias = a zero bias
        return state.get(name, torch.zeros(size))

    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["norm_f.weight"],
           "transformer.ln_f.bias": bias("norm_f.bias", m.n_embd)}
    for i in range(m.n_layer):
        for hf, (ours, conv) in GPT2_BLOCK.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{hf}.weight"] = w.t() if conv else w
            out[f"transformer.h.{i}.{hf}.bias"] = bias(f"blocks.{i}.{ours}.bias", w.size(0))
    if not m.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return config, out


def llama_files(m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """LlamaConfig's fields and LlamaForCausalLM's tensors for a Llama-family tinylm model."""
    config = {"architectures": [ARCHITECTURES["llama"]], "model_type": "llama", "vocab_size": m.vocab_size,
              "hidden_size": m.n_embd, "intermediate_size": mlp_hidden(m), "num_hidden_layers": m.n_layer,
              "num_attention_heads": m.n_head, "num_key_value_heads": m.n_head, "head_dim": m.n_embd // m.n_head,
              "hidden_act": "silu", "max_position_embeddings": m.block_size, "rms_norm_eps": RMSNORM_EPS,
              # rope_theta for transformers 4.x, rope_parameters for 5.x
              "rope_theta": m.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base},
              "attention_bias": False, "mlp_bias": False, "attention_dropout": m.weights_dropout,
              "tie_word_embeddings": m.tie_embeddings}
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["norm_f.weight"]}
    for i in range(m.n_layer):
        b, hf = f"blocks.{i}.", f"model.layers.{i}."
        qkv = state[b + "attn.qkv.weight"].chunk(3, dim=0)  # rows: all heads' q, then k, then v
        out |= {f"{hf}{name}.weight": w for name, w in zip(LLAMA_QKV, qkv, strict=True)}
        out |= {f"{hf}{theirs}.weight": state[f"{b}{ours}.weight"] for theirs, ours in LLAMA_BLOCK.items()}
    if not m.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return config, out


def tokenizer_files(tok: Tokenizer, block_size: int) -> dict[str, dict]:
    """tokenizer.json (BPE as Hugging Face ``tokenizers`` runs it) and tokenizer_config.json."""
    from ..tokenizer.bpe import BPETokenizer
    from ..tokenizer.io import to_hf_json
    if not isinstance(tok, BPETokenizer):
        raise TinyLMError(f"the Hugging Face export writes BPE tokenizers; this run's is {tok.describe()}: export "
                          f"the weights alone with --format safetensors, or train with --data.tokenizer bpe")
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT} if tok.eot_token is not None else {}
    return {"tokenizer.json": to_hf_json(tok),
            "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
                                      "clean_up_tokenization_spaces": False, "add_prefix_space": False, **special}}


def _is_hf_export(path: Path) -> bool:
    """Did :func:`export_hf` write this folder (only its files, and a config.json naming tinylm)?"""
    if path.is_symlink() or not path.is_dir():
        return False
    if any(p.name not in FILES for p in path.iterdir()):
        return False
    try:
        return "tinylm" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def export_hf(ckpt_dir: Path, out: Path) -> str:
    """Write ``out`` (a folder) from checkpoint ``ckpt_dir``; returns the architecture written.

    An existing ``out`` is replaced only when empty or an earlier tinylm export.
    """
    from safetensors.torch import save_file
    cfg = checkpoint_config(ckpt_dir)
    m = cfg.model
    name = family(m)
    tok = checkpoint_tokenizer(ckpt_dir)
    docs = tokenizer_files(tok, m.block_size)
    if (out.exists() or out.is_symlink()) and not (out.is_dir() and not any(out.iterdir())) and not _is_hf_export(out):
        raise TinyLMError(f"--out {out} exists and is not a tinylm Hugging Face export, so it is not replaced; "
                          f"choose another --out (a new or empty folder), or move it away")
    config, tensors = (gpt2_files if name == "gpt2" else llama_files)(m, load_part(ckpt_dir, "model"))
    ids = {"bos_token_id": tok.eot_token, "eos_token_id": tok.eot_token}
    docs["config.json"] = {**config, **ids, "dtype": "float32", "torch_dtype": "float32", "use_cache": True,
                           "tinylm": {"version": __version__, "checkpoint": str(ckpt_dir)}}
    docs["generation_config.json"] = ids
    tmp = scratch_sibling(out, "tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for file, doc in docs.items():
            write_text_atomic(tmp / file, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        replace_dir(tmp, out)
    except Exception as e:  # OSError, or safetensors' own error around one (a full disk)
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(e, out) from None
    return ARCHITECTURES[name]
