"""The curve-health verdict: written rules over a run's metrics, each a pure function of the records.

Every rule returns a :class:`Finding` (its name, whether it fired, one sentence that gives the numbers).
The thresholds are stated in :data:`RULES` and printed in every report, so a reader can disagree with them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

VAL_ABOVE_BEST = 0.02  # a val loss more than 2% above its best has risen, beyond evaluation noise
MIN_LOGS = 8  # train losses a curve needs before it is judged (plateau and still falling need 8)

# the written rules, as the report prints them
RULES = {
    "too few logs": f"fewer than {MIN_LOGS} train losses were logged: the curve cannot be judged (the rules below need "
                    f"5 to 8 points; log more often with train.log_interval, or train longer)",
    "diverging": "a non-finite loss was logged, or the last 10% of logged train losses average more than 1.2 x "
                 "the lowest (median-of-5 smoothed) train loss",
    "loss spikes": "the trainer logged a loss_spike event (loss > train.spike_factor x the running median)",
    "plateau": "over the last 25% of logged steps the smoothed train loss fell less than 0.5% (needs >= 8 logs)",
    "still falling": "over the last 25% of logged steps the smoothed train loss fell more than 2%: undertrained, "
                     "more tokens would help (unless overfitting fires too: then the train loss falls by learning "
                     "the training text, and only new text helps)",
    "overfitting": "the final val loss is more than 0.1 nats and 5% above the final smoothed train loss, or more "
                   f"than {VAL_ABOVE_BEST:.0%} above the best val loss",
    "LR at the edge": "in the second half of the run, more than half of the logged gradient norms reach the clip "
                      "threshold (optim.grad_clip): the clip, not the LR, sets the step size",
}


@dataclass
class Finding:
    rule: str
    fired: bool
    detail: str


def smoothed(values: list[float], k: int = 5) -> list[float]:
    """Running median of the last ``k`` values: one noisy batch does not move it.

    ``smoothed([3, 1, 2, 9, 2], 3) -> [3, 2, 2, 2, 2]``
    """
    return [statistics.median(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that has ``key``; after a resume a re-done step keeps its later value."""
    by_step = {r["step"]: r[key] for r in records if key in r}
    return sorted(by_step.items())


def too_few_logs(records: list[dict]) -> Finding:
    """A run with no metrics, or only a few logged steps, is not "healthy": nothing was judged."""
    n = len(_series(records, "loss"))
    return Finding("too few logs", n < MIN_LOGS, f"{n} train loss(es) logged")


def diverging(records: list[dict]) -> Finding:
    train = _series(records, "loss")
    if any(v is None or not math.isfinite(v) for _, v in train):
        return Finding("diverging", True, "a non-finite train loss was logged")
    losses = [v for _, v in train]
    if len(losses) < 5:
        return Finding("diverging", False, "too few logged steps to judge")
    tail = losses[-max(1, len(losses) // 10):]
    low = min(smoothed(losses))
    ratio = statistics.mean(tail) / low
    return Finding("diverging", ratio > 1.2, f"the last logged losses average {ratio:.2f} x the lowest")


def loss_spikes(records: list[dict]) -> Finding:
    steps = [r["step"] for r in records if r.get("event") == "loss_spike"]
    detail = f"at steps {', '.join(map(str, steps))}" if steps else "none logged"
    return Finding("loss spikes", bool(steps), detail)


def _late_drop(records: list[dict]) -> float | None:
    """Relative fall of the smoothed train loss over the last 25% of logged steps; None with < 8 logs."""
    losses = [v for _, v in _series(records, "loss") if v is not None and math.isfinite(v)]
    if len(losses) < 8:
        return None
    s = smoothed(losses)
    start = s[len(s) - 1 - len(s) // 4]
    return (start - s[-1]) / abs(start)


def plateau(records: list[dict]) -> Finding:
    drop = _late_drop(records)
    if drop is None:
        return Finding("plateau", False, "too few logged steps to judge")
    return Finding("plateau", drop < 0.005, f"the smoothed train loss fell {drop:.1%} over the last quarter")


def still_falling(records: list[dict]) -> Finding:
    drop = _late_drop(records)
    if drop is None:
        return Finding("still falling", False, "too few logged steps to judge")
    return Finding("still falling", drop > 0.02, f"the smoothed train loss fell {drop:.1%} over the last quarter")


def overfitting(records: list[dict]) -> Finding:
    val = [v for _, v in _series(records, "val_loss") if v is not None]
    train = [v for _, v in _series(records, "loss") if v is not None and math.isfinite(v)]
    if not val or not train:
        return Finding("overfitting", False, "no val loss or train loss logged")
    gap = val[-1] - smoothed(train)[-1]
    above_best = val[-1] / min(val) - 1
    fired = (gap > 0.1 and gap > 0.05 * abs(smoothed(train)[-1])) or above_best > VAL_ABOVE_BEST
    return Finding("overfitting", fired, f"val - train gap {gap:+.3f} nats; final val {above_best:.1%} above "
                                         f"its best")


def lr_at_edge(records: list[dict], grad_clip: float) -> Finding:
    if not grad_clip:
        return Finding("LR at the edge", False, "no gradient clipping (optim.grad_clip 0)")
    norms = [v for _, v in _series(records, "grad_norm") if v is not None]
    late = norms[len(norms) // 2:]
    if not late:
        return Finding("LR at the edge", False, "no gradient norms logged")
    share = sum(n >= grad_clip for n in late) / len(late)
    return Finding("LR at the edge", share > 0.5, f"{share:.0%} of the second half's gradient norms reach the "
                                                  f"clip {grad_clip:g}")


def verdict(records: list[dict], grad_clip: float) -> list[Finding]:
    """Every rule of :data:`RULES`, in order. A train loss still falling while the val loss rises is
    overfitting, not undertraining: the still-falling finding then says so instead of asking for more tokens."""
    falling, over = still_falling(records), overfitting(records)
    if falling.fired and over.fired:
        falling.detail += ("; but the val loss rose (overfitting): the train loss falls by learning the training "
                           "text, so more passes over it would not help, new text would")
    return [too_few_logs(records), diverging(records), loss_spikes(records), plateau(records), falling, over,
            lr_at_edge(records, grad_clip)]


OVERFITTING_WHILE_FALLING = "overfitting (the train loss still falls, the val loss does not: more new text would help)"


def summary(findings: list[Finding]) -> str:
    """One line: ``"healthy"`` or the rules that fired, e.g. ``"still falling, LR at the edge"``; overfitting and
    still falling together read as one finding, :data:`OVERFITTING_WHILE_FALLING`."""
    fired = [f.rule for f in findings if f.fired]
    if "overfitting" in fired and "still falling" in fired:
        fired.remove("still falling")
        fired[fired.index("overfitting")] = OVERFITTING_WHILE_FALLING
    return ", ".join(fired) if fired else "healthy"
