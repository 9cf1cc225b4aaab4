"""Logits processors: pure functions ``(logits (B, V), ids (B, L)) -> logits (B, V)`` that shape the next-token choice.

:class:`Temperature`, :class:`TopK`, :class:`TopP`, :class:`MinP`, :class:`RepetitionPenalty`,
:class:`FrequencyPenalty`, :class:`PresencePenalty`, :class:`NoRepeatNGram`. Each checks its
parameter when it is made (the ranges are ``strategies.SETTINGS``, the ones a config is checked
against); :func:`apply_processors` applies a list in order, and :func:`build_processors` makes the
list a :class:`~tinylm.config.SampleConfig` asks for. ``ids`` holds every token so far, prompt
included, with :data:`PAD` where a row is left-padded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import SampleConfig
from .strategies import check_setting, in_use

PAD = -1  # the id processors see where a row is left-padded; never a real token

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B, V), ids (B, L)) -> (B, V)


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


@dataclass(frozen=True)
class Temperature:
    """logits / t: t < 1 sharpens the distribution, t > 1 flattens it.

    ``softmax([2, 0] / 0.5) = [0.98, 0.02]``, ``softmax([2, 0] / 2) = [0.73, 0.27]``.
    """
    t: float

    def __post_init__(self):
        check_setting("temperature", self.t, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits / self.t


@dataclass(frozen=True)
class TopK:
    """Keep the k most likely tokens (Fan et al., 2018); see :func:`top_k_filter`."""
    k: int

    def __post_init__(self):
        check_setting("top_k", self.k, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return top_k_filter(logits, self.k)


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling; see :func:`top_p_filter`."""
    p: float

    def __post_init__(self):
        check_setting("top_p", self.p, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return top_p_filter(logits, self.p)


@dataclass(frozen=True)
class MinP:
    """Keep tokens at least p x as likely as the most likely one; see :func:`min_p_filter`."""
    p: float

    def __post_init__(self):
        check_setting("min_p", self.p, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return min_p_filter(logits, self.p)


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL's penalty (Keskar et al., 2019) on every token already in the row, prompt included.

    A positive logit is divided by r and a negative one multiplied by r, so for r > 1 a seen
    token always becomes less likely: logits [2, -1] with token 0 and 1 seen, r = 2 -> [1, -2].
    """
    r: float

    def __post_init__(self):
        check_setting("repetition_penalty", self.r, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        seen = token_counts(ids, logits.size(-1)) > 0  # (B, V)
        penalized = torch.where(logits > 0, logits / self.r, logits * self.r)
        return torch.where(seen, penalized, logits)


@dataclass(frozen=True)
class FrequencyPenalty:
    """logit -= f x (times the token occurred in the row so far); OpenAI's frequency penalty."""
    f: float

    def __post_init__(self):
        check_setting("frequency_penalty", self.f, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits - self.f * token_counts(ids, logits.size(-1), logits.dtype)


@dataclass(frozen=True)
class PresencePenalty:
    """logit -= p for every token that occurred in the row so far; OpenAI's presence penalty."""
    p: float

    def __post_init__(self):
        check_setting("presence_penalty", self.p, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits - self.p * (token_counts(ids, logits.size(-1), logits.dtype) > 0).to(logits.dtype)


@dataclass(frozen=True)
class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram of the row; see :func:`banned_by_ngrams`."""
    n: int

    def __post_init__(self):
        check_setting("no_repeat_ngram", self.n, allow_off=False)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(banned_by_ngrams(ids, self.n, logits.size(-1)), float("-inf"))


# [sample] setting -> its processor, in the order they apply
PROCESSORS: dict[str, Callable[..., Processor]] = {
    "repetition_penalty": RepetitionPenalty, "frequency_penalty": FrequencyPenalty,
    "presence_penalty": PresencePenalty, "no_repeat_ngram": NoRepeatNGram,
    "temperature": Temperature, "top_k": TopK, "top_p": TopP, "min_p": MinP,
}


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

    ``build_processors(SampleConfig(strategy="top_p", top_p=0.9))`` -> ``[Temperature(t=0.8), TopP(p=0.9)]``
    """
    used = in_use(s)
    return [make(getattr(s, key)) for key, make in PROCESSORS.items() if key in used]
