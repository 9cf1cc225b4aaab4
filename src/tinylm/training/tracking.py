"""Metric sinks behind one small interface: ``log(record)`` and ``close()``.

Every record is a flat dict with the same names everywhere (step, loss, val_loss, lr,
grad_norm, tokens_per_s, data_ms, compute_ms, tokens_seen, elapsed_s).
"""
from __future__ import annotations

import json
import math
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ..config import Config
from ..config_check import parse_duration
from ..errors import TinyLMError
from ..fileio import write_failure, write_text_atomic

METRICS_FILE = "metrics.jsonl"  # in the run folder


# the figures a record holds as numbers (or null, for a non-finite value): readers compare and average them
NUMERIC_KEYS = ("loss", "val_loss", "val_ppl", "val_bpb", "lr", "grad_norm", "tokens_per_s", "data_ms", "compute_ms",
                "tokens_seen", "elapsed_s", "mfu")


def _is_record(r: object) -> bool:
    """A JSON object with an integer step >= 0, whose figures are numbers or null."""
    return (isinstance(r, dict) and type(r.get("step")) is int and r["step"] >= 0
            and all(r[k] is None or (isinstance(r[k], (int, float)) and not isinstance(r[k], bool))
                    for k in NUMERIC_KEYS if k in r))


def read_metrics_counted(run_dir: Path) -> tuple[list[dict], int]:
    """:func:`read_metrics`, and how many lines it skipped (not a record: cut short by a crash, or edited)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], 0
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        if _is_record(r):
            records.append(r)
        elif line.strip():
            skipped += 1
    return records, skipped


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order ([] before the first). A line that is not a record
    (one cut short by a crash, SIGKILL mid-write; a damaged or edited one) is skipped; after a resume, re-done
    steps appear again, later."""
    return read_metrics_counted(run_dir)[0]


class JSONLSink:
    """Append one JSON object per record to ``metrics.jsonl`` (flushed, so a crash loses nothing logged)."""

    def __init__(self, path: Path):
        self.path, self.failed = path, False
        try:
            self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's life, closed by close()
        except OSError as e:
            raise write_failure(e, path, "continue with --resume") from None

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            self.f.write(json.dumps(clean) + "\n")
            self.f.flush()
        except OSError as e:  # a full disk: one line, and the checkpoints are intact for --resume
            self.failed = True
            raise write_failure(e, self.path, "continue with --resume") from None

    def close(self) -> None:
        """Close the file; after a failed write (said already) what is still buffered is dropped silently."""
        try:
            self.f.close()  # flushes: on a full disk it fails again, and the file is closed all the same
        except OSError as e:
            if not self.failed:
                raise write_failure(e, self.path, "continue with --resume") from None


