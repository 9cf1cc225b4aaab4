"""A tinylm checkpoint -> a Hugging Face folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load.

Six transformers families have the same computation as tinylm configurations (transformers' own
source read for each; the tests compare logits and greedy tokens):

* ``GPT2LMHeadModel``: learned positions, LayerNorm, one activation (GELU tanh: GPT-2's ``gelu_new``;
  exact GELU: ``gelu``; ReLU²: ``relu2``). tinylm without biases is GPT-2 with zero biases (LayerNorm's
  included); GPT-2's Conv1D stores weights as (in, out).
* ``GPTNeoXForCausalLM`` without its parallel residual: rotary positions, LayerNorm, one activation, (zero)
  biases; its fused query_key_value holds each head's q, k and v together (``hf_names.neox_qkv``).
* rotary positions + RMSNorm (eps 1e-6) without biases, Llama's layout (:data:`hf_names.ROTARY`): tinylm's
  fused qkv matrix is split into q_proj, k_proj and v_proj, its rotation pairs (i, i + hs/2) are Llama's.
  SwiGLU is ``LlamaForCausalLM``, with QK-norm ``Qwen3ForCausalLM``; one activation (ReLU², GELU) is
  ``ArceeForCausalLM`` (Llama with Nemotron's up/down MLP), with QK-norm ``ApertusForCausalLM``.

No family computes the rest (learned positions with RMSNorm, SwiGLU or QK-norm; rotary positions with
LayerNorm and SwiGLU or QK-norm; rotary positions, RMSNorm and biases): the refusal names the nearest
settings that export, and ``--format hf-code``, which writes any model as ``TinyLMForCausalLM`` with its own
modeling code beside it (``hf_modeling_tinylm.py`` as ``modeling_tinylm.py``, for
``trust_remote_code=True``). A BPE tokenizer goes out as ``tokenizer.json`` as ``tokenizers`` runs it, a
character vocabulary as a ``WordLevel`` model over single characters; ``<|endoftext|>`` is BOS and EOS.
The folder is built beside ``--out`` and swapped in whole.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import TinyLMError
from ..fileio import (
    check_replaceable_folder,
    replace_dir,
    scratch_sibling,
    write_bytes_atomic,
    write_failure,
    write_text_atomic,
)
from ..tokenizer import ENDOFTEXT, Tokenizer
from ..training.checkpoint import checkpoint_config, checkpoint_tokenizer, load_part
from ..version import __version__
from .hf_names import (
    ARCHITECTURES,
    GPT2_BLOCK,
    HF_ACT,
    LAYERNORM_EPS,
    LLAMA_QKV,
    NEOX_BLOCK,
    RMSNORM_EPS,
    ROTARY,
    TINYLM_FIELDS,
    UNGATED,
    mlp_hidden,
    neox_qkv,
    rotary_block,
)

REMOTE_CODE = "modeling_tinylm.py"  # --format hf-code: hf_modeling_tinylm.py, copied under this name
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         REMOTE_CODE)
# model_type -> the settings its computation requires: each key's allowed values
FAMILIES = {
    "gpt2": {"pos": ("learned",), "norm": ("layernorm",), "mlp": UNGATED, "qk_norm": (False,)},
    "gpt_neox": {"pos": ("rope",), "norm": ("layernorm",), "mlp": UNGATED, "qk_norm": (False,)},
    **{kind: {"pos": ("rope",), "norm": ("rmsnorm",), "mlp": ("swiglu",) if r.gated else UNGATED,
              "qk_norm": (r.qk_norm,), "bias": (False,)} for kind, r in ROTARY.items()},
}
SETTINGS = tuple(dict.fromkeys(k for need in FAMILIES.values() for k in need))  # pos, norm, mlp, qk_norm, bias


def family(m: ModelConfig) -> str:
    """The model_type whose computation ``m`` is; otherwise an error naming the nearest settings that export
    (those of the families that need the fewest changes)."""
    wrong = {kind: [k for k, ok in need.items() if getattr(m, k) not in ok] for kind, need in FAMILIES.items()}
    fewest = min(len(w) for w in wrong.values())
    if fewest == 0:
        return next(kind for kind, w in wrong.items() if not w)
    nearest = " or ".join(f"{ARCHITECTURES[kind]}'s ("
                          + " ".join(f"--model.{k} {'|'.join(map(_flag, FAMILIES[kind][k]))}" for k in w) + ")"
                          for kind, w in wrong.items() if len(w) == fewest)
    settings = " ".join(f"--model.{k} {_flag(getattr(m, k))}" for k in SETTINGS)
    raise TinyLMError(f"no Hugging Face architecture computes this model ({settings}); the nearest settings that "
                      f"export are {nearest}: train with those, or write tinylm's own modeling code beside the "
                      f"weights with --format hf-code (transformers loads it with trust_remote_code=True)")


def _flag(value: object) -> str:
    """A setting as the command line spells it: ``rope``, ``true``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bias(state: dict[str, torch.Tensor], name: str, size: int) -> torch.Tensor:
    """The bias ``name``, or zeros: a model without biases is GPT-2's or GPT-NeoX's with zero biases."""
    return state.get(name, torch.zeros(size))


