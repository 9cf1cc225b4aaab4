"""tinylm: from raw text to a trained small language model and an honest report about it.

The names a library user needs, importable from ``tinylm`` directly. They load on first use, so
``import tinylm`` (and the CLI's start) does not pay for importing torch until something needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Config": "config", "build_config": "config", "TinyLMError": "errors",
    "GPT": "model", "Trainer": "train", "train": "train",
    "generate": "generate", "generate_text": "generate",
    "Tokenizer": "tokenizer", "CharTokenizer": "tokenizer", "BPETokenizer": "tokenizer",
    "load_tokenizer": "tokenizer", "load_for_inference": "checkpoint",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
