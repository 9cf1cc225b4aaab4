"""The crash harness: a run SIGKILLed at random moments and resumed until it finishes, each checkpoint checked."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, to_toml
from ..errors import TinyLMError
from ..training import checkpoint as ckpt
from ..training.tracking import METRICS_FILE, logged_losses


@dataclass
class CrashReport:
    kills: int = 0
    lost_steps: list[int] = field(default_factory=list)  # per kill: last logged step - step resumed from
    unreadable_checkpoints: int = 0
    returncode: int | None = None


def crash_harness(cfg: Config, *, min_kills: int = 3, seed: int = 0, jitter: float = 0.05,
                  max_rounds: int = 50, round_timeout: float = 600.0) -> CrashReport:
    """Train ``cfg`` in a child process, SIGKILL it at random moments, resume, until it finishes.

    After every kill the newest checkpoint must load (model, optimizer, trainer state). A kill
    lands anywhere: mid-step, mid-save, mid-write of metrics. Kills follow the run's progress,
    not the clock, so a fast machine cannot finish before them: each round picks a random step
    past the last one logged (leaving room for the kills still to come), waits until the run logs
    it, waits a further random 0 to ``jitter`` seconds, and kills. After ``min_kills`` kills the
    run is left to finish. Log every step (``train.log_interval 1``) for the finest spread.

    A round (one child process) that runs past ``round_timeout`` seconds is killed and reported
    as an error. The child's stderr goes to a file, never a pipe nobody reads, which would block
    a child that writes more than the pipe holds (a progress bar over a long run).
    """
    rng = random.Random(seed)
    report = CrashReport()
    last_target = cfg.train.max_steps - 2 * cfg.train.log_interval  # a kill target the run surely logs before its end
    with tempfile.TemporaryDirectory() as tmp:
        preset, stderr_log = Path(tmp) / "run.toml", Path(tmp) / "stderr.log"
        preset.write_text(to_toml(cfg))
        base = [sys.executable, "-m", "tinylm", "train", "--config", str(preset)]
        for _ in range(max_rounds):
            resume = ["--resume"] if cfg.run_dir.exists() else []
            deadline = time.monotonic() + round_timeout
            with open(stderr_log, "wb") as err:
                proc = subprocess.Popen(base + resume, stdout=subprocess.DEVNULL, stderr=err)
            try:
                logged = max(logged_losses(cfg.run_dir), default=0)
                room = (last_target - logged) // (min_kills - report.kills + 1) if report.kills < min_kills else 0
                if room >= 1 and _wait_for_step(proc, cfg.run_dir, logged + rng.randint(1, room), deadline):
                    time.sleep(rng.uniform(0.0, jitter))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    _check_after_kill(cfg, report)
                    continue
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                raise TinyLMError(f"a round of the crash harness ran past {round_timeout:g} s and was killed; "
                                  f"its stderr ends: {_tail(stderr_log)}") from None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            report.returncode = proc.returncode
            if proc.returncode != 0:
                raise TinyLMError(f"the resumed run failed: {_tail(stderr_log)}")
            return report
    raise TinyLMError(f"the run did not finish within {max_rounds} rounds")


def _check_after_kill(cfg: Config, report: CrashReport) -> None:
    """Count the kill, whether the newest checkpoint loads, and the steps it lost."""
    report.kills += 1
    logged = max(logged_losses(cfg.run_dir), default=0)
    found = ckpt.find_checkpoint(cfg.run_dir / "checkpoints")
    resumed_at = 0
    if found is not None:
        try:
            for part in ("model", "optimizer", "trainer"):
                ckpt.load_part(found, part)
            resumed_at = ckpt.read_meta(found)["step"]
        except (TinyLMError, OSError, ValueError):
            report.unreadable_checkpoints += 1
    report.lost_steps.append(max(logged - resumed_at, 0))


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_bytes()[-chars:].decode("utf-8", errors="replace")


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, deadline: float, poll: float = 0.002) -> bool:
    """Wait until the run logs ``step`` (True) or the process ends first (False); past ``deadline``
    (time.monotonic()), raise subprocess.TimeoutExpired."""
    metrics, seen = run_dir / METRICS_FILE, -1
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, 0)
        size = metrics.stat().st_size if metrics.is_file() else -1
        if size != seen:  # parse the log only when it has grown
            seen = size
            if max(logged_losses(run_dir), default=0) >= step:
                return True
        time.sleep(poll)
    return False
