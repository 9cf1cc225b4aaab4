"""``--train.init_from``: where a fine-tuning run's architecture and first weights come from.

A source is a tinylm run or checkpoint folder (an imported one included), a local Hugging Face GPT-2
or Llama folder, or a hub name (``gpt2``, ``gpt2-medium``, ...). The new run takes the source's architecture
(``--model.*`` keys, except ``block_size``, which may shrink, and ``dropout``, a training setting),
its weights, and a fresh optimizer; its data folder must use the source's tokenizer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, ModelConfig, arch_keys
from ..errors import TinyLMError
from ..tokenizer import Tokenizer
from ..training.checkpoint import (
    TOKENIZER,
    checkpoint_config,
    checkpoint_tokenizer,
    load_part,
    resolve_checkpoint,
)
from .hf_import import Imported, import_hf, is_hf_folder


def load_pretrained(spec: str) -> Imported:
    """A run or checkpoint folder, a Hugging Face GPT-2 or Llama folder, or a hub name -> its model, weights and
    tokenizer."""
    path = Path(spec)
    if (path.exists() or path.is_symlink()) and not is_hf_folder(path):
        step_dir = resolve_checkpoint(path)
        return Imported(checkpoint_config(step_dir).model, load_part(step_dir, "model"),
                        checkpoint_tokenizer(step_dir), str(step_dir))
    return import_hf(spec)


def adopt_architecture(model: ModelConfig, source: ModelConfig) -> None:
    """Copy the source's architecture into ``model``, keeping ``model.block_size`` (checked by :func:`start_from`)."""
    for key in arch_keys():
        if key != "block_size":
            setattr(model, key, getattr(source, key))


def start_from(cfg: Config, source: Imported, data_tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Make ``cfg.model`` the source's architecture and return the weights to start from.

    Refuses a data folder prepared with another tokenizer (naming both) and a context longer than
    the source's learned position table. A shorter context keeps the first positions' embeddings.
    """
    spec = cfg.train.init_from
    if not source.tokenizer.same_ids(data_tokenizer):
        file = Path(source.source) / TOKENIZER  # a tinylm checkpoint's own copy
        fix = ("prepare the data with --data.tokenizer gpt2" if getattr(source.tokenizer, "name", "") == "gpt2"
               else f"prepare the data with --data.tokenizer {file}" if file.is_file()
               else "prepare the new data with that tokenizer")
        ours, theirs = source.tokenizer.describe(), data_tokenizer.describe()
        raise TinyLMError(f"--train.init_from {spec} uses the tokenizer {ours}, but --data.dir {cfg.data.dir} was "
                          f"prepared with {'another ' if theirs == ours else ''}{theirs}; {fix} (and a --data.dir "
                          f"of its own)")
    block = cfg.model.block_size
    if source.model.pos == "learned" and block > source.model.block_size:
        raise TinyLMError(f"--model.block_size {block} is longer than the {source.model.block_size} positions "
                          f"--train.init_from {spec} learned; use --model.block_size {source.model.block_size} "
                          f"or less")
    adopt_architecture(cfg.model, source.model)
    state = dict(source.state)
    if source.model.pos == "learned":
        state["wpe.weight"] = state["wpe.weight"][:block].clone()
    return state
