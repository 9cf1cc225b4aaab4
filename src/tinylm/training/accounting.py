"""Where the time and memory go: model FLOPs utilization (MFU) and peak memory.

MFU = achieved FLOP/s (flops_per_token x tokens/s) / the device's peak FLOP/s. GPU peaks come
from a table of datasheet dense tensor-core figures; a CPU's peak is *measured* once by a short
matmul probe and cached, because CPUs differ too much for a table (BENCHMARKS.md, "CPU precision", has
this project's machines).
"""
from __future__ import annotations

import contextlib
import platform
import re
import resource
import time
from collections.abc import Callable, Iterator

import torch

from ..machine_cache import machine_cached

# Datasheet dense peak FLOP/s without sparsity, by a pattern of the name torch reports ("NVIDIA H100
# PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA L40S"): (bf16/fp16 tensor cores, TF32 tensor cores, plain fp32).
# TF32 is what fp32 matmuls run on when torch allows it (tinylm does on CUDA: runtime.enable_tf32); None
# where the GPU has no TF32 (Volta, Turing: fp32 matmuls run at the fp32 figure). Most specific first,
# matched on word boundaries: "L4" must not take an L40's figures, nor "A10" an A100's.
GPU_PEAKS: list[tuple[str, tuple[float, float | None, float]]] = [
    (r"H100\b.*\bPCIe", (756e12, 378e12, 51e12)), (r"H100\b.*\bNVL", (835e12, 418e12, 60e12)),
    (r"H100", (989e12, 495e12, 67e12)), (r"H200", (989e12, 495e12, 67e12)), (r"B200", (2250e12, 1100e12, 80e12)),
    (r"A100", (312e12, 156e12, 19.5e12)), (r"A10G", (125e12, 62.5e12, 31e12)), (r"A10", (125e12, 62.5e12, 31e12)),
    (r"L40S", (362e12, 183e12, 91.6e12)), (r"L40", (181e12, 90.5e12, 90.5e12)), (r"L4", (121e12, 60e12, 30e12)),
    (r"4090", (165e12, 82.6e12, 82.6e12)), (r"3090", (71e12, 35.6e12, 35.6e12)), (r"V100", (125e12, None, 15.7e12)),
    (r"T4", (65e12, None, 8.1e12)),
]


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """The table's figure for a GPU name and the precision its matmuls run in (bf16 | fp16 | tf32 | fp32),
    or None for an unlisted GPU.

    ``gpu_peak_flops("NVIDIA L4", "bf16") -> 121e12``; ``gpu_peak_flops("NVIDIA L40", "bf16") -> 181e12``;
    ``gpu_peak_flops("NVIDIA H200", "tf32") -> 495e12``; ``gpu_peak_flops("Tesla V100", "tf32") -> 15.7e12``.
    """
    for pattern, (half, tf32, single) in GPU_PEAKS:
        if re.search(rf"\b{pattern}\b", name):
            if precision == "tf32":
                return tf32 or single
            return single if precision == "fp32" else half
    return None


