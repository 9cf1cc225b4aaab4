"""Token data: a corpus prepared into token shards (``prepare``, ``shards``) and read as batches (``loader``).

``prepare`` replaces only a data folder tinylm made; ``loader`` reads it as a resumable, seeded,
DDP-aware stream of (x, y) windows.
"""
from .loader import BatchLoader, PrefetchLoader, TokenWindows, with_prefetch
from .prepare import build_tokenizer, ensure_prepared, prepare
from .shards import load_data_tokenizer, load_meta, read_shard, write_shard

__all__ = ["BatchLoader", "PrefetchLoader", "TokenWindows", "build_tokenizer", "ensure_prepared", "load_data_tokenizer",
           "load_meta", "prepare", "read_shard", "with_prefetch", "write_shard"]
