"""Token data: a corpus prepared into token shards (``prepare``, ``shards``) and read as batches (``loader``).

``prepare`` replaces only a data folder tinylm made; ``loader`` reads it as a resumable, seeded,
DDP-aware stream of (x, y) windows.
"""
from .loader import BatchLoader, TokenWindows
from .prepare import build_tokenizer, ensure_prepared, prepare
from .shards import load_data_tokenizer, load_meta, read_shard, write_shard

__all__ = ["BatchLoader", "TokenWindows", "build_tokenizer", "ensure_prepared", "load_data_tokenizer", "load_meta",
           "prepare", "read_shard", "write_shard"]
