"""Hugging Face GPT-2 and Llama-family folders (or hub names) -> tinylm's model config, weights and tokenizer.

A folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, loaded with
``weights_only``), and its tokenizer as ``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``.
GPT-2 is tinylm's default architecture with biases: learned positions, LayerNorm (eps 1e-5),
tanh-approximated GELU, a tied head. GPT-NeoX (sequential residual) is rotary positions with LayerNorm and
one activation. Llama (and Qwen3, Arcee, Apertus: ``hf_names.ROTARY``) is rotary
positions, RMSNorm (eps 1e-6) and no biases: what ``tinylm export --format hf`` writes, read back. A
setting tinylm does not compute the same way (grouped key/value heads, another eps, rope scaling, ...)
is refused by name.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import torch

from ..config import Config, ModelConfig
from ..errors import TinyLMError
from ..tokenizer import Tokenizer
from .hf_names import (
    ACT_FROM_HF,
    ARCHITECTURES,
    GPT2_BLOCK,
    LAYERNORM_EPS,
    LLAMA_QKV,
    NEOX_BLOCK,
    RMSNORM_EPS,
    ROTARY,
    TINYLM_FIELDS,
    mlp_ratio_for,
    neox_qkv,
    rotary_block,
)

GPT2_VOCAB = 50257
# files a hub download fetches: the config, one weights file, the tokenizer's two files
HUB_FILES = ("config.json", "vocab.json", "merges.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# config.json's dtype -> the precision tinylm evaluates it in
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class Imported(NamedTuple):
    """A model read from another tool: its architecture, its weights as tinylm names them, its tokenizer."""
    model: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: str  # where it came from, for meta.json and messages
    architecture: str = "tinylm"  # what the source was: GPT2LMHeadModel, ArceeForCausalLM, ... (hf_names.ARCHITECTURES)


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def import_hf(source: str) -> Imported:
    """A local GPT-2 or Llama-family folder, or a hub name such as ``gpt2`` / ``openai-community/gpt2-medium``
    -> :class:`Imported`."""
    folder = Path(source)
    if not folder.is_dir():
        folder = download_from_hub(source)
    elif not is_hf_folder(folder):
        raise TinyLMError(f"{folder} is not a Hugging Face model folder (it needs config.json and "
                          f"model.safetensors or pytorch_model.bin)")
    hf = read_config(folder)
    if hf["model_type"] == "gpt2":
        cfg = gpt2_model_config(hf, folder)
        state = gpt2_state_dict(_read_weights(folder), cfg, folder)
    elif hf["model_type"] == "gpt_neox":
        cfg = neox_model_config(hf, folder)
        state = neox_state_dict(_read_weights(folder), cfg, folder)
    elif hf["model_type"] == "tinylm":  # --format hf-code: tinylm's own names
        cfg = tinylm_model_config(hf, folder)
        weights = {k: v.float() for k, v in _read_weights(folder).items()}
        state = _renamed(weights, {k: k for k in weights}, cfg, folder, ARCHITECTURES["tinylm"])
    else:
        cfg = rotary_model_config(hf, folder)
        state = rotary_state_dict(hf["model_type"], _read_weights(folder), cfg, folder)
    return Imported(cfg, state, folder_tokenizer(folder, cfg.vocab_size), str(source), ARCHITECTURES[hf["model_type"]])


def config_for_eval(folder: Path, imported: Imported) -> Config:
    """A run config for scoring an imported folder: its architecture, default data settings (documents
    end at ``<|endoftext|>``), and the precision of its config.json's dtype (fp32 when it names none)."""
    hf = read_config(folder)
    cfg = Config()
    cfg.model = imported.model
    cfg.train.precision = PRECISIONS.get(hf.get("dtype") or hf.get("torch_dtype") or "float32", "fp32")
    return cfg


def imported_model(imported: Imported, folder: Path, device: torch.device | str) -> torch.nn.Module:
    """The GPT holding an imported folder's weights, in eval mode on ``device``."""
    from ..model.gpt import GPT
    model = GPT(imported.model)
    try:
        model.load_state_dict(imported.state)
    except (RuntimeError, ValueError) as e:  # a tensor of another shape than config.json says
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise TinyLMError(f"{folder}: the weights do not fit its config.json ({first[:200]}); the files come "
                          f"from different models") from None
    return model.eval().to(device)


