"""Decoding: from next-token logits to text, over a KV cache.

Three layers, each usable on its own:

1. **Logits processors**, pure functions ``(logits (B, V), ids (B, L)) -> logits (B, V)``:
   :class:`Temperature`, :class:`TopK`, :class:`TopP`, :class:`MinP`, :class:`RepetitionPenalty`,
   :class:`FrequencyPenalty`, :class:`PresencePenalty`, :class:`NoRepeatNGram`. Each checks its
   parameter when it is made; :func:`apply_processors` applies a list in order, and
   :func:`build_processors` makes the list a :class:`~tinylm.config.SampleConfig` asks for.
   ``ids`` holds every token so far, prompt included, with :data:`PAD` where a row is left-padded.
2. **Strategies**: :func:`generate` continues a batch of token-id prompts by greedy decoding,
   sampling (``sample``, ``top_k``, ``top_p``, ``min_p``), beam search or contrastive search. Each
   prompt is read once into the model's KV cache, then each step costs one position per row.
3. **Text**: :func:`generate_text` (encode, generate, decode, stream, stop strings),
   :func:`sample_text` (one sample as a config asks; what the trainer writes), and the measurements of the decode
   report: :func:`token_scores`, :func:`distinct_n`, :func:`repetition_rate`.

Reproducible: batch row r samples with its own ``torch.Generator`` seeded ``seed + r``, so sample
i of ``num_samples = 5`` is exactly what a lone call with ``seed + i`` gives.
"""
from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .config import Config, SampleConfig, validate
from .errors import TinyLMError
from .model import GPT
from .tokenizer import Tokenizer

PAD = -1  # the id processors see where a row is left-padded; never a real token
SAMPLING = ("sample", "top_k", "top_p", "min_p")  # strategies that draw from a distribution

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B, V), ids (B, L)) -> (B, V)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise TinyLMError(msg)


