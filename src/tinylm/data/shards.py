"""The prepared data folder's format: token shard files and ``meta.json`` (write, read, check).

Shard file (``train_000000.bin``): a 64-byte header, then the tokens.

    offset  size  field
    0       8     magic  b"TINYLMTK"
    8       4     format version (uint32, little-endian) = 1
    12      4     bytes per token (uint32): 2 (uint16, vocab <= 65536) or 4 (uint32)
    16      8     token count (uint64)
    24      40    zero padding

``meta.json`` beside the shards names the corpus, tokenizer, split and shard files, and says
(``"format": "tinylm-shards"``) that tinylm made the folder.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import TinyLMError
from ..tokenizer import Tokenizer, load_tokenizer

MAGIC = b"TINYLMTK"
SHARD_VERSION = 1
HEADER_BYTES = 64
TOKENIZER_FILE = "tokenizer.txt"
META_FILE = "meta.json"
META_FORMAT = "tinylm-shards"  # meta.json's "format": how tinylm knows a folder is one it made


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically: header + tokens (uint16 or uint32)."""
    assert tokens.dtype in (np.uint16, np.uint32)
    header = struct.pack("<8sIIQ", MAGIC, SHARD_VERSION, tokens.dtype.itemsize, len(tokens))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(header.ljust(HEADER_BYTES, b"\0"))
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard(path: Path) -> np.memmap:
    """Memory-map a shard's tokens (read-only; nothing is loaded until indexed)."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise TinyLMError(f"{path} is not a tinylm token shard (bad header); re-run `tinylm prepare`")
    _, version, itemsize, count = struct.unpack("<8sIIQ", header[:24])
    if version != SHARD_VERSION:
        raise TinyLMError(f"{path}: shard format version {version} is not supported; re-run `tinylm prepare`")
    if itemsize not in (2, 4):
        raise TinyLMError(f"{path}: corrupt header (token size {itemsize}); re-run `tinylm prepare`")
    expected = HEADER_BYTES + itemsize * count
    if path.stat().st_size != expected:
        raise TinyLMError(f"{path} holds {path.stat().st_size} bytes but its header promises {expected}; "
                          f"the file is truncated or corrupt: re-run `tinylm prepare`")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def check_token_ids(rows: np.ndarray, vocab_size: int, where: str) -> None:
    """Refuse a batch holding a token id the vocabulary lacks (a damaged shard, or one made with another
    tokenizer): the embedding would fail with an index error, on a GPU a device-side assert that kills the
    process. Checked per batch (a max over B x T ids), not over whole shards at start-up."""
    top = int(rows.max(initial=0))
    if top >= vocab_size:
        raise TinyLMError(f"{where} holds token id {top}, beyond the vocabulary's {vocab_size} ids: the shards are "
                          f"damaged or were made with another tokenizer; re-run `tinylm prepare --force` on them")


class UnreadableMeta(TinyLMError):
    """A data folder's meta.json is there but is not JSON (damaged, or edited by hand)."""


def load_meta(data_dir: str | Path) -> dict:
    """A prepared folder's ``meta.json``; missing, unreadable or not tinylm's is an error that says what to do."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise TinyLMError(f"no prepared data in {data_dir} (missing {META_FILE}); "
                          f"run `tinylm prepare --config <preset>` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UnreadableMeta(f"{path} is corrupt ({e}); re-run `tinylm prepare --force` with the same "
                              f"--data.dir to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TinyLMError(f"{path} was not written by `tinylm prepare` (no \"format\": \"{META_FORMAT}\"); "
                          f"point --data.dir at a folder tinylm prepared, or at a new one")
    return meta


def load_data_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The tokenizer a prepared data folder was made with."""
    return load_tokenizer(Path(data_dir) / load_meta(data_dir)["tokenizer_file"])
