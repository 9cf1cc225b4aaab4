"""Weight quantization: a matrix as small integers per group of a row, each group with its own fp16 scale.

Symmetric and round-to-nearest: a group of ``g`` weights (a whole row when ``group`` is 0) is stored as
integers in [-qmax, qmax], qmax = 2^(bits-1) - 1 (int8: 127, int6: 31, int4: 7), and one scale;
dequantized, ``w ~ q x scale``. The scale is not simply max|w| / qmax: a few clip ratios are tried per
group and the one with the least squared error kept (clipping the largest weights buys finer steps for
all the others; it matters most at 4 bits). Worked example, one row at int4:
``quantize(torch.tensor([[0.7, -0.1, 0.04, 0.0]]), 4)`` -> q ``[[7, -1, 0, 0]]``, scale 0.1.

Integers go into bytes in one of two layouts (:data:`LAYOUTS`), the artifact keeps whichever compresses
smaller: ``packed`` (exactly ``bits`` per value, across byte boundaries) or ``bytes`` (one value per byte:
more raw bytes, but the compressor sees whole symbols and takes out the bits a bell-shaped weight
distribution does not use).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # of max|w| per group, tried for the least squared error
LAYOUTS = ("packed", "bytes")
SCALE_BYTES = 2  # each group's scale is one fp16


class Quantized(NamedTuple):
    """One matrix quantized: ``q`` (rows, cols) int8 values in [-qmax, qmax], ``scale`` (rows, groups) fp16."""
    q: torch.Tensor
    scale: torch.Tensor


def qmax(bits: int) -> int:
    """The largest integer of a symmetric ``bits``-bit code: ``qmax(8) -> 127``, ``qmax(4) -> 7``."""
    return 2 ** (bits - 1) - 1


def group_count(cols: int, group: int) -> int:
    """Groups per row of ``cols`` weights in groups of ``group`` (0 = the whole row): ``group_count(100, 32) -> 4``."""
    return 1 if group <= 0 or group >= cols else -(-cols // group)


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, cols) -> (rows, groups, g), the last group zero-padded."""
    rows, cols = w.shape
    n = group_count(cols, group)
    g = -(-cols // n)
    return torch.nn.functional.pad(w, (0, n * g - cols)).view(rows, n, g)


def quantize(w: torch.Tensor, bits: int, group: int = 0) -> Quantized:
    """A 2-D float tensor -> integers and per-group scales (see the module docstring)."""
    top = qmax(bits)
    wg = _grouped(w.detach().float(), group)  # (rows, groups, g)
    amax = wg.abs().amax(dim=-1, keepdim=True)  # (rows, groups, 1)
    best_err = best_scale = None
    for ratio in CLIP_RATIOS:
        # the scale as stored (fp16), so that the integers are chosen for the scale the reader multiplies by
        scale = (amax * ratio / top).clamp_min(1e-8).half().float()
        err = ((wg / scale).round().clamp(-top, top) * scale - wg).square().sum(dim=-1, keepdim=True)
        if best_err is None:
            best_err, best_scale = err, scale
        else:
            better = err < best_err
            best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    q = (wg / best_scale).round().clamp(-top, top).to(torch.int8)  # (rows, groups, g)
    return Quantized(q.flatten(1)[:, :w.shape[1]].contiguous(), best_scale.squeeze(-1).half())


def dequantize(qt: Quantized, group: int = 0) -> torch.Tensor:
    """Integers and scales -> the fp32 matrix they stand for."""
    cols = qt.q.shape[1]
    qg = _grouped(qt.q.float(), group)  # (rows, groups, g)
    return (qg * qt.scale.float().unsqueeze(-1)).flatten(1)[:, :cols]


def to_bytes(q: torch.Tensor, bits: int, layout: str) -> bytes:
    """Integers in [-qmax, qmax] -> bytes, as unsigned codes q + 2^(bits-1) (int8's -127..127 -> 1..255)."""
    codes = (q.reshape(-1).numpy().astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    if layout == "bytes":
        return codes.tobytes()
    bitplanes = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits:]  # (n, bits), most significant first
    return np.packbits(bitplanes.reshape(-1)).tobytes()


def from_bytes(data: bytes, n: int, bits: int, layout: str) -> torch.Tensor:
    """Inverse of :func:`to_bytes`: ``n`` integers (int8) from their bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if layout == "bytes":
        codes = raw[:n]
    else:
        bitplanes = np.unpackbits(raw)[:n * bits].reshape(n, bits)
        codes = np.packbits(np.pad(bitplanes, ((0, 0), (8 - bits, 0))), axis=1).reshape(-1)
    return torch.from_numpy(codes.astype(np.int16) - 2 ** (bits - 1)).to(torch.int8)


def value_bytes(n: int, bits: int, layout: str) -> int:
    """Bytes :func:`to_bytes` writes for ``n`` integers: ``value_bytes(4, 6, "packed") -> 3``."""
    return n if layout == "bytes" else -(-n * bits // 8)


# bits -> weights per scale by default (0 = a row). Per row at every width: on the tiny-Shakespeare model groups of
# 32 cut int4's cost from +0.035 to +0.019 bpb for 13% more bytes (BENCHMARKS.md, "Quantized artifacts")
GROUPS = {8: 0, 6: 0, 4: 0}


def default_group(bits: int) -> int:
    """The group size ``--quantize intN`` uses unless ``--group-size`` says otherwise."""
    return GROUPS[bits]