# --------------------------------------------------------------------------- logits processors

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
    if L < n:
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
        _need(self.t > 0 and math.isfinite(self.t), f"temperature {self.t} must be > 0 (--temperature)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits / self.t


@dataclass(frozen=True)
class TopK:
    """Keep the k most likely tokens (Fan et al., 2018); see :func:`top_k_filter`."""
    k: int

    def __post_init__(self):
        _need(self.k >= 1, f"top_k {self.k} must be >= 1 (--top-k; 0 in a config turns it off)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return top_k_filter(logits, self.k)


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling; see :func:`top_p_filter`."""
    p: float

    def __post_init__(self):
        _need(0 < self.p <= 1, f"top_p {self.p} must be in (0, 1] (--top-p; 1 turns it off)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return top_p_filter(logits, self.p)


@dataclass(frozen=True)
class MinP:
    """Keep tokens at least p x as likely as the most likely one; see :func:`min_p_filter`."""
    p: float

    def __post_init__(self):
        _need(0 <= self.p < 1, f"min_p {self.p} must be in [0, 1) (--min-p; 0 turns it off)")

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
        _need(self.r > 0 and math.isfinite(self.r),
              f"repetition_penalty {self.r} must be > 0 (--repetition-penalty; 1 turns it off, > 1 penalizes)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        seen = token_counts(ids, logits.size(-1)) > 0  # (B, V)
        penalized = torch.where(logits > 0, logits / self.r, logits * self.r)
        return torch.where(seen, penalized, logits)


@dataclass(frozen=True)
class FrequencyPenalty:
    """logit -= f x (times the token occurred in the row so far); OpenAI's frequency penalty."""
    f: float

    def __post_init__(self):
        _need(math.isfinite(self.f), f"frequency_penalty {self.f} must be a finite number (0 turns it off)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits - self.f * token_counts(ids, logits.size(-1), logits.dtype)


@dataclass(frozen=True)
class PresencePenalty:
    """logit -= p for every token that occurred in the row so far; OpenAI's presence penalty."""
    p: float

    def __post_init__(self):
        _need(math.isfinite(self.p), f"presence_penalty {self.p} must be a finite number (0 turns it off)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits - self.p * (token_counts(ids, logits.size(-1), logits.dtype) > 0).to(logits.dtype)


@dataclass(frozen=True)
class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram of the row; see :func:`banned_by_ngrams`."""
    n: int

    def __post_init__(self):
        _need(self.n >= 1, f"no_repeat_ngram {self.n} must be >= 1 (0 in a config turns it off)")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(banned_by_ngrams(ids, self.n, logits.size(-1)), float("-inf"))


def apply_processors(logits: torch.Tensor, ids: torch.Tensor, processors: Sequence[Processor]) -> torch.Tensor:
    """Run logits (B, V) through each processor in turn."""
    for proc in processors:
        logits = proc(logits, ids)
    return logits


def build_processors(s: SampleConfig) -> list[Processor]:
    """The processors ``s`` asks for, in the order they apply.

    Penalties first, on the model's raw logits, for every strategy. Then, for the sampling
    strategies only, temperature and the filters: ``sample`` uses every filter that is on,
    ``top_k`` / ``top_p`` / ``min_p`` use just their own. Greedy, beam and contrastive search take
    no temperature or filters: those never change which token is most likely.

    ``build_processors(SampleConfig(strategy="top_p", top_p=0.9))`` -> ``[Temperature(t=0.8), TopP(p=0.9)]``
    """
    procs: list[Processor] = []
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(s.repetition_penalty))
    if s.frequency_penalty:
        procs.append(FrequencyPenalty(s.frequency_penalty))
    if s.presence_penalty:
        procs.append(PresencePenalty(s.presence_penalty))
    if s.no_repeat_ngram:
        procs.append(NoRepeatNGram(s.no_repeat_ngram))
    if s.strategy in SAMPLING:
        procs.append(Temperature(s.temperature))
        if s.top_k and s.strategy in ("sample", "top_k"):
            procs.append(TopK(s.top_k))
        if s.top_p < 1.0 and s.strategy in ("sample", "top_p"):
            procs.append(TopP(s.top_p))
        if s.min_p > 0.0 and s.strategy in ("sample", "min_p"):
            procs.append(MinP(s.min_p))
    return procs


# --------------------------------------------------------------------------- the decoding state

@dataclass
class Completion:
    """One continuation of one prompt."""
    tokens: list[int]
    """Generated ids: no prompt, no end-of-text token."""
    stop_reason: str
    """length (max_new_tokens) | eot (end-of-text token) | stop (a stop string) | context (overflow = stop)."""
    score: float | None = None
    """Beam search: sum of the tokens' log-probabilities / length ** length_penalty."""
    text: str | None = None
    """:func:`generate_text` only: the decoded tokens, cut before the stop string if one ended them."""


def _left_pad(rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token lists of different lengths -> idx (B, T) right-aligned, and valid (B, T) (None if all full).

    ``_left_pad([[5, 6], [7]])`` -> idx [[5, 6], [0, 7]], valid [[True, True], [False, True]]
    """
    T = max(len(r) for r in rows)
    idx = torch.tensor([[0] * (T - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    if all(len(r) == T for r in rows):
        return idx, None
    valid = torch.tensor([[False] * (T - len(r)) + [True] * len(r) for r in rows], device=device)
    return idx, valid


class _Rows:
    """The rows being generated: their tokens, the model's KV cache, the ids processors see.

    The cache holds at most block_size positions. When it is full the window slides: a new cache
    re-reads the newest ``keep`` tokens (3/4 of the context) of each row whose context is used
    up, so its next re-read comes block_size/4 tokens later. nanoGPT instead re-reads the whole
    cropped context at every token; sliding by a quarter keeps at least 3/4 of the context and
    costs one prefill per block_size/4 tokens. Rows of a batch share the cache's length, so a
    left-padded row can run out of slots before its own context is used up: it then re-reads
    exactly the window it had, and goes on as it would alone.
    """

    def __init__(self, model: GPT, prompts: Sequence[Sequence[int]]):
        self.model = model
        self.block = model.cfg.block_size
        self.keep = max(1, self.block - max(1, self.block // 4))
        self.device = model.wte.weight.device
        self.tokens = [list(p) for p in prompts]  # every row's tokens so far (prompt + generated)
        idx, valid = _left_pad(self.tokens, self.device)
        self.ids = idx if valid is None else idx.masked_fill(~valid, PAD)  # (B, L) for the processors
        self.cache = None

    def read(self, n: int | list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Read each row's newest n (or n[row]) tokens into a new cache (the prefill; each slide).

        Returns the next-token logits (B, V) in fp32, the hidden states (B, T, C) and which of
        the T slots are real (None: all).
        """
        sizes = n if isinstance(n, list) else [n] * len(self.tokens)
        idx, valid = _left_pad([t[-k:] for t, k in zip(self.tokens, sizes)], self.device)
        self.cache = self.model.new_cache(idx.size(0))
        logits, _ = self.model(idx, cache=self.cache, valid=valid)  # (B, 1, V)
        return logits[:, -1].float(), self.cache.hidden, valid

    def append(self, nxt: torch.Tensor, as_list: list[int]) -> None:
        """Add one token to every row: nxt (B,), and the same as Python ints."""
        for row, t in zip(self.tokens, as_list):
            row.append(t)
        self.ids = torch.cat((self.ids, nxt[:, None]), dim=1)  # (B, L+1)

    def in_cache(self) -> list[int]:
        """Per row: the real (unpadded) tokens its cache holds."""
        cache = self.cache
        return cache.n_real.tolist() if cache.n_real is not None else [cache.length] * cache.batch

    def used_up(self, appended: int, room: int, in_cache: list[int] | None = None) -> list[bool]:
        """Per row: can its context not take its ``appended`` tokens plus ``room`` more?"""
        return [n + appended + room > self.block for n in (in_cache or self.in_cache())]

    def slide(self, appended: int, room: int, keep: int):
        """Re-read into a new cache: rows whose context is used up keep their newest ``keep``
        tokens; the others re-read their current window plus the ``appended`` tokens."""
        in_cache = self.in_cache()
        full = self.used_up(appended, room, in_cache)
        return self.read([keep if f else n + appended for n, f in zip(in_cache, full)])

    def advance(self, nxt: torch.Tensor) -> torch.Tensor:
        """Feed the tokens (B,) just appended; returns the next logits (B, V)."""
        if self.cache.full:
            return self.slide(appended=1, room=0, keep=self.keep)[0]
        logits = self.model.decode(nxt[:, None], self.cache)  # (B, 1, V)
        return logits[:, -1].float()

    def select(self, rows: list[int]) -> None:
        """New row i = old row rows[i] (beam search reorders its beams so)."""
        index = torch.tensor(rows, device=self.device)
        self.cache.select(index)
        self.ids = self.ids.index_select(0, index)
        self.tokens = [list(self.tokens[r]) for r in rows]


class _Stops:
    """When a row ends: its end-of-text token, or a stop string in its generated text."""

    def __init__(self, eot_id: int | None, stop_strings: Sequence[str], decode: Callable[[list[int]], str] | None):
        self.eot_id = eot_id
        self.strings = [s for s in stop_strings if s]
        _need(not self.strings or decode is not None,
              "stop strings need the tokenizer's decode function (generate(..., decode=tok.decode))")
        self.decode = decode
        # a stop string of m characters spans at most 4m tokens (a byte-level token can be 1 byte)
        self.tail = 4 * max((len(s) for s in self.strings), default=0) + 1

    def push(self, tokens: list[int], t: int) -> str | None:
        """Append t to a row's generated tokens unless it is end-of-text; say why the row ends, if it does."""
        if t == self.eot_id:
            return "eot"
        tokens.append(t)
        if self.strings:
            text = self.decode(tokens[-self.tail:])
            if any(s in text for s in self.strings):
                return "stop"
        return None


# --------------------------------------------------------------------------- strategies

@torch.inference_mode()
def generate(model: GPT, prompts: Sequence[Sequence[int]], s: SampleConfig, *, seed: int = 0,
             eot_id: int | None = None, stop_strings: Sequence[str] = (),
             decode: Callable[[list[int]], str] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[Completion]]:
    """Continue each prompt (a list of token ids) with the strategy ``s.strategy``.

    Returns one list per prompt: ``s.num_samples`` completions for the sampling strategies, the
    ``s.num_samples`` best beams for beam search, and one for greedy and contrastive search (they
    are deterministic). A row stops after ``s.max_new_tokens`` tokens, at ``eot_id``, or once its
    generated text, read with ``decode``, contains one of ``stop_strings``.

        generate(model, [[1, 2, 3]], SampleConfig(strategy="greedy", max_new_tokens=4))
        # -> [[Completion(tokens=[7, 7, 1, 0], stop_reason='length')]]

    Rows are prompt-major (row r = prompt r // n, sample r % n) and row r samples with seed + r.
    ``on_token(row, token)`` sees each token as it is chosen, except the one that ends a row (not
    in beam search, whose beams change until the end). Prompts of different lengths are left-padded in one batch.
    """
    validate(Config(sample=s))  # the same checks, and messages, as a config file gets
    _need(len(prompts) > 0, "generate needs at least one prompt")
    V, block = model.cfg.vocab_size, model.cfg.block_size
    _need(s.strategy != "contrastive" or block >= 2, "contrastive search needs a context of at least 2 tokens")
    for i, p in enumerate(prompts):
        _need(len(p) > 0, f"prompt {i} is empty; give at least one token (e.g. the end-of-text token)")
        _need(all(0 <= t < V for t in p), f"prompt {i} has token ids outside the model's vocabulary [0, {V})")
        _need(s.overflow == "slide" or len(p) <= block,
              f"prompt {i} has {len(p)} tokens but the context is {block}: shorten it, or use "
              f"--sample.overflow slide to keep only its newest {block} tokens")
    stops = _Stops(eot_id, stop_strings, decode)
    procs = build_processors(s)
    was_training = model.training
    model.eval()
    try:
        if s.strategy == "beam":
            return _beam_search(_Rows(model, prompts), s, procs, stops)
        n = s.num_samples if s.strategy in SAMPLING else 1
        rows = _Rows(model, [p for p in prompts for _ in range(n)])
        if s.strategy == "contrastive":
            flat = _contrastive(rows, s, procs, stops, on_token)
        elif s.strategy == "greedy" or s.strategy in SAMPLING:
            flat = _sample(rows, s, procs, stops, on_token, seed)
        else:
            raise TinyLMError(f"unknown strategy {s.strategy!r}; use one of greedy, {', '.join(SAMPLING)}, "
                              f"beam, contrastive")
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
    finally:
        model.train(was_training)


def _sample(rows: _Rows, s: SampleConfig, procs, stops: _Stops, on_token, seed: int) -> list[Completion]:
    """Greedy (argmax) or sampling from the processed distribution, one token per row per step."""
    B = len(rows.tokens)
    gens = [torch.Generator(device=rows.device).manual_seed(seed + r) for r in range(B)]
    new: list[list[int]] = [[] for _ in range(B)]
    ended: list[str | None] = [None] * B
    logits = rows.read(rows.block)[0]  # (B, V)
    for step in range(s.max_new_tokens):
        scores = apply_processors(logits, rows.ids, procs)  # (B, V)
        if s.strategy == "greedy":
            nxt = scores.argmax(dim=-1)  # (B,)
        else:
            probs = scores.softmax(dim=-1)
            # one generator per row: row r draws the same numbers whatever else is in the batch
            nxt = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gens)])
        nxt_list = nxt.tolist()
        for r, t in enumerate(nxt_list):
            if ended[r] is None:
                ended[r] = stops.push(new[r], t)
                if on_token is not None and ended[r] is None:  # an ending token may hold the stop string
                    on_token(r, t)
        if all(e is not None for e in ended) or step == s.max_new_tokens - 1:
            break
        rows.append(nxt, nxt_list)
        if rows.cache.full and s.overflow == "stop":
            ended = [e or ("context" if f else None) for e, f in zip(ended, rows.used_up(appended=1, room=0))]
            if all(e is not None for e in ended):
                break
        logits = rows.advance(nxt)
    return [Completion(new[r], ended[r] or "length") for r in range(B)]


def _contrastive(rows: _Rows, s: SampleConfig, procs, stops: _Stops, on_token) -> list[Completion]:
    """Contrastive search (Su et al., 2022): among the k most likely tokens, take the one that
    maximizes (1 - alpha) x probability - alpha x (max cosine similarity of its hidden state to
    those of the context). The second term punishes a token whose representation repeats one
    already seen, the mark of a loop. alpha = 0 is greedy decoding.
    """
    B, k, alpha = len(rows.tokens), s.contrastive_k, s.contrastive_alpha
    new: list[list[int]] = [[] for _ in range(B)]
    ended: list[str | None] = [None] * B
    logits, context, valid = rows.read(rows.block)  # (B, V), (B, T, C), (B, T) or None
    valid = torch.ones(context.shape[:2], dtype=torch.bool, device=rows.device) if valid is None else valid
    arange = torch.arange(B, device=rows.device)
    for step in range(s.max_new_tokens):
        probs = apply_processors(logits, rows.ids, procs).softmax(dim=-1)  # (B, V)
        p_top, cand = probs.topk(min(k, probs.size(-1)), dim=-1)  # (B, k) each, most likely first
        kk = cand.size(1)
        if rows.cache.full:
            if s.overflow == "stop":
                ended = [e or ("context" if f else None) for e, f in zip(ended, rows.used_up(appended=0, room=1))]
                if all(e is not None for e in ended):
                    break
            # slide to keep - 1 tokens, so that with the candidate the window matches greedy's
            _, context, valid = rows.slide(appended=0, room=1, keep=max(1, rows.keep - 1))
            valid = torch.ones(context.shape[:2], dtype=torch.bool, device=rows.device) if valid is None else valid
        # run every candidate one step: row b's cache repeated k times (rows b*k .. b*k+k-1)
        rows.cache.select(arange.repeat_interleave(kk))
        logits_c = rows.model.decode(cand.reshape(-1, 1), rows.cache)  # (B*k, 1, V)
        h_c = rows.cache.hidden.view(B, kk, -1)  # (B, k, C)
        sim = F.normalize(h_c, dim=-1) @ F.normalize(context, dim=-1).transpose(1, 2)  # (B, k, T) cosines
        sim = sim.masked_fill(~valid[:, None, :], float("-inf"))  # padding is not context
        score = (1 - alpha) * p_top - alpha * sim.max(dim=-1).values.float()  # (B, k)
        best = score.argmax(dim=-1)  # (B,) index into each row's candidates
        chosen = arange * kk + best  # (B,) rows of the expanded batch to keep
        rows.cache.select(chosen)
        logits = logits_c[chosen, -1].float()  # (B, V)
        context = torch.cat((context, h_c[arange, best][:, None]), dim=1)  # (B, T+1, C)
        valid = torch.cat((valid, torch.ones(B, 1, dtype=torch.bool, device=rows.device)), dim=1)
        nxt = cand[arange, best]  # (B,)
        nxt_list = nxt.tolist()
        rows.append(nxt, nxt_list)
        for r, t in enumerate(nxt_list):
            if ended[r] is None:
                ended[r] = stops.push(new[r], t)
                if on_token is not None and ended[r] is None:  # an ending token may hold the stop string
                    on_token(r, t)
        if all(e is not None for e in ended):
            break
    return [Completion(new[r], ended[r] or "length") for r in range(B)]


def _beam_search(rows: _Rows, s: SampleConfig, procs, stops: _Stops) -> list[list[Completion]]:
    """Keep the num_beams most likely sequences (sum of log-probabilities) of each prompt.

    Each step extends every beam by every token and keeps the best 2 x W extensions: those that
    end (end-of-text, stop string) become finished hypotheses if they rank in the top W, the
    others fill the W beams. Finished hypotheses are ranked by sum / length ** length_penalty.
    A prompt is done when W hypotheses have ended (early_stopping) or, without early stopping,
    when no live beam can still beat the worst of them (Hugging Face's heuristic).
    """
    P, W, V, lp = len(rows.tokens), s.num_beams, rows.model.cfg.vocab_size, s.length_penalty
    neg_inf = float("-inf")
    logits = rows.read(rows.block)[0]  # (P, V)
    rows.select([p for p in range(P) for _ in range(W)])  # beam row p*W + j belongs to prompt p
    logits = logits.repeat_interleave(W, dim=0)  # (P*W, V)
    sums = [[0.0] + [neg_inf] * (W - 1) for _ in range(P)]  # all beams start equal: expand only one
    beams: list[list[int]] = [[] for _ in range(P * W)]  # generated tokens of each beam row
    finished: list[list[tuple[float, list[int], str]]] = [[] for _ in range(P)]  # (score, tokens, reason)
    done = [False] * P

    def norm(total: float, length: int) -> float:
        return total / (max(length, 1) ** lp)

    for step in range(s.max_new_tokens):
        logp = torch.log_softmax(apply_processors(logits, rows.ids, procs), dim=-1)  # (P*W, V)
        total = torch.tensor(sums, device=rows.device).view(-1, 1) + logp  # (P*W, V) score of each extension
        top, flat = total.view(P, W * V).topk(min(2 * W, W * V), dim=1)  # (P, 2W) best extensions per prompt
        src_rows, toks, new_sums, new_beams = [], [], [], []
        for p, (tops, flats) in enumerate(zip(top.tolist(), flat.tolist())):
            kept = 0
            for rank, (score, f) in enumerate(zip(tops, flats)):
                if done[p] or kept == W or score == neg_inf:
                    break
                src, t = p * W + f // V, f % V
                seq = list(beams[src])
                reason = stops.push(seq, t)
                if reason is None:
                    src_rows.append(src), toks.append(t), new_sums.append(score), new_beams.append(seq)
                    kept += 1
                elif rank < W:  # an ending counts only if it is among the W best (as in HF)
                    finished[p].append((norm(score, len(seq) + (reason == "eot")), seq, reason))
            while kept < W:  # prompt done, or too few live extensions: filler beams that never win
                src_rows.append(p * W), toks.append(0), new_sums.append(neg_inf), new_beams.append([])
                kept += 1
            if not done[p] and len(finished[p]) >= W:
                worst = sorted(h[0] for h in finished[p])[-W]  # the W-th best finished score
                best_live = max(new_sums[p * W:(p + 1) * W])
                done[p] = s.early_stopping or best_live == neg_inf or worst >= norm(best_live, step + 1)
        sums = [new_sums[p * W:(p + 1) * W] for p in range(P)]
        beams = new_beams
        if all(done) or step == s.max_new_tokens - 1:
            break
        rows.select(src_rows)
        nxt = torch.tensor(toks, device=rows.device)
        rows.append(nxt, toks)
        if rows.cache.full and s.overflow == "stop":
            used_up = rows.used_up(appended=1, room=0)
            for p in range(P):  # a prompt out of context: its live beams end here, as at max_new_tokens
                if not done[p] and used_up[p * W]:
                    finished[p] += [(norm(sums[p][j], len(beams[p * W + j])), beams[p * W + j], "context")
                                    for j in range(W) if sums[p][j] > neg_inf]
                    done[p] = True
            if all(done):
                break
        logits = rows.advance(nxt)
    out = []
    for p in range(P):
        hyps = list(finished[p])
        if not done[p]:
            hyps += [(norm(sums[p][j], len(beams[p * W + j])), beams[p * W + j], "length")
                     for j in range(W) if sums[p][j] > neg_inf]
        hyps.sort(key=lambda h: -h[0])
        out.append([Completion(tokens, reason, score) for score, tokens, reason in hyps[:s.num_samples]])
    return out


# --------------------------------------------------------------------------- text in, text out

def encode_prompt(tok: Tokenizer, prompt: str) -> list[int]:
    """Prompt text -> ids. An empty prompt starts from end-of-text (the document boundary the
    model saw in training) or, without one, from id 0 (a character tokenizer's lowest character,
    usually the newline)."""
    ids = tok.encode(prompt)
    if ids:
        return ids
    return [tok.eot_id if tok.eot_id is not None else 0]


# the value that turns each [sample] knob off (for beam and contrastive search: makes them greedy)
KNOB_OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "frequency_penalty": 0.0,
            "presence_penalty": 0.0, "no_repeat_ngram": 0, "num_beams": 1, "contrastive_k": 1,
            "contrastive_alpha": 0.0}


def describe_settings(s: SampleConfig) -> list[str]:
    """The settings that matter for ``s.strategy``, those that are on: ``["temperature 0.8", "top_p 0.9"]``
    for top_p sampling."""
    keys = {"greedy": [], "sample": ["temperature", "top_k", "top_p", "min_p"], "top_k": ["temperature", "top_k"],
            "top_p": ["temperature", "top_p"], "min_p": ["temperature", "min_p"],
            "beam": ["num_beams", "length_penalty", "early_stopping"],
            "contrastive": ["contrastive_k", "contrastive_alpha"]}[s.strategy]
    keys += ["repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram"]
    return [f"{k} {getattr(s, k)}" for k in keys if k not in KNOB_OFF or getattr(s, k) != KNOB_OFF[k]]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the first stop string: ``cut_at_stop("to be\\n\\nor", ["\\n\\n"]) -> "to be"``."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(cuts)] if cuts else text


class _TextStream:
    """Turns one row's tokens into text pieces as they arrive, for printing as they come.

    Decodes each new token alone (work per token stays constant however long the text grows):
    its bytes go through an incremental UTF-8 decoder, which holds back an unfinished character
    (a byte-level token can be part of one) until the rest arrives. Also holds back the last m-1
    characters, m the longest stop string, so no part of a stop string is ever shown.
    """

    def __init__(self, tok: Tokenizer, emit: Callable[[str], None], hold: int):
        self.tok, self.emit, self.hold = tok, emit, hold
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded text not emitted yet
        self.sent = 0  # characters already emitted

    def push(self, t: int) -> None:
        self.pending += self.utf8.decode(self.tok.decode_bytes([t]))
        safe = len(self.pending) - self.hold
        if safe > 0:
            self.emit(self.pending[:safe])
            self.pending, self.sent = self.pending[safe:], self.sent + safe

    def finish(self, final_text: str) -> None:
        if len(final_text) > self.sent:
            self.emit(final_text[self.sent:])
        self.sent = len(final_text)


def generate_text(model: GPT, tok: Tokenizer, prompts: Sequence[str], s: SampleConfig, *, seed: int = 0,
                  stop_strings: Sequence[str] = (),
                  on_text: Callable[[int, str], None] | None = None) -> list[list[Completion]]:
    """Text in, text out: encode each prompt, :func:`generate`, decode into ``Completion.text``.

    Stops at the tokenizer's end-of-text token when it has one. ``on_text(row, piece)`` streams
    each row's text as it is generated (never the stop string itself); beam search, whose beams
    change until the end, streams each finished text once.

        generate_text(model, tok, ["ROMEO:"], SampleConfig(strategy="top_p", top_p=0.9), seed=1)[0][0].text
    """
    ids = [encode_prompt(tok, p) for p in prompts]
    hold = max((len(x) for x in stop_strings if x), default=1) - 1
    n = s.num_samples if s.strategy in SAMPLING else 1
    streams = None
    if on_text is not None and s.strategy != "beam":
        streams = [_TextStream(tok, (lambda piece, r=r: on_text(r, piece)), hold)
                   for r in range(len(prompts) * n)]
    results = generate(model, ids, s, seed=seed, eot_id=tok.eot_id, stop_strings=stop_strings, decode=tok.decode,
                       on_token=(lambda r, t: streams[r].push(t)) if streams else None)
    row = 0
    for per_prompt in results:
        for c in per_prompt:
            c.text = tok.decode(c.tokens)
            if c.stop_reason == "stop":
                c.text = cut_at_stop(c.text, stop_strings)
            if streams:
                streams[row].finish(c.text)
            elif on_text is not None:
                on_text(row, c.text)
            row += 1
    return results


def sample_text(model: GPT, tok: Tokenizer, s: SampleConfig, *, seed: int) -> str:
    """``s.prompt`` + one continuation by ``s``'s strategy and processors, reproducible for a seed.

    What the trainer writes to samples.md at each evaluation, and what ``tinylm sample`` prints
    as its first sample (sample 1 of ``num_samples``, the best beam).
    """
    return s.prompt + generate_text(model, tok, [s.prompt], replace(s, num_samples=1), seed=seed)[0][0].text


# --------------------------------------------------------------------------- measuring samples

@torch.inference_mode()
def token_scores(model: GPT, prompt: Sequence[int], tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own view of a continuation, at temperature 1 and without filters.

    Returns the log-probability (T,) of each of the T tokens given everything before it, and the
    entropy (T,) in nats of the model's next-token distribution at that point. The model's
    perplexity of the text is ``exp(-logprob.mean())``. A sequence longer than the context is read
    in windows that move by half the context, so each token is scored with at least
    block_size / 2 tokens before it (or all of them, near the start).
    """
    _need(len(prompt) > 0, "token_scores needs a prompt of at least one token: the first token is predicted from "
                           "it (for an empty text use encode_prompt(tok, ''), the end-of-text token)")
    seq = torch.tensor(list(prompt) + list(tokens), dtype=torch.long, device=model.wte.weight.device)
    N, n0, block = len(seq), len(prompt), model.cfg.block_size
    logp_out, ent_out = [], []
    was_training = model.training
    model.eval()
    try:
        i0 = n0  # first target position not scored yet
        while i0 < N:
            w = max(0, min(i0 - max(1, block // 2), N - 1 - block))  # window start
            e = min(N - 1, w + block)  # inputs seq[w:e] predict targets seq[w+1:e+1]
            logits, _ = model(seq[None, w:e])  # (1, e-w, V)
            logp = torch.log_softmax(logits[0].float(), dim=-1)  # (e-w, V)
            first = i0 - w - 1  # row of logp that predicts target i0
            targets = seq[i0:e + 1]
            logp = logp[first:]
            logp_out.append(logp.gather(1, targets[:, None])[:, 0])
            ent_out.append(-(logp.exp() * logp).sum(-1))
            i0 = e + 1
    finally:
        model.train(was_training)
    if not logp_out:
        empty = torch.zeros(0)
        return empty, empty
    return torch.cat(logp_out).cpu(), torch.cat(ent_out).cpu()


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """``ngrams(["a", "b", "c"], 2) -> [("a", "b"), ("b", "c")]``"""
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(words: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams in one text (Li et al., 2016): 1 = no n-gram repeats.

    ``distinct_n("a b a b".split(), 2) -> 2/3`` (ab, ba, ab). A text too short to have an
    n-gram gives 1.0.
    """
    grams = ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition_rate(words: Sequence[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text: 0 = none, near 1 = a loop.

    This is rep-n of Welleck et al. (2019) and Su et al. (2022), i.e. 1 - distinct_n:
    ``repetition_rate("a b c a b c".split(), 2) -> 0.4`` (of ab bc ca ab bc, two repeat).
    """
    return 1.0 - distinct_n(words, n)
