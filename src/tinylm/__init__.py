"""tinylm: from raw text to a trained small language model and an honest report about it.

The names a library user needs, importable from ``tinylm`` directly. Each is imported on first use
(``from tinylm import train`` loads torch; ``import tinylm.config`` does not), so the command line,
which imports only what each command needs, starts without torch.
"""
from __future__ import annotations

import importlib

from .version import __version__

# public name -> the module defining it
_API = {"load_for_inference": "training.checkpoint", "Config": "config", "build_config": "config",
        "TinyLMError": "errors", "generate": "generation.generate", "generate_text": "generation.generate",
        "GPT": "model.gpt", "BPETokenizer": "tokenizer", "CharTokenizer": "tokenizer", "Tokenizer": "tokenizer",
        "load_tokenizer": "tokenizer", "Trainer": "training.trainer", "train": "training.trainer"}

__all__ = ["GPT", "BPETokenizer", "CharTokenizer", "Config", "TinyLMError", "Tokenizer", "Trainer", "__version__",
           "build_config", "generate", "generate_text", "load_for_inference", "load_tokenizer", "train"]


def __getattr__(name: str) -> object:
    """``tinylm.GPT`` and the other public names: imported from their module on first use."""
    if name not in _API:
        raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

