"""The quantized artifact (``tinylm export --quantize int6 --out model.tlm``): a whole model in one small file.

Matrices (every 2-D weight: embeddings, attention, MLP, an untied head) are quantized per row or per group
(:mod:`tinylm.interop.quantize`), vectors (norms, biases) kept in fp16, the tokenizer file inside, and
each part compressed with the standard library's zlib or lzma, whichever is smaller (measured on the
model at hand, as is the layout of the integers). ``tinylm eval``, ``sample`` and ``info`` read it,
dequantized to fp32 on load. Layout (little-endian)::

    0   magic         8 bytes  b"\\x89tinylm\\n"  (0x89 and \\n: a file mangled by a text-mode copy shows it)
    8   version       u16      FORMAT_VERSION
    10  codec         u8       0 zlib, 1 lzma (raw LZMA2)
    11  reserved      u8       0
    12  lengths       4 x u64  the compressed sections below: header, weights, scales, tokenizer
    44  sha256        32 bytes of bytes 0..44 and of every byte after 76
    76  sections      header (JSON: config, bits, group, layout, tensor table, source), weights (each
                      tensor in table order: quantized integers, or fp16 vectors), scales (fp16, one per
                      group of each quantized tensor, table order), tokenizer (its file's text)

No pickle: the reader parses JSON and raw arrays only. A foreign, truncated, damaged (checksum) or
newer file is refused in one line. :func:`estimate` gives a model's size before it is trained (the
budget check of ``train.artifact_bytes`` and ``tinylm plan --bytes``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..config import ARTIFACT_BITS, Config, ModelConfig, from_dict
from ..config_check import parse_bytes
from ..errors import TinyLMError
from ..fileio import check_replaceable, write_bytes_atomic, write_failure
from ..tokenizer import Tokenizer
from ..tokenizer.base import parse_tokenizer
from .quantize import (
    LAYOUTS,
    SCALE_BYTES,
    Quantized,
    default_group,
    dequantize,
    from_bytes,
    group_count,
    quantize,
    to_bytes,
    value_bytes,
)

MAGIC = b"\x89tinylm\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sHBB4Q32s")  # magic, version, codec, reserved, section lengths, sha256
DIGEST_AT = PREFIX.size - 32  # the checksum's offset: it covers the bytes before it and every byte after the prefix
SECTIONS = ("header", "weights", "scales", "tokenizer")
CODECS = ("zlib", "lzma")
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9}]  # raw LZMA2: no container bytes
VECTOR_BYTES = 2  # vectors (norms, biases) are stored in fp16


def parse_quantize(text: str) -> int:
    """``--quantize int6`` -> 6."""
    names = {f"int{b}": b for b in ARTIFACT_BITS}
    if text not in names:
        raise TinyLMError(f"--quantize {text!r} is not one of {', '.join(names)}")
    return names[text]


def describe(bits: int, group: int, layout: str, codec: str) -> str:
    """``describe(6, 0, "bytes", "lzma") -> "int6 (one scale per row, bytes layout, lzma)"``."""
    scales = "one scale per row" if group == 0 else f"one scale per {group} weights"
    return f"int{bits} ({scales}, {layout} layout, {codec})"


def stored_tensors(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors an artifact holds: the model's state, a tied head once (as ``wte.weight``)."""
    return {k: v for k, v in state.items() if not (m.tie_embeddings and k == "lm_head.weight")}


def _compress(data: bytes, codec: str) -> bytes:
    return zlib.compress(data, 9) if codec == "zlib" else lzma.compress(data, lzma.FORMAT_RAW, filters=LZMA_FILTERS)


def _decompress(data: bytes, codec: str) -> bytes:
    return zlib.decompress(data) if codec == "zlib" else lzma.decompress(data, lzma.FORMAT_RAW, filters=LZMA_FILTERS)


@dataclass(frozen=True)
class Sizes:
    """An artifact's bytes by part: ``weights`` (quantized matrices and fp16 vectors), ``scales``, ``tokenizer``
    and ``overhead`` (the fixed prefix, the config and the tensor table)."""
    weights: int
    scales: int
    tokenizer: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.scales + self.tokenizer + self.overhead

    def lines(self) -> list[str]:
        """``["weights    1,234,567 bytes  (93.1%)", ...]``: the split, one part a line."""
        parts = {"weights": self.weights, "scales": self.scales, "tokenizer": self.tokenizer,
                 "overhead": self.overhead}
        return [f"{k:<10} {v:>12,} bytes  ({100 * v / self.total:.1f}%)" for k, v in parts.items()]


def _sizes(parts: list[bytes]) -> Sizes:
    """The compressed sections (header, weights, scales, tokenizer) -> the file's bytes by part."""
    header, weights, scales, tokenizer = map(len, parts)
    return Sizes(weights, scales, tokenizer, PREFIX.size + header)