class ConsoleSink:
    """A live progress bar (loss, val loss, tok/s, ETA) on a terminal; elsewhere (``progress`` off, or the
    console a pipe, a file, a job scheduler's log) no ``\\r`` bar: one plain line per logged step and per
    evaluation.

    The bar's total follows whichever ends the run first: ``max_steps``, or with a ``time_budget``
    (seconds) the step the run reaches at its pace so far, so a budgeted run ends at 100%.
    """

    def __init__(self, max_steps: int, start_step: int, progress: bool, time_budget: float | None = None,
                 file: TextIO | None = None):
        self.max_steps, self.time_budget = max_steps, time_budget
        file = file or sys.stderr
        # tqdm's own time left counts to max_steps; the loop's eta_s also knows the time budget, so show that
        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True, file=file,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") \
            if progress and file.isatty() else None
        self.last: dict = {}
        self.text = ""  # the bar's figures, as the last record left them

    def fraction(self) -> float:
        """How far the run is, 0..1: steps done of ``max_steps``, or budget spent, whichever is further."""
        frac = self.last.get("step", 0) / self.max_steps
        if self.time_budget and self.last.get("elapsed_s"):
            frac = max(frac, self.last["elapsed_s"] / self.time_budget)
        return min(frac, 1.0)

    def expected_steps(self) -> int:
        """The step the run ends at: ``max_steps``, or sooner, at this pace, when the time budget ends it first."""
        step, frac = self.last.get("step", 0), self.fraction()
        return self.max_steps if frac <= step / self.max_steps else max(step, round(step / frac))

    def log(self, record: dict) -> None:
        if "message" in record:  # an event (loss spike, slow data, non-finite step): say it
            self.write(f"step {record['step']}: {record['message']}")
            return
        self.last.update({k: v for k, v in record.items() if v is not None})
        r = self.last
        val = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
        text = f"loss {r.get('loss', float('nan')):.4f} val {val} {r.get('tokens_per_s', 0):,.0f} tok/s"
        if "eta_s" in r:
            text += f" eta {tqdm.format_interval(r['eta_s'])}"
        self.text = text
        if self.bar is not None:
            self.bar.total, self.bar.n = self.expected_steps(), record["step"]
            self.bar.set_postfix_str(text, refresh=True)
        else:
            print(f"step {record['step']} ({self.fraction():.0%}): {text}", flush=True)

    def status(self, message: str) -> None:
        """Say what the run is doing until the next record (e.g. evaluating): first, so that an 80-column
        bar cuts the figures, not the message."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{message} | {self.text}" if self.text else message, refresh=True)
        else:
            print(message, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardSink:
    """Scalars to ``<run>/tb`` (``tensorboard --logdir runs``); every numeric field, x = step."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TinyLMError("--run.tensorboard needs the tensorboard package: "
                              "pip install 'tinylm[track]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict) -> None:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases; ``WANDB_MODE=offline`` writes a local run to sync later.

    The W&B run id is kept in ``<run>/wandb_id``, so a resumed run goes on logging to the same W&B run.
    """

    def __init__(self, project: str, name: str, config: dict, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise TinyLMError("--run.wandb needs the wandb package: pip install 'tinylm[track]'") from None
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(8)  # W&B accepts any id of letters and digits
            write_text_atomic(id_file, run_id + "\n")
        self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir), id=run_id, resume="allow")

    def where(self) -> str:
        """Where this run's W&B data goes, for the console."""
        if self.run.offline:  # run.dir is the run's files/ folder; `wandb sync` takes its parent
            folder = Path(self.run.dir).parent
            return f"W&B: offline run in {folder}; upload it with `wandb sync {folder}`"
        return f"W&B: {self.run.url}"

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step" and not isinstance(v, str)},
                     step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fans records out to every sink."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, record: dict) -> None:
        for s in self.sinks:
            s.log(record)

    def status(self, message: str) -> None:
        """A passing state (e.g. evaluating) for the sinks that show one; nothing is recorded."""
        for s in self.sinks:
            if hasattr(s, "status"):
                s.status(message)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_tracker(cfg: Config, run_dir: Path, step: int, log: Callable[[str], None] = print) -> Tracker:
    """The sinks a training run logs to: metrics.jsonl and the console, plus TensorBoard and W&B when
    enabled (``log`` says where their files go); ``step`` is where the run starts (the console's
    progress bar starts there too)."""
    sinks = [JSONLSink(run_dir / METRICS_FILE),
             ConsoleSink(cfg.train.max_steps, step, cfg.run.progress, parse_duration(cfg.train.time_budget))]
    if cfg.run.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tb"))
        log(f"TensorBoard: events in {run_dir / 'tb'}; view them with `tensorboard --logdir {run_dir.parent}`")
    if cfg.run.wandb:
        sinks.append(WandbSink(cfg.run.wandb_project, cfg.run.name, cfg.to_dict(), run_dir))
        log(sinks[-1].where())
    return Tracker(sinks)


def logged_losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """``key`` (training loss, or e.g. val_loss) per step from metrics.jsonl; after a resume,
    re-done steps replace earlier lines."""
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}
