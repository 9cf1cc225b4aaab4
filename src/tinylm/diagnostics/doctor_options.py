"""What `tinylm doctor` can be asked: its checks and the sizes of its short runs (no torch: `--help` reads them)."""
from __future__ import annotations

from dataclasses import dataclass, fields

CHECKS = ("data", "init", "gradients", "overfit", "accumulation", "identity", "determinism", "throughput")


@dataclass
class DoctorOptions:
    steps: int = 30
    """Steps of each short training run (identity, determinism, seeds)."""
    seeds: int = 5
    """Seeds whose val losses give the spread (the first also runs twice for the same-seed check); 1 = no spread."""
    batch_size: int = 4
    """Sequences per step of the short runs (at most train.batch_size); keeps doctor quick on a CPU."""
    overfit_steps: int = 50
    """Steps on one fixed batch of the overfit check."""
    overfit_batch: int = 4
    """Sequences in that one batch."""
    throughput_steps: int = 3
    """Timed steps at the config's own batch size (after one warm-up step)."""
    checks: tuple[str, ...] = CHECKS
    """Which checks to run, in this order."""


def options_from(values: dict) -> DoctorOptions:
    """DoctorOptions from the CLI's values (None = the default)."""
    given = {f.name: values[f.name] for f in fields(DoctorOptions) if values.get(f.name) is not None}
    return DoctorOptions(**given)