def download_from_hub(name: str) -> Path:
    """The hub model ``name`` in huggingface_hub's cache (downloaded once, checked against the hub's sha256)."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise TinyLMError(f"{name} is neither a folder nor a Hugging Face hub name (like gpt2 or "
                          f"openai-community/gpt2-medium)")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise TinyLMError(f"{name} is not a folder; to download it from the Hugging Face hub install the "
                          f"hf extra: pip install 'tinylm[hf]'") from None
    try:
        paths = [Path(hf_hub_download(name, f)) for f in HUB_FILES]
        try:
            hf_hub_download(name, WEIGHT_FILES[0])
        except EntryNotFoundError:  # older repositories have only the pickle
            hf_hub_download(name, WEIGHT_FILES[1])
    except Exception as e:  # network, authentication and missing-repository errors differ by version
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TinyLMError(f"cannot download {name} from the Hugging Face hub ({first[:200]}); check the name "
                          f"and the network, or pass a local folder") from None
    return paths[0].parent


def read_config(folder: Path) -> dict:
    """The folder's config.json, whose ``model_type`` is one tinylm reads."""
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyLMError(f"{folder / 'config.json'} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") not in ARCHITECTURES:
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise TinyLMError(f"{folder} holds a {kind!r} model; tinylm reads GPT-2, GPT-NeoX and Llama-family models "
                          f"and its own hf-code exports (model_type {', '.join(ARCHITECTURES)})")
    return hf


def _refuse(folder: Path, hf: dict, unlike: dict[str, bool], computes: str) -> None:
    """Name the first config.json setting in ``unlike`` that is true: tinylm would compute something else."""
    bad = next((k for k, v in unlike.items() if v), None)
    if bad:
        raise TinyLMError(f"{folder / 'config.json'}: {bad} = {hf.get(bad)!r} has no tinylm counterpart "
                          f"(tinylm computes {computes})")


def gpt2_model_config(hf: dict, folder: Path) -> ModelConfig:
    """GPT2Config's fields -> ModelConfig; a setting tinylm cannot compute the same way is refused by name."""
    n_embd = hf.get("n_embd", 768)
    act = hf.get("activation_function", "gelu_new")
    _refuse(folder, hf, {"activation_function": act not in ACT_FROM_HF,
                         "layer_norm_epsilon": hf.get("layer_norm_epsilon", LAYERNORM_EPS) != LAYERNORM_EPS,
                         "scale_attn_weights": not hf.get("scale_attn_weights", True),
                         "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
                         "add_cross_attention": hf.get("add_cross_attention", False)},
            f"GPT-2 with activation_function {' | '.join(ACT_FROM_HF)}, LayerNorm eps {LAYERNORM_EPS}, "
            f"1/sqrt(head size) scaling")
    return ModelConfig(vocab_size=hf.get("vocab_size", GPT2_VOCAB), block_size=hf.get("n_positions", 1024),
                       n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
                       mlp=ACT_FROM_HF[act], mlp_ratio=mlp_ratio_for(hf.get("n_inner") or 4 * n_embd, n_embd, "gelu"),
                       norm="layernorm", pos="learned", qk_norm=False,
                       tie_embeddings=hf.get("tie_word_embeddings", True), bias=True, dropout=0.0)


def rotary_model_config(hf: dict, folder: Path) -> ModelConfig:
    """A Llama-family config's fields (transformers' Llama defaults where absent) -> ModelConfig, refusing what
    tinylm lacks."""
    r = ROTARY[hf["model_type"]]
    n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    act = hf.get("hidden_act", "silu")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    _refuse(folder, hf, {"hidden_act": act != "silu" if r.gated else act not in ACT_FROM_HF,
                         "rms_norm_eps": hf.get("rms_norm_eps", RMSNORM_EPS) != RMSNORM_EPS,
                         "num_key_value_heads": hf.get("num_key_value_heads") not in (None, n_head),
                         "head_dim": hf.get("head_dim") not in (None, n_embd // n_head),
                         "attention_bias": hf.get("attention_bias", False), "mlp_bias": hf.get("mlp_bias", False),
                         "use_sliding_window": hf.get("use_sliding_window", False),
                         "rope_scaling": scaling.get("rope_type", scaling.get("type", "default")) != "default",
                         "rope_parameters": rope.get("rope_type", "default") != "default"},
            f"{r.architecture} with hidden_act {'silu' if r.gated else ' | '.join(ACT_FROM_HF)}, RMSNorm eps "
            f"{RMSNORM_EPS}, a key/value head per query head, no biases, plain rotary positions")
    mlp = "swiglu" if r.gated else ACT_FROM_HF[act]
    return ModelConfig(vocab_size=hf.get("vocab_size", 32000), block_size=hf.get("max_position_embeddings", 2048),
                       n_layer=hf.get("num_hidden_layers", 32), n_head=n_head, n_embd=n_embd, mlp=mlp,
                       mlp_ratio=mlp_ratio_for(hf.get("intermediate_size", 11008), n_embd, mlp),
                       norm="rmsnorm", pos="rope", rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 1e4))),
                       qk_norm=r.qk_norm, tie_embeddings=hf.get("tie_word_embeddings", False), bias=False,
                       dropout=0.0)