def matmul_precision(device: torch.device, precision: str) -> str:
    """What the matmuls of a run at ``precision`` really run in: ``"tf32"`` for fp32 on CUDA while torch
    allows TF32 (``torch.get_float32_matmul_precision() != "highest"``), bf16 for fp8 (MFU counts an fp8 run
    against the bf16 peak, so that fp8 and bf16 rows compare), else ``precision`` itself."""
    if precision == "fp8":
        return "bf16"
    tf32 = device.type == "cuda" and precision == "fp32" and torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else precision


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak of every device that achieved them.

    ``tokens_per_s`` counts the tokens of all ``world_size`` processes (the global batch), and ``peak``
    is one device's: ``mfu(1000, 6e6, 1e10, world_size=2) -> 0.3``. None when the peak is unknown.
    """
    return tokens_per_s * flops_per_token / (peak * world_size) if peak else None


class ThroughputWindow:
    """Training steps and their seconds since the last log line, on a clock that stops while paused.

    Evaluation and checkpoints run between steps and are not training speed: the loop pauses the
    window around them, so a window's steps and seconds always belong together, whatever the log,
    eval and save intervals. ``clock`` is injectable so tests control time.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self.start, self.paused_s = self.clock(), 0.0
        self.steps, self.data_s, self.compute_s = 0, 0.0, 0.0

    def add(self, data_s: float, compute_s: float) -> None:
        """One training step, with its data-loading and compute seconds."""
        self.steps += 1
        self.data_s += data_s
        self.compute_s += compute_s

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - t0

    @property
    def seconds(self) -> float:
        """Training seconds of this window (wall time since restart, less the paused time)."""
        return self.clock() - self.start - self.paused_s

    def record(self, tokens_per_step: int, flops_per_token: float, peak: float | None, world_size: int = 1) -> dict:
        """The window's fields of a metrics record: tokens_per_s (of every process, when ``tokens_per_step``
        is the global batch's), data_ms and compute_ms (mean per step), and :func:`mfu`."""
        n = max(self.steps, 1)
        tokens_per_s = self.steps * tokens_per_step / max(self.seconds, 1e-9)
        return {"tokens_per_s": tokens_per_s, "data_ms": 1000 * self.data_s / n,
                "compute_ms": 1000 * self.compute_s / n, "mfu": mfu(tokens_per_s, flops_per_token, peak, world_size)}

    def eta(self, steps_left: int) -> float:
        """Seconds that ``steps_left`` more steps take at the window's pace."""
        return steps_left * max(self.seconds, 1e-9) / max(self.steps, 1)


def measure_cpu_peak(dtype: torch.dtype, trials: int = 5, seconds: float = 0.2, n: int = 1024,
                     shape: tuple[int, int, int] | None = None) -> float:
    """FLOP/s of an n x n matmul (or an (m, k) @ (k, p) one for ``shape`` = (m, k, p)) on this CPU with
    torch's current thread count.

    The best of several short trials: a moment of contention from another process lowers one
    trial, not the peak. (Delete the cache file to measure again.)
    """
    m, k, p = shape or (n, n, n)
    g = torch.Generator().manual_seed(0)  # its own stream: probing must not move training's random state
    a, b = torch.randn(m, k, dtype=dtype, generator=g), torch.randn(k, p, dtype=dtype, generator=g)
    a @ b  # warm up (thread pool, kernels)
    best = 0.0
    for _ in range(trials):
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            a @ b
            count += 1
        best = max(best, 2 * m * k * p * count / elapsed)
    return best


def cpu_peak_flops(dtype: torch.dtype) -> float:
    """The matmul probe's result (:func:`measure_cpu_peak`), measured once per machine and dtype."""
    return machine_cached("cpu_peak", str(dtype), lambda: measure_cpu_peak(dtype))


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s for MFU, or None when unknown (an unlisted GPU, MPS); see :func:`describe_peak`."""
    if device.type == "cpu":
        return cpu_peak_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), matmul_precision(device, precision))
    return None


def describe_peak(device: torch.device, precision: str, peak: float | None) -> str:
    """Which peak MFU divides by, for a run's setup line and benchmark output:
    ``"MFU against 495 TFLOP/s (NVIDIA H200, tf32 dense, datasheet)"``."""
    if peak is None:
        return "MFU: n/a (no peak FLOP/s known for this device: add it to accounting.GPU_PEAKS)"
    kind = matmul_precision(device, precision)
    if device.type == "cpu":
        return f"MFU against {peak / 1e9:.0f} GFLOP/s (this CPU, {kind} matmul probe, measured)"
    return f"MFU against {peak / 1e12:.0f} TFLOP/s ({torch.cuda.get_device_name(device)}, {kind} dense, datasheet)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024