def gpt2_files(m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """GPT2Config's fields and GPT2LMHeadModel's tensors for a GPT-2-family tinylm model."""
    config = {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", "vocab_size": m.vocab_size,
              "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
              "n_inner": mlp_hidden(m), "activation_function": HF_ACT[m.mlp], "layer_norm_epsilon": LAYERNORM_EPS,
              "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.weights_dropout,
              "scale_attn_weights": True, "tie_word_embeddings": m.tie_embeddings}

    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["norm_f.weight"],
           "transformer.ln_f.bias": _bias(state, "norm_f.bias", m.n_embd)}
    for i in range(m.n_layer):
        for hf, (ours, conv) in GPT2_BLOCK.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{hf}.weight"] = w.t() if conv else w
            out[f"transformer.h.{i}.{hf}.bias"] = _bias(state, f"blocks.{i}.{ours}.bias", w.size(0))
    if not m.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return config, out


def neox_files(m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """GPTNeoXConfig's fields and GPTNeoXForCausalLM's tensors: sequential residual, every rotary dimension."""
    config = {"architectures": [ARCHITECTURES["gpt_neox"]], "model_type": "gpt_neox", "vocab_size": m.vocab_size,
              "hidden_size": m.n_embd, "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head,
              "intermediate_size": mlp_hidden(m), "hidden_act": HF_ACT[m.mlp], "max_position_embeddings": m.block_size,
              "layer_norm_eps": LAYERNORM_EPS, "use_parallel_residual": False, "attention_bias": True,
              # rotary_pct and rotary_emb_base for transformers 4.x, rope_parameters for 5.x
              "rotary_pct": 1.0, "rotary_emb_base": m.rope_base,
              "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base, "partial_rotary_factor": 1.0},
              "hidden_dropout": m.dropout, "attention_dropout": m.weights_dropout,
              "tie_word_embeddings": m.tie_embeddings}

    out = {"gpt_neox.embed_in.weight": state["wte.weight"], "gpt_neox.final_layer_norm.weight": state["norm_f.weight"],
           "gpt_neox.final_layer_norm.bias": _bias(state, "norm_f.bias", m.n_embd)}
    for i in range(m.n_layer):
        for hf, ours in NEOX_BLOCK.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            b = _bias(state, f"blocks.{i}.{ours}.bias", w.size(0))
            if ours == "attn.qkv":
                w, b = neox_qkv(w, m.n_head, to_neox=True), neox_qkv(b, m.n_head, to_neox=True)
            out[f"gpt_neox.layers.{i}.{hf}.weight"], out[f"gpt_neox.layers.{i}.{hf}.bias"] = w, b
    if not m.tie_embeddings:
        out["embed_out.weight"] = state["lm_head.weight"]  # transformers 5 reads it as lm_head
    return config, out


def rotary_files(kind: str, m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config fields and tensors of the rotary family ``kind`` (llama, qwen3, arcee, apertus)."""
    r = ROTARY[kind]
    config = {"architectures": [r.architecture], "model_type": kind, "vocab_size": m.vocab_size,
              "hidden_size": m.n_embd, "intermediate_size": mlp_hidden(m), "num_hidden_layers": m.n_layer,
              "num_attention_heads": m.n_head, "num_key_value_heads": m.n_head, "head_dim": m.n_embd // m.n_head,
              "hidden_act": "silu" if r.gated else HF_ACT[m.mlp], "max_position_embeddings": m.block_size,
              "rms_norm_eps": RMSNORM_EPS,
              # rope_theta for transformers 4.x, rope_parameters for 5.x
              "rope_theta": m.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base},
              "attention_bias": False, "mlp_bias": False, "use_sliding_window": False,
              "attention_dropout": m.weights_dropout, "tie_word_embeddings": m.tie_embeddings}
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["norm_f.weight"]}
    names = rotary_block(r)
    for i in range(m.n_layer):
        b, hf = f"blocks.{i}.", f"model.layers.{i}."
        qkv = state[b + "attn.qkv.weight"].chunk(3, dim=0)  # rows: all heads' q, then k, then v
        out |= {f"{hf}{name}.weight": w for name, w in zip(LLAMA_QKV, qkv, strict=True)}
        out |= {f"{hf}{theirs}.weight": state[f"{b}{ours}.weight"] for theirs, ours in names.items()}
    if not m.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return config, out


def tinylm_files(m: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """TinyLMConfig's fields and TinyLMForCausalLM's tensors (tinylm's own names; a tied head is not stored)."""
    config = {"architectures": [ARCHITECTURES["tinylm"]], "model_type": "tinylm",
              "auto_map": {"AutoConfig": "modeling_tinylm.TinyLMConfig",
                           "AutoModelForCausalLM": "modeling_tinylm.TinyLMForCausalLM"},
              **{k: getattr(m, k) for k in TINYLM_FIELDS}, "mlp_hidden": mlp_hidden(m),
              "tie_word_embeddings": m.tie_embeddings}
    return config, {k: v for k, v in state.items() if not (m.tie_embeddings and k == "lm_head.weight")}


def tokenizer_files(tok: Tokenizer, block_size: int) -> dict[str, dict]:
    """tokenizer.json (as Hugging Face ``tokenizers`` runs it) and tokenizer_config.json."""
    from ..tokenizer.io import to_hf_json
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


def export_hf(ckpt_dir: Path, out: Path, code: bool = False) -> str:
    """Write ``out`` (a folder) from checkpoint ``ckpt_dir``; returns the architecture written: the transformers
    family that computes the model, or with ``code`` TinyLMForCausalLM and its modeling code.

    An existing ``out`` is replaced only when empty or an earlier tinylm export.
    """
    from safetensors.torch import save
    cfg = checkpoint_config(ckpt_dir)
    m = cfg.model
    name = "tinylm" if code else family(m)
    tok = checkpoint_tokenizer(ckpt_dir)
    docs = tokenizer_files(tok, m.block_size)
    check_replaceable_folder(out, _is_hf_export)
    state = load_part(ckpt_dir, "model")
    config, tensors = (tinylm_files(m, state) if code else gpt2_files(m, state) if name == "gpt2"
                       else neox_files(m, state) if name == "gpt_neox" else rotary_files(name, m, state))
    ids = {"bos_token_id": tok.eot_token, "eos_token_id": tok.eot_token}
    docs["config.json"] = {**config, **ids, "dtype": "float32", "torch_dtype": "float32", "use_cache": True,
                           "tinylm": {"version": __version__, "checkpoint": str(ckpt_dir)}}
    docs["generation_config.json"] = ids
    tmp = scratch_sibling(out, "tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = save({k: v.float().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
        write_bytes_atomic(tmp / "model.safetensors", weights)  # the usual permissions (safetensors' writer: 0600)
        for file, doc in docs.items():
            write_text_atomic(tmp / file, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        if code:
            write_text_atomic(tmp / REMOTE_CODE, Path(__file__).with_name("hf_modeling_tinylm.py").read_text("utf-8"))
        replace_dir(tmp, out)
    except Exception as e:  # OSError, or safetensors' own error around one (a full disk)
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(e, out) from None
    return config["architectures"][0]