class Encoded(NamedTuple):
    data: bytes  # the whole file
    sizes: Sizes
    codec: str
    layout: str


def encode(cfg: Config, state: dict[str, torch.Tensor], tok: Tokenizer, bits: int, group: int = 0,
           source: dict | None = None) -> Encoded:
    """A model's state -> the artifact's bytes: every layout and codec tried, the smallest kept.

    ``source`` (the checkpoint, its step and val loss) goes into the header for ``tinylm info``.
    """
    table, vectors, quants = [], [], {}
    for name, t in stored_tensors(state, cfg.model).items():
        if t.dim() == 2:
            quants[name] = quantize(t, bits, group)
            table.append({"name": name, "shape": list(t.shape), "kind": "q"})
        else:
            vectors.append(t.detach().float().half().numpy().tobytes())
            table.append({"name": name, "shape": list(t.shape), "kind": "f16"})
    scales = b"".join(qt.scale.numpy().tobytes() for qt in quants.values())
    header = {"format": "tinylm-artifact", "bits": bits, "group": group, "tensors": table,
              "config": cfg.to_dict(), "source": source or {}}
    best = None
    for layout in LAYOUTS:
        weights = _weights_bytes(table, quants, iter(vectors), bits, layout)
        head = json.dumps({**header, "layout": layout}, separators=(",", ":")).encode()
        for codec in CODECS:
            parts = [_compress(x, codec) for x in (head, weights, scales, tok.file_text().encode())]
            if best is None or sum(map(len, parts)) < sum(map(len, best[0])):
                best = parts, codec, layout
    parts, codec, layout = best
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, CODECS.index(codec), 0, *map(len, parts), b"\0" * 32)
    body = b"".join(parts)
    digest = hashlib.sha256(prefix[:DIGEST_AT] + body).digest()
    sizes = _sizes(parts)
    return Encoded(prefix[:DIGEST_AT] + digest + body, sizes, codec, layout)


def _weights_bytes(table: list[dict], quants: dict[str, Quantized], vectors: Iterator[bytes], bits: int,
                   layout: str) -> bytes:
    return b"".join(to_bytes(quants[e["name"]].q, bits, layout) if e["kind"] == "q" else next(vectors)
                    for e in table)


def is_artifact(path: str | os.PathLike) -> bool:
    """Does ``path`` start with the artifact's magic bytes? (a folder, or a missing file: no)"""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def write(out: Path, encoded: Encoded) -> None:
    """Write the file atomically; an existing ``out`` is replaced only when it is an artifact itself."""
    if out.is_dir():
        raise TinyLMError(f"--out {out} is a folder; give a file name, e.g. --out {out / 'model.tlm'}")
    check_replaceable(out, proof=is_artifact)
    try:
        write_bytes_atomic(out, encoded.data)
    except OSError as e:
        raise write_failure(e, out) from None


class Artifact(NamedTuple):
    """An artifact read back: its config, the dequantized state (fp32, a tied head filled in), its tokenizer."""
    config: Config
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    header: dict  # bits, group, layout, tensors, source (the checkpoint, step, val loss)
    sizes: Sizes
    codec: str


def _sections(path: Path) -> tuple[str, list[bytes]]:
    """The verified, still compressed sections of the file at ``path``, and its codec."""
    again = "export it again (tinylm export RUN --quantize ...)"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TinyLMError(f"cannot read {path}: {e.strerror}") from None
    if not data:
        raise TinyLMError(f"{path} is empty (0 bytes), not a tinylm artifact; {again}")
    if not data.startswith(MAGIC[:len(data)]):
        raise TinyLMError(f"{path} is not a tinylm artifact (it does not start with tinylm's magic bytes); give a "
                          f"run folder, a checkpoint folder, or a file that `tinylm export --quantize` wrote")
    if len(data) < PREFIX.size:
        raise TinyLMError(f"{path} is truncated ({len(data)} bytes, shorter than the artifact's {PREFIX.size}-byte "
                          f"header); {again}")
    _, version, codec, _, *lengths, digest = PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise TinyLMError(f"{path} is artifact format version {version}; this tinylm reads version {FORMAT_VERSION}: "
                          f"{'upgrade tinylm' if version > FORMAT_VERSION else again}")
    expected = PREFIX.size + sum(lengths)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "damaged (bytes past its end)"
        raise TinyLMError(f"{path} is {what}: {len(data):,} bytes where its header declares {expected:,}; {again}")
    if hashlib.sha256(data[:DIGEST_AT] + data[PREFIX.size:]).digest() != digest or codec >= len(CODECS):
        raise TinyLMError(f"{path} is damaged: its checksum does not match its bytes (changed since it was "
                          f"written); {again}")
    bounds = np.cumsum([PREFIX.size, *lengths]).tolist()
    return CODECS[codec], [data[a:b] for a, b in itertools.pairwise(bounds)]


