"""Decoding: greedy, sampling, beam and contrastive search over a KV cache, from token ids or from text.

:func:`generate` continues a batch of token-id prompts with the strategy a
:class:`~tinylm.config.SampleConfig` names (which settings each reads: :mod:`tinylm.generation.strategies`;
the logits processors: :mod:`tinylm.generation.sampling`; the rows, cache and stops they work on:
:mod:`tinylm.generation.decode_state`). Each prompt is read once into the model's KV cache, then each step
costs one position per row. :func:`generate_text` adds encoding, decoding, streaming
and stop strings; :func:`sample_text` is one sample as a config asks (what the trainer writes);
:func:`sample_settings` is a run's [sample] settings with a command's changes.

Reproducible: batch row r samples with its own ``torch.Generator`` seeded ``seed + r``, so sample
i of ``num_samples = 5`` is exactly what a lone call with ``seed + i`` gives.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..config import Config, SampleConfig, parse_overrides, set_value, validate
from ..errors import TinyLMError
from ..model.gpt import GPT
from ..tokenizer import Tokenizer
from ..tokenizer.base import special_splitter
from .decode_state import Completion, Rows, Stops
from .sampling import Processor, apply_processors, build_processors
from .strategies import check_sample, samples_per_prompt

OnToken = Callable[[int, int], None] | None  # (row, token) as each is chosen; see generate()


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise TinyLMError(msg)


# --------------------------------------------------------------------------- strategies

@torch.inference_mode()
def generate(model: GPT, prompts: Sequence[Sequence[int]], s: SampleConfig, *, seed: int = 0,
             eot_id: int | None = None, stop_strings: Sequence[str] = (),
             decode: Callable[[list[int]], str] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[Completion]]:
    """Continue each prompt (a list of token ids) with the strategy ``s.strategy``.

    Returns one list per prompt: ``s.num_samples`` completions for the sampling strategies, the
    ``s.num_samples`` best beams for beam search, and one for greedy and contrastive search (they
    are deterministic). A row stops after ``s.max_new_tokens`` tokens, at ``eot_id`` (unless
    ``s.stop_at_eot`` is off), or once its generated text, read with ``decode``, contains one of ``stop_strings``.

        generate(model, [[1, 2, 3]], SampleConfig(strategy="greedy", max_new_tokens=4))
        # -> [[Completion(tokens=[7, 7, 1, 0], stop_reason='length')]]

    Rows are prompt-major (row r = prompt r // n, sample r % n) and row r samples with seed + r.
    ``on_token(row, token)`` sees each token as it is chosen, except the one that ends a row (not
    in beam search, whose beams change until the end). Prompts of different lengths are left-padded in one batch.
    """
    check_sample(s)  # the same checks, and messages, as a config file gets
    _need(len(prompts) > 0, "generate needs at least one prompt")
    V, block = model.cfg.vocab_size, model.cfg.block_size
    _need(s.strategy != "contrastive" or block >= 2, "contrastive search needs a context of at least 2 tokens")
    for i, p in enumerate(prompts):
        _need(len(p) > 0, f"prompt {i} is empty; give at least one token (e.g. the end-of-text token)")
        _need(all(0 <= t < V for t in p), f"prompt {i} has token ids outside the model's vocabulary [0, {V})")
        _need(s.overflow == "slide" or len(p) <= block,
              f"prompt {i} has {len(p)} tokens but the context is {block}: shorten it, or use "
              f"--sample.overflow slide to keep only its newest {block} tokens")
    stops = Stops(eot_id if s.stop_at_eot else None, stop_strings, decode)
    procs = build_processors(s)
    was_training = model.training
    model.eval()
    try:
        if s.strategy == "beam":
            return _beam_search(Rows(model, prompts), s, procs, stops)
        n = samples_per_prompt(s)
        rows = Rows(model, [p for p in prompts for _ in range(n)])
        if s.strategy == "contrastive":
            flat = _contrastive(rows, s, procs, stops, on_token)
        else:  # greedy or a sampling strategy: check_sample knows no other
            flat = _sample(rows, s, procs, stops, on_token, seed)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
    finally:
        model.train(was_training)


def _sample(rows: Rows, s: SampleConfig, procs: list[Processor], stops: Stops, on_token: OnToken,
            seed: int) -> list[Completion]:
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
        stops.push_rows(new, ended, nxt_list, on_token)
        if all(e is not None for e in ended) or step == s.max_new_tokens - 1:
            break
        rows.append(nxt, nxt_list)
        if rows.cache.full and s.overflow == "stop":
            ended = rows.out_of_context(ended, appended=1, room=0)
            if all(e is not None for e in ended):
                break
        logits = rows.advance(nxt)
    return [Completion(new[r], ended[r] or "length") for r in range(B)]


def _contrastive(rows: Rows, s: SampleConfig, procs: list[Processor], stops: Stops,
                 on_token: OnToken) -> list[Completion]:
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
    for _ in range(s.max_new_tokens):
        probs = apply_processors(logits, rows.ids, procs).softmax(dim=-1)  # (B, V)
        p_top, cand = probs.topk(min(k, probs.size(-1)), dim=-1)  # (B, k) each, most likely first
        kk = cand.size(1)
        if rows.cache.full:
            if s.overflow == "stop":
                ended = rows.out_of_context(ended, appended=0, room=1)
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
        stops.push_rows(new, ended, nxt_list, on_token)
        if all(e is not None for e in ended):
            break
    return [Completion(new[r], ended[r] or "length") for r in range(B)]


def _beam_search(rows: Rows, s: SampleConfig, procs: list[Processor], stops: Stops) -> list[list[Completion]]:
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
        live: list[tuple[int, int, float, list[int]]] = []  # (source row, token, sum, tokens) per new beam row
        for p, (tops, flats) in enumerate(zip(top.tolist(), flat.tolist(), strict=True)):
            kept = 0
            for rank, (score, f) in enumerate(zip(tops, flats, strict=True)):
                if done[p] or kept == W or score == neg_inf:
                    break
                src, t = p * W + f // V, f % V
                seq = list(beams[src])
                reason = stops.push(seq, t)
                if reason is None:
                    live.append((src, t, score, seq))
                    kept += 1
                elif rank < W:  # an ending counts only if it is among the W best (as in HF)
                    finished[p].append((norm(score, len(seq) + (reason == "eot")), seq, reason))
            live += [(p * W, 0, neg_inf, []) for _ in range(W - kept)]  # done, or too few live: fillers never win
            if not done[p] and len(finished[p]) >= W:
                worst = sorted(h[0] for h in finished[p])[-W]  # the W-th best finished score
                best_live = max(x[2] for x in live[p * W:(p + 1) * W])
                done[p] = s.early_stopping or best_live == neg_inf or worst >= norm(best_live, step + 1)
        src_rows, toks, new_sums, beams = (list(column) for column in zip(*live, strict=True))
        sums = [new_sums[p * W:(p + 1) * W] for p in range(P)]
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
    """Prompt text -> ids. A prompt is typed by the user, not read from a corpus, so its special
    tokens count as such (``allowed_special="all"``, as Hugging Face tokenizers always do):
    ``"<|endoftext|>Once"`` starts a new document after the end-of-text id, as in training. An
    empty prompt starts from end-of-text or, without one, from id 0 (a character tokenizer's
    lowest character, usually the newline)."""
    ids = tok.encode(prompt, allowed_special="all")
    if ids:
        return ids
    return [tok.eot_token if tok.eot_token is not None else 0]


def check_prompt(tok: Tokenizer, prompt: str, data_dir: str) -> None:
    """Refuse a ``--sample.prompt`` the tokenizer cannot encode, naming the characters it lacks
    (checked before training: else the first evaluation fails, and again at every resume)."""
    def encodes(text: str) -> bool:
        try:
            encode_prompt(tok, text)
            return True
        except TinyLMError:
            return False

    if not encodes(prompt):
        splitter = special_splitter(tok.special_tokens)  # special tokens encode whole, not by character
        text = splitter.sub("", prompt) if splitter else prompt
        missing = [c for c in dict.fromkeys(text) if not encodes(c)]
        raise TinyLMError(f"--sample.prompt {prompt!r} has characters {missing!r} that the tokenizer of {data_dir} "
                          f"cannot encode; leave them out of --sample.prompt, or use --data.tokenizer bpe, "
                          f"which encodes any text")


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
        self.pending += self.utf8.decode(self.tok.decode_single_token_bytes(t))
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

    Stops at the tokenizer's end-of-text token when it has one (unless ``s.stop_at_eot`` is off).
    ``on_text(row, piece)`` streams each row's text as it is generated (never the stop string
    itself); beam search, whose beams change until the end, streams each finished text once.

        generate_text(model, tok, ["ROMEO:"], SampleConfig(strategy="top_p", top_p=0.9), seed=1)[0][0].text
    """
    ids = [encode_prompt(tok, p) for p in prompts]
    hold = max((len(x) for x in stop_strings if x), default=1) - 1
    streams = None
    if on_text is not None and s.strategy != "beam":
        streams = [_TextStream(tok, (lambda piece, r=r: on_text(r, piece)), hold)
                   for r in range(len(prompts) * samples_per_prompt(s))]
    results = generate(model, ids, s, seed=seed, eot_id=tok.eot_token, stop_strings=stop_strings, decode=tok.decode,
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


def sample_settings(cfg: Config, overrides: Sequence[str] = (), flags: Mapping[str, object] | None = None) -> None:
    """Set a run's [sample] settings for one command: the run's < ``--sample.KEY`` overrides < ``flags``.

    ``flags`` maps each [sample] setting the command has a flag of its own for to the flag's value,
    None where it was not given: ``{"top_p": 0.9, "top_k": None}`` from ``--top-p 0.9``. Messages
    name those flags, and each one given must be read by the strategy (``--top-k`` with ``--strategy
    top_p`` is refused). Only [sample] settings change: the checkpoint fixes the model and the data.
    """
    for key, value in parse_overrides(list(overrides)):
        if not key.startswith("sample."):
            raise TinyLMError(f"--{key} cannot change here: the checkpoint fixes the model and data; "
                              f"only --sample.* settings apply when generating")
        set_value(cfg, key, value)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for key, value in given.items():
        setattr(cfg.sample, key, value)
    check_sample(cfg.sample, flags or {}, given)  # first: its messages name the command's own flags
    validate(cfg)
