"""Logits processors: pure functions ``(logits (B, V), ids (B, L)) -> logits (B, V)`` that shape the next-token choice.

One table, :data:`RULES`, maps each [sample] setting (repetition, frequency and presence penalties, no-repeat
n-grams, temperature, top-k, top-p, min-p) to what it does; a :class:`Processor` is one setting at one value, checked
when it is made (the ranges are ``strategies.SETTINGS``, the ones a config is checked against).
:func:`apply_processors` applies a list in order, and :func:`build_processors` makes the list a
:class:`~tinylm.config.SampleConfig` asks for. ``ids`` holds every token so far, prompt
included, with :data:`PAD` where a row is left-padded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import SampleConfig
from .strategies import check_setting, in_use

PAD = -1  # the id processors see where a row is left-padded; never a real token


def token_counts(ids: torch.Tensor, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """How often each token occurs in each row: (B, L) ids -> (B, V); PAD is not counted.

    ``token_counts(torch.tensor([[PAD, 2, 2, 0]]), 3) -> [[1., 0., 2.]]``
    """
    real = (ids >= 0).to(dtype)  # (B, L)
    counts = torch.zeros(ids.size(0), vocab_size, dtype=dtype, device=ids.device)
    return counts.scatter_add_(1, ids.clamp(min=0), real)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row, set the rest to -inf (k = 0 or >= vocab: unchanged)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the fewest most likely tokens whose probabilities sum to >= p (Holtzman et al., 2020).

    Probabilities [0.5, 0.3, 0.2] with p = 0.7 keep the first two (0.5 < 0.7 <= 0.8). p >= 1
    returns the logits untouched, so ``top_p = 1`` is exactly plain sampling.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # (B, V) mass of the strictly more likely tokens
    drop_sorted = before >= p  # the most likely token always stays: nothing comes before it
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Drop tokens less likely than p x the most likely token (Nguyen et al., 2024).

    Probabilities [0.6, 0.3, 0.1] with p = 0.2: the bar is 0.12, so 0.1 goes. Unlike top-p, the
    bar follows the model's confidence: a sure model keeps few tokens, an unsure one many.
    """
    if p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)  # (B, V)
    bar = p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < bar, float("-inf"))


def banned_by_ngrams(ids: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """Tokens that would complete an n-gram already in the row: (B, L) ids -> (B, V) bool.

    ids [[1, 2, 3, 1, 2]], n = 3: the last two tokens (1, 2) began (1, 2, 3) before, so 3 is banned.
    """
    B, L = ids.shape
    banned = torch.zeros(B, vocab_size, dtype=torch.long, device=ids.device)
    if n == 1:
        return token_counts(ids, vocab_size) > 0
    if n > L:
        return banned.bool()
    grams = ids.unfold(1, n, 1)  # (B, L-n+1, n) every n-gram so far
    tail = ids[:, L - n + 1:]  # (B, n-1) the next token would complete an n-gram starting with these
    hit = (grams[:, :, :-1] == tail[:, None, :]).all(-1) & (grams >= 0).all(-1)  # (B, L-n+1)
    # scatter_add, not scatter: several n-grams may name the same token, and any hit must win
    banned.scatter_add_(1, grams[:, :, -1].clamp(min=0), hit.long())
    return banned > 0


def repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, r: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019) on every token already in the row, prompt included.

    A positive logit is divided by r and a negative one multiplied by r, so for r > 1 a seen
    token always becomes less likely: logits [2, -1] with token 0 and 1 seen, r = 2 -> [1, -2].
    """
    seen = token_counts(ids, logits.size(-1)) > 0  # (B, V)
    return torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)


def frequency_penalty(logits: torch.Tensor, ids: torch.Tensor, f: float) -> torch.Tensor:
    """logit -= f x (times the token occurred in the row so far); OpenAI's frequency penalty."""
    return logits - f * token_counts(ids, logits.size(-1), logits.dtype)


def presence_penalty(logits: torch.Tensor, ids: torch.Tensor, p: float) -> torch.Tensor:
    """logit -= p for every token that occurred in the row so far; OpenAI's presence penalty."""
    return logits - p * (token_counts(ids, logits.size(-1), logits.dtype) > 0).to(logits.dtype)


def no_repeat_ngram(logits: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid any token that would repeat an n-gram of the row; see :func:`banned_by_ngrams`."""
    return logits.masked_fill(banned_by_ngrams(ids, n, logits.size(-1)), float("-inf"))


def temperature(logits: torch.Tensor, ids: torch.Tensor, t: float) -> torch.Tensor:
    """logits / t: t < 1 sharpens the distribution, t > 1 flattens it.

    ``softmax([2, 0] / 0.5) = [0.98, 0.02]``, ``softmax([2, 0] / 2) = [0.73, 0.27]``.
    """
    return logits / t


# [sample] setting -> what it does to (logits, ids), in the order the settings apply: penalties on the raw logits,
# then temperature, then the filters (top-k: Fan et al., 2018; nucleus; min-p)
RULES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "repetition_penalty": repetition_penalty, "frequency_penalty": frequency_penalty,
    "presence_penalty": presence_penalty, "no_repeat_ngram": no_repeat_ngram, "temperature": temperature,
    "top_k": lambda logits, ids, k: top_k_filter(logits, k), "top_p": lambda logits, ids, p: top_p_filter(logits, p),
    "min_p": lambda logits, ids, p: min_p_filter(logits, p),
}


@dataclass(frozen=True)
class Processor:
    """One [sample] setting at one value, as a logits processor: ``Processor("top_k", 50)(logits, ids)``.

    The value is checked when it is made, against the range a config is checked against (``strategies.SETTINGS``).
    """
    setting: str
    value: float

    def __post_init__(self):
        if self.setting not in RULES:
            raise ValueError(f"no logits processor for {self.setting!r}; the settings are {', '.join(RULES)}")
        check_setting(self.setting, self.value, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return RULES[self.setting](logits, ids, self.value)


def apply_processors(logits: torch.Tensor, ids: torch.Tensor, processors: Sequence[Processor]) -> torch.Tensor:
    """Run logits (B, V) through each processor in turn."""
    for proc in processors:
        logits = proc(logits, ids)
    return logits


def build_processors(s: SampleConfig) -> list[Processor]:
    """The processors ``s`` asks for, in the order they apply: those of the settings its strategy
    reads that are on (``strategies.in_use``).

    Penalties first, on the model's raw logits, for every strategy. Then, for the sampling
    strategies only, temperature and the filters: ``sample`` uses every filter that is on,
    ``top_k`` / ``top_p`` / ``min_p`` use just their own. Greedy, beam and contrastive search take
    no temperature or filters: those never change which token is most likely.

    ``build_processors(SampleConfig(strategy="top_p", top_p=0.9))`` -> ``[Processor("temperature", 0.8),
    Processor("top_p", 0.9)]``
    """
    used = in_use(s)
    return [Processor(key, getattr(s, key)) for key in RULES if key in used]