def read_header(path: str | os.PathLike) -> dict:
    """The verified header alone (config, bits, source, ...) with the file's ``sizes``: what ``tinylm info`` shows."""
    codec, parts = _sections(Path(path))
    header = json.loads(_decompress(parts[0], codec))
    sizes = _sizes(parts)
    return {**header, "codec": codec, "sizes": sizes}


def read(path: str | os.PathLike) -> Artifact:
    """The artifact at ``path``, dequantized (see :class:`Artifact`); refused in one line when it is not one."""
    path = Path(path)
    codec, parts = _sections(path)
    head, weights, scales, tok_text = (_decompress(p, codec) for p in parts)
    header = json.loads(head)
    bits, group, layout = header["bits"], header["group"], header["layout"]
    cfg = from_dict(header["config"])
    state, w_at, s_at = {}, 0, 0
    for e in header["tensors"]:
        shape, n = e["shape"], int(np.prod(e["shape"]))
        if e["kind"] == "q":
            size = value_bytes(n, bits, layout)
            q = from_bytes(weights[w_at:w_at + size], n, bits, layout).view(shape)
            ns = shape[0] * group_count(shape[1], group)
            scale = torch.from_numpy(np.frombuffer(scales, np.float16, ns, s_at).copy()).view(shape[0], -1)
            state[e["name"]] = dequantize(Quantized(q, scale), group)
            s_at += ns * SCALE_BYTES
        else:
            size = n * VECTOR_BYTES
            state[e["name"]] = torch.from_numpy(np.frombuffer(weights, np.float16, n, w_at).astype(np.float32)).view(
                shape)
        w_at += size
    if cfg.model.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    tok = parse_tokenizer(tok_text.decode("utf-8"), path, fix="export the artifact again")
    sizes = _sizes(parts)
    return Artifact(cfg, state, tok, header, sizes, codec)


# --------------------------------------------------------------------------- sizes before training

def estimate(m: ModelConfig, bits: int, group: int = 0, tokenizer_bytes: int = 0) -> Sizes:
    """The artifact's bytes for a model of this shape, before it is trained: every part uncompressed (integers
    packed at ``bits``, fp16 scales and vectors, the tokenizer file's ``tokenizer_bytes``; the config and table
    as overhead). The compressors only take bytes away (7% at int8 to 13% at int4 on the tiny-Shakespeare
    model, BENCHMARKS.md), so a model that fits this estimate fits the budget."""
    from ..model.gpt import GPT
    with torch.device("meta"):  # shapes only: no memory, no initialization
        state = GPT(m).state_dict()
    weights = scales = 0
    table = []
    for name, t in stored_tensors(state, m).items():
        if t.dim() == 2:
            weights += value_bytes(t.numel(), bits, "packed")
            scales += t.shape[0] * group_count(t.shape[1], group) * SCALE_BYTES
        else:
            weights += t.numel() * VECTOR_BYTES
        table.append({"name": name, "shape": list(t.shape), "kind": "q" if t.dim() == 2 else "f16"})
    header = {"format": "tinylm-artifact", "bits": bits, "group": group, "tensors": table,
              "config": Config(model=m).to_dict(), "source": {}, "layout": "packed"}
    return Sizes(weights, scales, tokenizer_bytes, PREFIX.size + len(json.dumps(header, separators=(",", ":"))))


def tokenizer_bytes_bound(vocab: int) -> int:
    """At most the bytes of a BPE tokenizer file of ``vocab`` ids, before there is one (``tinylm plan --bytes``): a
    header line of up to 512 bytes, then a merge a line, two ids of up to 5 digits each ("12345 12346\\n")."""
    return 512 + 12 * vocab


def check_budget(cfg: Config, tokenizer_bytes: int) -> Sizes | None:
    """``train.artifact_bytes``: refuse a model whose artifact at ``train.artifact_bits`` will not fit; returns the
    estimate (None without a budget). ``cfg.model.vocab_size`` must be known (the data is prepared)."""
    budget = parse_bytes(cfg.train.artifact_bytes, "--train.artifact_bytes")
    if budget is None:
        return None
    t, m = cfg.train, cfg.model
    size = estimate(m, t.artifact_bits, default_group(t.artifact_bits), tokenizer_bytes)
    if size.total > budget:
        raise TinyLMError(
            f"this model will not fit --train.artifact_bytes {t.artifact_bytes}: at int{t.artifact_bits} its "
            f"artifact takes up to {size.total:,} bytes ({size.weights:,} weights, {size.scales:,} scales, "
            f"{size.tokenizer:,} tokenizer) of {budget:,}; make it smaller (--model.n_embd, --model.n_layer, "
            f"--data.vocab_size; `tinylm plan --bytes {t.artifact_bytes} --bits {t.artifact_bits}` lists shapes "
            f"that fit) or lower --train.artifact_bits")
    return size
