"""What the benchmark scripts share: the machine's description, how busy its CPU is, and timers.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``, so
they import it as ``common``. Importing it (or a script) runs nothing; it only puts ../src on
``sys.path`` when tinylm is not installed.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the shared corpora and tiktoken files, beside the repository

try:
    import tinylm
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))
    import tinylm


def use_shared_data() -> None:
    """Read named corpora from ../shared/data unless $TINYLM_DATA_DIR says otherwise (no download)."""
    os.environ.setdefault("TINYLM_DATA_DIR", str(SHARED / "data"))


# --------------------------------------------------------------------------- the machine

def _cpuinfo(key: str) -> str:
    """The first value of ``key`` in /proc/cpuinfo ('' where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def _git_rev() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    return "?"


def machine(*packages: str) -> dict[str, Any]:
    """What a measurement ran on: date, CPU model, cores, bf16 support, Python and torch, the
    versions of tinylm and of ``packages`` (e.g. "transformers"), the git revision and the load average now."""
    import torch  # not at the top: bench_bpe's memory-measuring child process imports this module

    flags = set(_cpuinfo("flags").split())
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "system": platform.system(),
        "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "tinylm": tinylm.__version__, "packages": {name: _version(name) for name in packages},
        "git": _git_rev(), "loadavg": os.getloadavg()}


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "not installed"


def machine_line(info: dict[str, Any]) -> str:
    """``machine()``'s description on one line (the date apart: reports put it in their title)."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    packages = "".join(f", {name} {version}" for name, version in info["packages"].items())
    return (f"{info['cpu']}, {info['cores']} cores, {info['system']}, capability {info['cpu_capability']}, "
            f"AVX512-BF16 {yes(info['avx512_bf16'])}, AMX {yes(info['amx'])}; Python {info['python']}, "
            f"torch {info['torch']} ({info['torch_threads']} threads){packages}; "
            f"tinylm {info['tinylm']} (git {info['git']}); load average {load_average(info['loadavg'])}")


def gpu_line(index: int = 0) -> str:
    """CUDA device ``index`` on one line: name, memory, compute capability, SMs, CUDA and driver-side versions;
    "no CUDA device" where torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__})"
    p = torch.cuda.get_device_properties(index)
    return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
            f"{p.multi_processor_count} SMs; {torch.cuda.device_count()} GPU(s) visible; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def load_average(loads: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in loads)


# --------------------------------------------------------------------------- how busy the CPU is

def _proc_stat() -> tuple[int, int]:
    """(all, idle + iowait) clock ticks of every core since boot (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def idle_share(seconds: float) -> float:
    """Share of all cores' time spent idle over the next ``seconds`` (NaN where /proc/stat is missing).

    While this process sleeps, the rest is what other processes use. The load average cannot tell
    that: it counts this benchmark's own recent work too.
    """
    try:
        t0, i0 = _proc_stat()
        time.sleep(seconds)
        t1, i1 = _proc_stat()
    except OSError:
        return math.nan
    return (i1 - i0) / max(t1 - t0, 1)


def cpu_idle_pct(seconds: float = 5.0) -> float:
    """Percent of all cores' time spent idle over the next ``seconds``."""
    return 100.0 * idle_share(seconds)


def busy_elsewhere(seconds: float = 1.0) -> float:
    """Share of the machine's CPU capacity used by other processes while this one sleeps."""
    return 1.0 - idle_share(seconds)


def wait_for_quiet(max_busy: float, log: Callable[[str], None] = print, *, sample_s: float = 1.0,
                   pause_s: float = 20.0, timeout_s: float = math.inf) -> float:
    """On a shared machine: wait until other processes use at most ``max_busy`` of the CPU (a share;
    0 = don't wait), measured over ``sample_s``, again every ``pause_s``, for up to ``timeout_s``.

    Returns the last share measured (NaN when not asked, or where it cannot be measured: no wait then).
    """
    deadline = time.monotonic() + timeout_s
    while max_busy:
        busy = busy_elsewhere(sample_s)
        if math.isnan(busy) or busy <= max_busy or time.monotonic() >= deadline:
            return busy
        log(f"  other processes use {busy:.0%} of the CPU over {sample_s:g} s (> {max_busy:.0%}); "
            f"waiting {pause_s:g} s")
        time.sleep(pause_s)
    return math.nan


# --------------------------------------------------------------------------- timers

def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # CPU seconds (this process's threads and its child processes)
    result: Any

    @property
    def cpu_per_wall(self) -> float:
        """Busy threads on average: near the thread count = the call had the CPU; well below = it waited."""
        return self.cpu / self.wall


def time_call(fn: Callable[[], Any]) -> Timing:
    """Wall time, CPU time and result of one call of ``fn``."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return Timing(wall, cpu_seconds() - c0, out)


def median_min(times: list[float]) -> str:
    """``"1.23 s [1.20]"``: the median of repeated times and, in brackets, the best."""
    med = statistics.median(times)
    return f"{med:.2f} s" + (f" [{min(times):.2f}]" if len(times) > 1 else "")


class Meter:
    """Wall time and CPU time of repeated calls (``meter(fn)`` times one and returns its result).
    CPU time is the steadier figure on a machine other jobs are using."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn: Callable[[], Any]) -> Any:
        t = time_call(fn)
        self.wall.append(t.wall)
        self.cpu.append(t.cpu)
        return t.result

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def cell(self) -> str:
        """Median wall time [best]; median CPU time."""
        return f"{median_min(self.wall)}; CPU {statistics.median(self.cpu):.2f} s"