def neox_model_config(hf: dict, folder: Path) -> ModelConfig:
    """GPTNeoXConfig's fields -> ModelConfig; a setting tinylm cannot compute the same way is refused by name."""
    n_embd, n_head = hf.get("hidden_size", 6144), hf.get("num_attention_heads", 64)
    act = hf.get("hidden_act", "gelu")
    rope = hf.get("rope_parameters") or {}
    _refuse(folder, hf, {"hidden_act": act not in ACT_FROM_HF,
                         "use_parallel_residual": hf.get("use_parallel_residual", True),
                         "layer_norm_eps": hf.get("layer_norm_eps", LAYERNORM_EPS) != LAYERNORM_EPS,
                         "rotary_pct": rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)) != 1.0,
                         "attention_bias": not hf.get("attention_bias", True),
                         "rope_parameters": rope.get("rope_type", "default") != "default"},
            f"GPT-NeoX with hidden_act {' | '.join(ACT_FROM_HF)}, a sequential residual, LayerNorm eps "
            f"{LAYERNORM_EPS}, every head dimension rotated, biases")
    mlp = ACT_FROM_HF[act]
    return ModelConfig(vocab_size=hf.get("vocab_size", 50432), block_size=hf.get("max_position_embeddings", 2048),
                       n_layer=hf.get("num_hidden_layers", 44), n_head=n_head, n_embd=n_embd, mlp=mlp,
                       mlp_ratio=mlp_ratio_for(hf.get("intermediate_size", 24576), n_embd, mlp), norm="layernorm",
                       pos="rope", rope_base=float(rope.get("rope_theta", hf.get("rotary_emb_base", 1e4))),
                       qk_norm=False, tie_embeddings=hf.get("tie_word_embeddings", False), bias=True, dropout=0.0)


def tinylm_model_config(hf: dict, folder: Path) -> ModelConfig:
    """TinyLMConfig's fields (what ``tinylm export --format hf-code`` writes) -> ModelConfig."""
    missing = [k for k in (*TINYLM_FIELDS, "mlp_hidden", "tie_word_embeddings") if k not in hf]
    if missing:
        raise TinyLMError(f"{folder / 'config.json'} lacks {', '.join(missing)}; export the folder again with "
                          f"tinylm export --format hf-code")
    return ModelConfig(**{k: hf[k] for k in TINYLM_FIELDS}, tie_embeddings=hf["tie_word_embeddings"], dropout=0.0,
                       mlp_ratio=mlp_ratio_for(hf["mlp_hidden"], hf["n_embd"], hf["mlp"]))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors: model.safetensors, else pytorch_model.bin read with ``weights_only``."""
    path = folder / WEIGHT_FILES[0]
    try:
        if path.is_file():
            from safetensors.torch import load_file
            return load_file(str(path))
        path = folder / WEIGHT_FILES[1]
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses code objects and unknown classes
        raise TinyLMError(f"{path} holds more than tensors ({e.__class__.__name__}); tinylm loads only plain "
                          f"weights: use a model.safetensors file") from None
    except Exception as e:  # a truncated or corrupt file
        raise TinyLMError(f"cannot read {path} ({type(e).__name__}: {str(e)[:200]}); download it again") from None


def _renamed(src: dict[str, torch.Tensor], names: dict[str, str], cfg: ModelConfig, folder: Path,
             kind: str) -> dict[str, torch.Tensor]:
    """``src`` under tinylm's names (``names``: theirs -> ours), every one present; the tied head added."""
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    missing = [k for k in names if k not in src]
    if missing:
        raise TinyLMError(f"{folder}: the weights lack {missing[0]} ({len(missing)} tensors missing); is this "
                          f"a complete {kind} checkpoint?")
    state = {ours: src[k].contiguous() for k, ours in names.items()}
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    return state


