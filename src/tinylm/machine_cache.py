"""Probes that depend on the machine (a matmul's FLOP/s, the fastest attention kernel) run once per machine: their
results cached in ~/.cache/tinylm/<name>.json, keyed by CPU model, torch version and thread count."""
from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .fileio import write_text_atomic

T = TypeVar("T")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_cached(name: str, key: str, measure: Callable[[], T]) -> T:
    """``measure()``'s result, cached in ~/.cache/tinylm/<name>.json per CPU model, torch version, thread
    count and ``key``: probes that depend on the machine run once per machine (delete the file to redo them)."""
    key = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{key}"
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinylm" / f"{name}.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure()
        with contextlib.suppress(OSError):  # a read-only home is no reason to fail a run
            write_text_atomic(path, json.dumps(cache, indent=1))
    return cache[key]
