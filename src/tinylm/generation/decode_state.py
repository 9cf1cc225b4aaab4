"""The decoding state: the rows being generated over the KV cache (prefill, sliding window, beam order), their stops.

:class:`Rows` holds every row's tokens and the model's KV cache, and slides the window when the
context is used up; :class:`Stops` says when a row ends (end-of-text, a stop string);
:class:`Completion` is what a row becomes. The strategies that drive them are in
:mod:`tinylm.generation.generate`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import TinyLMError
from ..model.gpt import GPT
from .sampling import PAD


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


def left_pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token lists of different lengths -> idx (B, T) right-aligned, and valid (B, T) (None if all full).

    ``left_pad([[5, 6], [7]])`` -> idx [[5, 6], [0, 7]], valid [[True, True], [False, True]]
    """
    T = max(len(r) for r in rows)
    idx = torch.tensor([[0] * (T - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    if all(len(r) == T for r in rows):
        return idx, None
    valid = torch.tensor([[False] * (T - len(r)) + [True] * len(r) for r in rows], device=device)
    return idx, valid


class Rows:
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
        idx, valid = left_pad(self.tokens, self.device)
        self.ids = idx if valid is None else idx.masked_fill(~valid, PAD)  # (B, L) for the processors
        self.cache = None

    def read(self, n: int | list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Read each row's newest n (or n[row]) tokens into a new cache (the prefill; each slide).

        Returns the next-token logits (B, V) in fp32, the hidden states (B, T, C) and which of
        the T slots are real (None: all).
        """
        sizes = n if isinstance(n, list) else [n] * len(self.tokens)
        idx, valid = left_pad([t[-k:] for t, k in zip(self.tokens, sizes, strict=True)], self.device)
        self.cache = self.model.new_cache(idx.size(0))
        logits, _ = self.model(idx, cache=self.cache, valid=valid)  # (B, 1, V)
        return logits[:, -1].float(), self.cache.hidden, valid

    def append(self, nxt: torch.Tensor, as_list: list[int]) -> None:
        """Add one token to every row: nxt (B,), and the same as Python ints."""
        for row, t in zip(self.tokens, as_list, strict=True):
            row.append(t)
        self.ids = torch.cat((self.ids, nxt[:, None]), dim=1)  # (B, L+1)

    def in_cache(self) -> list[int]:
        """Per row: the real (unpadded) tokens its cache holds."""
        cache = self.cache
        return cache.n_real.tolist() if cache.n_real is not None else [cache.length] * cache.batch

    def used_up(self, appended: int, room: int, in_cache: list[int] | None = None) -> list[bool]:
        """Per row: can its context not take its ``appended`` tokens plus ``room`` more?"""
        return [n + appended + room > self.block for n in (in_cache or self.in_cache())]

    def out_of_context(self, ended: list[str | None], appended: int, room: int) -> list[str | None]:
        """``ended``, with "context" for each live row that is :meth:`used_up` (for overflow = stop)."""
        return [e or ("context" if f else None) for e, f in zip(ended, self.used_up(appended, room), strict=True)]

    def slide(self, appended: int, room: int, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Re-read into a new cache: rows whose context is used up keep their newest ``keep``
        tokens; the others re-read their current window plus the ``appended`` tokens."""
        in_cache = self.in_cache()
        full = self.used_up(appended, room, in_cache)
        return self.read([keep if f else n + appended for n, f in zip(in_cache, full, strict=True)])

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


class Stops:
    """When a row ends: its end-of-text token, or a stop string in its generated text."""

    def __init__(self, eot_id: int | None, stop_strings: Sequence[str], decode: Callable[[list[int]], str] | None):
        self.eot_id = eot_id
        self.strings = [s for s in stop_strings if s]
        if self.strings and decode is None:
            raise TinyLMError("stop strings need the tokenizer's decode function (generate(..., decode=tok.decode))")
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

    def push_rows(self, new: list[list[int]], ended: list[str | None], chosen: list[int],
                  on_token: Callable[[int, int], None] | None) -> None:
        """:meth:`push` each row's chosen token unless the row has ended; note why rows end in ``ended``."""
        for r, t in enumerate(chosen):
            if ended[r] is None:
                ended[r] = self.push(new[r], t)
                if on_token is not None and ended[r] is None:  # an ending token may hold the stop string
                    on_token(r, t)
