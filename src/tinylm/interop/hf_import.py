"""Hugging Face GPT-2 folders (or hub names) -> tinylm's model config, weights and tokenizer.

A GPT-2 folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, loaded
with ``weights_only``), and usually GPT-2's ``vocab.json`` + ``merges.txt``. GPT-2 is tinylm's
default architecture with biases: learned positions, LayerNorm (eps 1e-5), tanh-approximated GELU,
a tied head. Its Conv1D layers store weights as (in, out), the transpose of ``nn.Linear``'s.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import torch

from ..config import ModelConfig
from ..errors import TinyLMError
from ..tokenizer import Tokenizer

GPT2_VOCAB = 50257
#: GPT-2 activations that are the tanh approximation tinylm's gelu computes
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
# files a hub download fetches: the config, one weights file, the tokenizer's two files
HUB_FILES = ("config.json", "vocab.json", "merges.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# GPT-2 (HF) -> tinylm parameter names inside block i; True: a Conv1D weight, stored transposed
BLOCK_PARAMS = {"ln_1": ("norm1", False), "attn.c_attn": ("attn.qkv", True), "attn.c_proj": ("attn.proj", True),
                "ln_2": ("norm2", False), "mlp.c_fc": ("mlp.up", True), "mlp.c_proj": ("mlp.down", True)}


class Imported(NamedTuple):
    """A model read from another tool: its architecture, its weights as tinylm names them, its tokenizer."""
    model: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: str  # where it came from, for meta.json and messages


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def import_gpt2(source: str) -> Imported:
    """A local GPT-2 folder, or a hub name such as ``gpt2`` / ``openai-community/gpt2-medium`` -> :class:`Imported`."""
    folder = Path(source)
    if not folder.is_dir():
        folder = download_from_hub(source)
    elif not is_hf_folder(folder):
        raise TinyLMError(f"{folder} is not a Hugging Face model folder (it needs config.json and "
                          f"model.safetensors or pytorch_model.bin)")
    hf = _read_config(folder)
    cfg = gpt2_model_config(hf, folder)
    state = gpt2_state_dict(_read_weights(folder), cfg, folder)
    return Imported(cfg, state, gpt2_tokenizer(folder, cfg.vocab_size), str(source))


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


def _read_config(folder: Path) -> dict:
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyLMError(f"{folder / 'config.json'} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise TinyLMError(f"{folder} holds a {kind!r} model; tinylm imports GPT-2 models (model_type gpt2)")
    return hf


def gpt2_model_config(hf: dict, folder: Path) -> ModelConfig:
    """GPT2Config's fields -> ModelConfig; a setting tinylm cannot compute the same way is refused by name."""
    n_embd = hf.get("n_embd", 768)
    n_inner = hf.get("n_inner") or 4 * n_embd
    refuse = {"activation_function": hf.get("activation_function", "gelu_new") not in TANH_GELU,
              "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5) != 1e-5,
              "scale_attn_weights": not hf.get("scale_attn_weights", True),
              "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
              "add_cross_attention": hf.get("add_cross_attention", False)}
    bad = [k for k, v in refuse.items() if v]
    if bad:
        raise TinyLMError(f"{folder / 'config.json'}: {bad[0]} = {hf.get(bad[0])!r} has no tinylm counterpart "
                          f"(tinylm computes GPT-2 with tanh GELU, LayerNorm eps 1e-5, 1/sqrt(head size) scaling)")
    return ModelConfig(vocab_size=hf.get("vocab_size", GPT2_VOCAB), block_size=hf.get("n_positions", 1024),
                       n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
                       mlp="gelu", mlp_ratio=n_inner / n_embd, norm="layernorm", pos="learned", qk_norm=False,
                       tie_embeddings=hf.get("tie_word_embeddings", True), bias=True, dropout=0.0)


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


def gpt2_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> dict[str, torch.Tensor]:
    """GPT-2's tensor names (with or without the ``transformer.`` prefix) -> tinylm's, in fp32."""
    src = {k.removeprefix("transformer."): v.float() for k, v in hf_state.items()}
    names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
             "ln_f.weight": "norm_f.weight", "ln_f.bias": "norm_f.bias"}
    transposed = set()
    for i in range(cfg.n_layer):
        for hf_name, (ours, conv) in BLOCK_PARAMS.items():
            for p in ("weight", "bias"):
                names[f"h.{i}.{hf_name}.{p}"] = f"blocks.{i}.{ours}.{p}"
                if conv and p == "weight":
                    transposed.add(f"h.{i}.{hf_name}.{p}")
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    missing = [k for k in names if k not in src]
    if missing:
        raise TinyLMError(f"{folder}: the weights lack {missing[0]} ({len(missing)} tensors missing); is this "
                          f"a complete GPT-2 checkpoint?")
    state = {ours: (src[k].t() if k in transposed else src[k]).contiguous() for k, ours in names.items()}
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    return state


def gpt2_tokenizer(folder: Path, vocab_size: int) -> Tokenizer:
    """The folder's ``vocab.json`` + ``merges.txt``; without them GPT-2's own (from tiktoken) when the
    vocabulary is GPT-2's size."""
    from ..tokenizer.bpe import BPETokenizer
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        tok = BPETokenizer.from_files(vocab, merges)
    elif vocab_size == GPT2_VOCAB:
        tok = BPETokenizer.from_tiktoken("gpt2")
    else:
        raise TinyLMError(f"{folder} has no vocab.json + merges.txt, and its vocabulary ({vocab_size} ids) is not "
                          f"GPT-2's ({GPT2_VOCAB}); add the tokenizer files to the folder")
    if tok.vocab_size > vocab_size:
        raise TinyLMError(f"{folder}: the tokenizer has {tok.vocab_size} ids but the model only {vocab_size}")
    return tok

