"""Where the time and memory go: model FLOPs utilization (MFU) and peak memory.

MFU = achieved FLOP/s (flops_per_token x tokens/s) / the device's peak FLOP/s. GPU peaks come
from a table of datasheet dense tensor-core figures; a CPU's peak is *measured* once by a short
matmul probe and cached, because CPUs differ too much for a table (this project's Xeon:
~180 GFLOP/s fp32, ~50 GFLOP/s bf16 without AVX512-BF16).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from .fileio import write_text_atomic

# dense peak FLOP/s by GPU name fragment: (bf16/fp16 tensor cores, fp32 without TF32)
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H100": (989e12, 67e12), "A100": (312e12, 19.5e12), "A10G": (125e12, 31e12), "A10": (125e12, 31e12),
    "L40S": (362e12, 91.6e12), "L4": (121e12, 30e12), "4090": (165e12, 82.6e12), "3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12), "T4": (65e12, 8.1e12),
}


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinylm" / "cpu_peak.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_peak(dtype: torch.dtype, trials: int = 5, seconds: float = 0.2, n: int = 1024) -> float:
    """FLOP/s of an n x n matmul on this CPU with torch's current thread count.

    The best of several short trials: a moment of contention from another process lowers one
    trial, not the peak. (Delete the cache file to measure again.)
    """
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up (thread pool, kernels)
    best = 0.0
    for _ in range(trials):
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n ** 3 * count / elapsed)
    return best


def cpu_peak_flops(dtype: torch.dtype) -> float:
    """The probe's result, cached in ~/.cache/tinylm/cpu_peak.json per CPU model, torch version,
    thread count and dtype."""
    key = f"{_cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{dtype}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_cpu_peak(dtype)
        try:
            write_text_atomic(path, json.dumps(cache, indent=1))
        except OSError:  # a read-only home is no reason to fail a run
            pass
    return cache[key]


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s for MFU, or None when unknown (an unlisted GPU, MPS)."""
    if device.type == "cpu":
        return cpu_peak_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (half, single) in GPU_PEAKS.items():
            if fragment in name:
                return single if precision == "fp32" else half
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024
