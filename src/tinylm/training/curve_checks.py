"""The healthy-curve checks a training session says as events (metrics.jsonl, console): the first loss against a
uniform guess, the unigram entropy reached in time, loss spikes, the val loss above its best. The rules over a whole
finished run are :mod:`tinylm.analysis.health`'s.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Collection

from ..analysis.health import VAL_ABOVE_BEST

INIT_TOLERANCE = 0.10  # a fresh model's loss is within 10% of ln(vocab): it predicts every token about equally
UNIGRAM_TOLERANCE = 0.10  # val loss <= 1.1 x the unigram entropy: the model has learned the token frequencies
UNIGRAM_DEADLINE = 500  # steps by which a healthy run gets there ("a few hundred")
Event = dict  # {"event": name, "message": one line for people, **numbers named apart from the metrics'}


class CurveChecks:
    """The healthy-curve checks of one training session, each said as an event (metrics.jsonl, console).

    * ``initial_loss`` (step 0): within 10% of ln(vocab), the loss of a uniform guess, or the
      initialization is off.
    * ``unigram_entropy`` (evaluations, once): the val loss gets within 10% of the unigram entropy of
      the training tokens (meta.json's, what a model that ignores the context reaches) within
      :data:`UNIGRAM_DEADLINE` steps; said when it does, or at the first evaluation past the deadline.
    * ``overfitting`` (evaluations, once): the val loss more than :data:`~tinylm.analysis.health.VAL_ABOVE_BEST`
      above its best while the train loss (median of the last 5 logged) fell since that best evaluation.
    * ``loss_spike`` (every step): the train loss above ``spike_factor`` x the median of the last 50.

    ``said``: the once-only events earlier sessions of the run logged (a resumed run does not repeat them).
    """

    def __init__(self, vocab_size: int, unigram_entropy: float | None, spike_factor: float,
                 said: Collection[str] = ()):
        self.vocab_size, self.entropy, self.spike_factor = vocab_size, unigram_entropy, spike_factor
        self.unigram_said = unigram_entropy is None or "unigram_entropy" in said
        self.overfitting_said = "overfitting" in said
        self.best: tuple[float, float | None, int] | None = None  # (val loss, train loss, step) of the best evaluation
        self.recent: list[float] = []  # the last train losses

    def initial(self, loss: float) -> list[Event]:
        expected = math.log(self.vocab_size)
        ok = abs(loss - expected) <= INIT_TOLERANCE * expected
        message = (f"initial loss {loss:.4f}, within 10% of ln(vocab) = {expected:.4f}: a healthy start" if ok else
                   f"initial loss {loss:.4f} is not within 10% of ln(vocab) = {expected:.4f}: the initial predictions "
                   f"are far from uniform; check the initialization (output scale) and the data")
        return [{"event": "initial_loss", "message": message, "ok": ok, "initial_loss": loss}]

    def val(self, step: int, val_loss: float) -> list[Event]:
        return self._unigram(step, val_loss) + self._overfitting(step, val_loss)

    def _overfitting(self, step: int, val_loss: float) -> list[Event]:
        train = statistics.median(self.recent[-5:]) if self.recent else None
        if self.best is None or val_loss < self.best[0]:
            self.best = (val_loss, train, step)
            return []
        best, best_train, best_step = self.best
        rise = val_loss / best - 1
        if self.overfitting_said or train is None or best_train is None or rise <= VAL_ABOVE_BEST \
                or train >= best_train:
            return []
        self.overfitting_said = True
        message = (f"val loss {val_loss:.4f} is {rise:.1%} above its best {best:.4f} (step {best_step}) while the "
                   f"train loss fell {best_train:.4f} -> {train:.4f}: overfitting, the model learns the training "
                   f"text rather than the language; more data (a larger corpus), dropout (--model.dropout 0.1), or "
                   f"the best checkpoint (--checkpoint best) instead of the last")
        return [{"event": "overfitting", "message": message, "ok": False, "best_val_loss": best,
                 "best_step": best_step}]

    def _unigram(self, step: int, val_loss: float) -> list[Event]:
        if self.unigram_said:
            return []
        h = self.entropy
        if val_loss <= (1 + UNIGRAM_TOLERANCE) * h:
            ok, message = True, (f"val loss {val_loss:.4f} is at or below 1.1 x the unigram entropy {h:.4f} "
                                 f"nats/token at step {step}: the token frequencies are learned")
        elif step >= UNIGRAM_DEADLINE:
            ok, message = False, (f"val loss {val_loss:.4f} is still above 1.1 x the unigram entropy {h:.4f} "
                                  f"nats/token at step {step} (a healthy run gets there within {UNIGRAM_DEADLINE}); "
                                  f"check the learning rate (tinylm lr-find) and the data")
        else:
            return []
        self.unigram_said = True
        return [{"event": "unigram_entropy", "message": message, "ok": ok, "unigram_entropy": h}]

    def train(self, loss: float) -> list[Event]:
        events, k = [], self.spike_factor
        if k and len(self.recent) >= 20:
            median = sorted(self.recent)[len(self.recent) // 2]
            if loss > k * median:
                events.append({"event": "loss_spike", "message": f"loss spike {loss:.4f} > {k} x running median "
                               f"{median:.4f}", "loss": loss, "median": median})
        self.recent = [*self.recent, loss][-50:]
        return events