def gpt2_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> dict[str, torch.Tensor]:
    """GPT-2's tensor names (with or without the ``transformer.`` prefix) -> tinylm's, in fp32."""
    src = {k.removeprefix("transformer."): v.float() for k, v in hf_state.items()}
    names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
             "ln_f.weight": "norm_f.weight", "ln_f.bias": "norm_f.bias"}
    for i in range(cfg.n_layer):
        for hf_name, (ours, conv) in GPT2_BLOCK.items():
            for p in ("weight", "bias"):
                names[f"h.{i}.{hf_name}.{p}"] = f"blocks.{i}.{ours}.{p}"
                if conv and p == "weight" and f"h.{i}.{hf_name}.{p}" in src:
                    src[f"h.{i}.{hf_name}.{p}"] = src[f"h.{i}.{hf_name}.{p}"].t()  # Conv1D: (in, out)
    return _renamed(src, names, cfg, folder, "GPT-2")


def neox_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> dict[str, torch.Tensor]:
    """GPT-NeoX's tensor names -> tinylm's, in fp32; each head's q, k, v regrouped into tinylm's qkv order."""
    src = {k.replace("embed_out.", "lm_head."): v.float() for k, v in hf_state.items()}  # 4.x's head name
    names = {"gpt_neox.embed_in.weight": "wte.weight", "gpt_neox.final_layer_norm.weight": "norm_f.weight",
             "gpt_neox.final_layer_norm.bias": "norm_f.bias"}
    for i in range(cfg.n_layer):
        for hf_name, ours in NEOX_BLOCK.items():
            for p in ("weight", "bias"):
                theirs = f"gpt_neox.layers.{i}.{hf_name}.{p}"
                names[theirs] = f"blocks.{i}.{ours}.{p}"
                if ours == "attn.qkv" and theirs in src:
                    src[theirs] = neox_qkv(src[theirs], cfg.n_head, to_neox=False)
    return _renamed(src, names, cfg, folder, ARCHITECTURES["gpt_neox"])


def rotary_state_dict(kind: str, hf_state: dict[str, torch.Tensor], cfg: ModelConfig,
                      folder: Path) -> dict[str, torch.Tensor]:
    """A Llama-family model's tensor names -> tinylm's, in fp32; q, k and v stacked into the fused qkv weight."""
    src = {k: v.float() for k, v in hf_state.items()}
    names = {"model.embed_tokens.weight": "wte.weight", "model.norm.weight": "norm_f.weight"}
    block = rotary_block(ROTARY[kind])
    for i in range(cfg.n_layer):
        theirs = f"model.layers.{i}."
        names |= {f"{theirs}{t}.weight": f"blocks.{i}.{ours}.weight" for t, ours in block.items()}
        qkv = [src.get(f"{theirs}{t}.weight") for t in LLAMA_QKV]
        if all(w is not None for w in qkv):
            src[f"{theirs}qkv"] = torch.cat(qkv)  # (3 C, C): q's rows, then k's, then v's
        names[f"{theirs}qkv"] = f"blocks.{i}.attn.qkv.weight"
    return _renamed(src, names, cfg, folder, ARCHITECTURES[kind])


def folder_tokenizer(folder: Path, vocab_size: int) -> Tokenizer:
    """The folder's ``tokenizer.json``, else its ``vocab.json`` + ``merges.txt``; without either GPT-2's own
    (from tiktoken) when the vocabulary is GPT-2's size."""
    from ..tokenizer.bpe import BPETokenizer
    from ..tokenizer.io import load_hf
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if (folder / "tokenizer.json").is_file():
        tok = load_hf(folder / "tokenizer.json")
    elif vocab.is_file() and merges.is_file():
        tok = BPETokenizer.from_files(vocab, merges)
    elif vocab_size == GPT2_VOCAB:
        tok = BPETokenizer.from_tiktoken("gpt2")
    else:
        raise TinyLMError(f"{folder} has no tokenizer.json or vocab.json + merges.txt, and its vocabulary "
                          f"({vocab_size} ids) is not GPT-2's ({GPT2_VOCAB}); add the tokenizer files to the folder")
    if tok.vocab_size > vocab_size:
        raise TinyLMError(f"{folder}: the tokenizer has {tok.vocab_size} ids but the model only {vocab_size}")
    return tok

