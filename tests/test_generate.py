"""Generation: the KV cache, the logits processors, every strategy, text helpers, CLI, report.

Tiny random models (2 layers, width 32) unless a test needs a trained one; the properties are the
ones the decoding literature states (top-k 1 = greedy, beam width 1 = greedy, ...), checked on
whole generated sequences.
"""
import itertools
import math
from dataclasses import replace

import pytest
import torch

from tinylm.config import ModelConfig, SampleConfig
from tinylm.errors import TinyLMError
from tinylm.generation.decode_report import distinct_n, repetition_rate, token_scores
from tinylm.generation.generate import cut_at_stop, generate, generate_text, sample_text
from tinylm.generation.sampling import (
    PAD,
    Processor,
    banned_by_ngrams,
    build_processors,
    token_counts,
)
from tinylm.model.gpt import GPT

VARIANTS = {"learned": dict(), "rope": dict(pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True),
            "bias-untied": dict(mlp="relu2", bias=True, tie_embeddings=False)}
V = 61


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models decode one token at a time: thread hand-offs cost more than they save,
    and on a loaded 2-core machine they make these tests 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(block: int = 32, **kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=V, block_size=block, n_layer=2, n_head=2, n_embd=32, **kw)).eval()
    # random init gives nearly flat logits; a larger output scale makes decisions clear-cut
    # (fewer near-ties) and the strategies differ visibly
    with torch.no_grad():
        model.wte.weight.mul_(8)
    return model


def cfg(**kw) -> SampleConfig:
    return replace(SampleConfig(max_new_tokens=24), **kw)


def tokens(model, prompts, s, **kw) -> list[list[list[int]]]:
    return [[c.tokens for c in per_prompt] for per_prompt in generate(model, prompts, s, **kw)]


# --------------------------------------------------------------------------- the KV cache

@pytest.mark.parametrize("kernel", ["sdpa", "math"])
@pytest.mark.parametrize("kind", VARIANTS)
def test_cached_logits_equal_full_recompute(kind, kernel):
    model = tiny(**VARIANTS[kind], attention=kernel)
    x = torch.randint(0, V, (3, 30))
    full, _ = model(x)  # (3, 30, V)
    cache = model.new_cache(3)
    model(x[:, :11], cache=cache)  # prefill 11 tokens
    first = model.lm_head(cache.hidden)  # (3, 11, V): every position's logits, not only the last
    steps = [model(x[:, t:t + 1], cache=cache)[0] for t in range(11, 30)]  # then one at a time
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 30


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_left_padded_rows_see_what_they_would_see_alone(kind, kernel):
    model = tiny(**VARIANTS[kind], attention=kernel)
    a, b = torch.randint(0, V, (1, 20)), torch.randint(0, V, (1, 14))
    idx = torch.cat([a, torch.cat([torch.zeros(1, 6, dtype=torch.long), b], dim=1)])  # (2, 20), b left-padded
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, :6] = False
    cache = model.new_cache(2)
    model(idx[:, :12], cache=cache, valid=valid[:, :12])
    first = model.lm_head(cache.hidden)  # (2, 12, V)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(12, 20)]
    got = torch.cat([first, *steps], dim=1)  # (2, 20, V)
    torch.testing.assert_close(got[0], model(a)[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 6:], model(b)[0][0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all(), "padding queries must not produce NaN"


def test_cache_refuses_overflow_and_oversize():
    model = tiny(block=8)
    cache = model.new_cache(1)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    assert cache.full
    with pytest.raises(ValueError, match="slide the window"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds the context length"):
        model.new_cache(1, max_len=9)


@pytest.mark.slow
def test_compiled_decoding_generates_what_eager_decoding_does():
    """compile_decoding changes how fast a step runs, not what it computes: batch 1, and a
    left-padded batch of 2 that slides its window (two compilations, ~1 min on a CPU)."""
    eager, compiled = tiny(block=16, **VARIANTS["rope"]), tiny(block=16, **VARIANTS["rope"])
    compiled.compile_decoding()
    for prompts, s in (([[1, 2, 3]], cfg(strategy="greedy")), ([[1, 2, 3], [4]], cfg(strategy="sample"))):
        assert tokens(compiled, prompts, s, seed=5) == tokens(eager, prompts, s, seed=5)


def test_generation_leaves_training_mode_and_grad_mode_alone():
    model = tiny().train()
    generate(model, [[1, 2]], cfg(strategy="greedy", max_new_tokens=3))
    assert model.training and torch.is_grad_enabled()


# --------------------------------------------------------------------------- processors

def test_processors_known_answers():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ids = torch.tensor([[PAD, 0, 3, 3]])
    assert token_counts(ids, 4).tolist() == [[1, 0, 0, 2]]
    # CTRL: positive seen logits divided, negative seen multiplied; unseen untouched
    assert Processor("repetition_penalty", 2.0)(logits, ids).tolist() == [[1.0, 1.0, 0.0, -2.0]]
    assert Processor("frequency_penalty", 0.5)(logits, ids).tolist() == [[1.5, 1.0, 0.0, -2.0]]
    assert Processor("presence_penalty", 0.5)(logits, ids).tolist() == [[1.5, 1.0, 0.0, -1.5]]
    assert Processor("temperature", 0.5)(logits, ids).tolist() == [[4.0, 2.0, 0.0, -2.0]]
    assert torch.isinf(Processor("top_k", 2)(logits, ids)).tolist() == [[False, False, True, True]]
    probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(Processor("top_p", 0.7)(probs, ids)).tolist() == [[False, False, True, True]]
    # 0.8 reached exactly
    assert torch.isinf(Processor("top_p", 0.8)(probs, ids)).tolist() == [[False, False, True, True]]
    assert torch.isinf(Processor("top_p", 0.81)(probs, ids)).tolist() == [[False, False, False, True]]
    # the top token stays
    assert torch.isinf(Processor("top_p", 0.01)(probs, ids)).tolist() == [[False, True, True, True]]
    assert torch.isinf(Processor("min_p", 0.2)(probs, ids)).tolist() == [[False, False, False, True]]  # bar 0.1
    assert torch.isinf(Processor("min_p", 0.7)(probs, ids)).tolist() == [[False, True, True, True]]  # bar 0.35


def test_no_repeat_ngram_bans_the_completing_token():
    ids = torch.tensor([[1, 2, 3, 1, 2], [PAD, PAD, 4, 4, 4]])
    banned = banned_by_ngrams(ids, 3, 6)
    assert banned[0].nonzero().flatten().tolist() == [3]  # (1, 2) was followed by 3
    assert banned[1].nonzero().flatten().tolist() == [4]  # (4, 4, 4) exists
    assert banned_by_ngrams(ids, 1, 6)[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert not banned_by_ngrams(ids[:, :2], 3, 6).any()  # too short to have an n-gram
    assert torch.isinf(Processor("no_repeat_ngram", 3)(torch.zeros(2, 6), ids)).sum() == 2


def test_no_repeat_ngram_in_generation():
    model = tiny()
    for strategy in ("greedy", "beam", "contrastive", "sample"):
        out = generate(model, [[1, 2, 3]], cfg(strategy=strategy, no_repeat_ngram=2, max_new_tokens=40))[0][0]
        seq = [1, 2, 3, *out.tokens]
        bigrams = list(itertools.pairwise(seq))
        assert len(bigrams) == len(set(bigrams)), strategy


def test_processor_parameters_are_validated():
    for setting, bad in (("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 1.0), ("top_k", 0),
                         ("repetition_penalty", 0.0), ("no_repeat_ngram", 0), ("frequency_penalty", math.inf)):
        with pytest.raises(TinyLMError):
            Processor(setting, bad)
    with pytest.raises(TinyLMError, match=r"--sample\.top_p"):
        generate(tiny(), [[1]], cfg(top_p=2.0))
    with pytest.raises(TinyLMError, match="num_beams"):
        generate(tiny(), [[1]], cfg(strategy="beam", num_beams=2, num_samples=3))


def test_build_processors_follows_the_strategy():
    s = SampleConfig(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    def settings(s: SampleConfig) -> list[tuple[str, float]]:
        return [(p.setting, p.value) for p in build_processors(s)]
    assert settings(s) == [("repetition_penalty", 1.3), ("temperature", 0.7), ("top_k", 50), ("top_p", 0.9),
                           ("min_p", 0.05)]
    assert settings(replace(s, strategy="top_p")) == [("repetition_penalty", 1.3), ("temperature", 0.7), ("top_p", 0.9)]
    assert settings(replace(s, strategy="greedy")) == [("repetition_penalty", 1.3)]
    assert build_processors(replace(s, strategy="beam", repetition_penalty=1.0)) == []


def test_higher_temperature_gives_higher_entropy():
    logits = torch.randn(8, V) * 3
    ids = torch.zeros(8, 1, dtype=torch.long)

    def entropy(t):
        logp = torch.log_softmax(Processor("temperature", t)(logits, ids), -1)
        return -(logp.exp() * logp).sum(-1)

    temps = [0.25, 0.5, 1.0, 2.0, 4.0]
    for lo, hi in itertools.pairwise(temps):
        assert (entropy(hi) > entropy(lo)).all()
    assert (entropy(100.0) <= math.log(V) + 1e-5).all()


def test_repetition_penalty_lowers_seen_tokens_probability():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, V, generator=g) * 3
    ids = torch.randint(0, V, (4, 10), generator=g)  # rows see different numbers of distinct ids
    seen = token_counts(ids, V) > 0
    penalized = Processor("repetition_penalty", 1.5)(logits, ids)
    assert (penalized[seen] < logits[seen]).all() and torch.equal(penalized[~seen], logits[~seen])
    # relative to every unseen token, every seen token of its row loses probability (the odds shrink) ...
    for row in range(4):
        s, u = seen[row], ~seen[row]
        odds = lambda lg: lg[row].softmax(-1)[s][:, None] / lg[row].softmax(-1)[u][None, :]  # noqa: E731,B023
        assert (odds(penalized) < odds(logits)).all()
    # ... and one seen token loses probability outright
    one = torch.tensor([[7]] * 4)
    assert (Processor("repetition_penalty", 1.5)(logits, one).softmax(-1)[:, 7] < logits.softmax(-1)[:, 7]).all()
    # and in generation: fewer repeated tokens than plain greedy, which loops on this model
    model = tiny()
    plain = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=30))[0][0].tokens
    penalized = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=30,
                                                  repetition_penalty=3.0))[0][0].tokens
    assert len(set(penalized)) > len(set(plain))


# --------------------------------------------------------------------------- strategies

def reference_decode(model, prompt, n_new, *, temperature=None, seed=0):
    """nanoGPT's loop: the whole (cropped) context through model.forward at every step."""
    idx = torch.tensor([prompt])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(idx[:, -model.cfg.block_size:])[0][:, -1].float()
            if temperature is None:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial((logits / temperature).softmax(-1)[0], 1, generator=gen)[None]
            idx = torch.cat([idx, nxt], dim=1)
    return idx[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_greedy_is_deterministic_and_equals_full_recompute(kind):
    model = tiny(block=64, **VARIANTS[kind])
    s = cfg(strategy="greedy", max_new_tokens=40)
    a = tokens(model, [[5, 6, 7]], s)[0][0]
    assert a == tokens(model, [[5, 6, 7]], s)[0][0]
    assert a == reference_decode(model, [5, 6, 7], 40)


def test_sampling_with_top_p_1_is_plain_multinomial_sampling():
    model = tiny(block=64)
    logits, ids = torch.randn(3, V), torch.zeros(3, 1, dtype=torch.long)
    assert torch.equal(Processor("top_p", 1.0)(logits, ids), logits)
    plain = tokens(model, [[5, 6]], cfg(strategy="sample", temperature=1.0, top_k=0, top_p=1.0), seed=7)[0][0]
    assert plain == reference_decode(model, [5, 6], 24, temperature=1.0, seed=7)
    assert plain != tokens(model, [[5, 6]], cfg(strategy="sample", temperature=1.0, top_k=0), seed=8)[0][0]


def test_top_k_1_equals_greedy():
    model = tiny()
    greedy = tokens(model, [[1, 2], [3]], cfg(strategy="greedy"))
    for seed in (0, 1):
        assert tokens(model, [[1, 2], [3]], cfg(strategy="top_k", top_k=1, temperature=1.5), seed=seed) == greedy


def test_beam_width_1_equals_greedy():
    model = tiny()
    s = cfg(max_new_tokens=50)  # longer than the context (32): both slide the same way
    assert tokens(model, [[4, 5, 6]], replace(s, strategy="beam", num_beams=1)) == \
        tokens(model, [[4, 5, 6]], replace(s, strategy="greedy"))


def test_contrastive_with_alpha_0_equals_greedy():
    model = tiny(**VARIANTS["rope"])
    s = cfg(max_new_tokens=50)
    assert tokens(model, [[4, 5, 6], [7]], replace(s, strategy="contrastive", contrastive_alpha=0.0)) == \
        tokens(model, [[4, 5, 6], [7]], replace(s, strategy="greedy"))


def test_contrastive_search_avoids_the_greedy_loop():
    model = tiny()
    s = cfg(max_new_tokens=40)
    greedy = tokens(model, [[1, 2, 3]], replace(s, strategy="greedy"))[0][0]
    contrastive = tokens(model, [[1, 2, 3]], replace(s, strategy="contrastive", contrastive_alpha=0.6))[0][0]
    assert len(set(contrastive)) > len(set(greedy))


def test_beam_search_finds_the_most_likely_sequence():
    """With as many beams as sequences of length n-1, beam search is exhaustive: compare with brute force."""
    model = GPT(ModelConfig(vocab_size=4, block_size=8, n_layer=2, n_head=2, n_embd=32)).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)
    prompt = [1, 2]
    best = max(itertools.product(range(4), repeat=3), key=lambda seq: token_scores(model, prompt, list(seq))[0].sum())
    out = generate(model, [prompt], cfg(strategy="beam", num_beams=16, num_samples=3, max_new_tokens=3,
                                        length_penalty=0.0))[0]
    assert out[0].tokens == list(best)
    assert out[0].score == pytest.approx(token_scores(model, prompt, list(best))[0].sum().item(), abs=1e-4)
    assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)
    assert len({tuple(c.tokens) for c in out}) == 3  # n-best: three different sequences


def test_beam_search_ends_hypotheses_at_eot():
    """With length_penalty 0 (plain sums), ending at once on the most likely token beats any longer
    beam: each of those starts with a less likely token and only adds negative log-probabilities."""
    model = tiny()
    first = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=1))[0][0].tokens[0]
    s = cfg(strategy="beam", num_beams=3, num_samples=3, max_new_tokens=20, length_penalty=0.0, early_stopping=False)
    out = generate(model, [[1, 2, 3]], s, eot_id=first)[0]
    assert out[0].tokens == [] and out[0].stop_reason == "eot"
    assert all(first not in c.tokens for c in out)


@pytest.mark.parametrize("overflow", ["slide", "stop"])
@pytest.mark.parametrize("strategy", ["greedy", "beam", "contrastive", "sample"])
def test_batched_generation_equals_one_by_one(strategy, overflow):
    """Prompts of different lengths in one batch (left padding), past the context (32 tokens)."""
    model = tiny(**VARIANTS["rope"])
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    s = cfg(strategy=strategy, max_new_tokens=40, num_samples=2 if strategy == "sample" else 1, overflow=overflow)
    batched = tokens(model, prompts, s, seed=10)
    n = s.num_samples
    alone = [tokens(model, [p], s, seed=10 + i * n)[0] for i, p in enumerate(prompts)]
    assert batched == alone


def test_samples_use_seed_plus_row():
    model = tiny()
    s = cfg(strategy="sample", temperature=1.0, num_samples=3)
    three = tokens(model, [[1, 2]], s, seed=5)[0]
    assert [tokens(model, [[1, 2]], replace(s, num_samples=1), seed=5 + i)[0][0] for i in range(3)] == three
    assert len({tuple(t) for t in three}) == 3


def test_generating_past_the_context_slides_or_stops():
    model = tiny(block=16)
    long = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=50))[0][0]
    assert len(long.tokens) == 50 and long.stop_reason == "length"
    stop = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=50, overflow="stop"))[0][0]
    assert stop.stop_reason == "context" and len(stop.tokens) == 16 - 3 + 1
    assert stop.tokens == long.tokens[:len(stop.tokens)]
    with pytest.raises(TinyLMError, match="overflow slide"):
        generate(model, [list(range(20))], cfg(overflow="stop"))
    cropped = generate(model, [list(range(20))], cfg(strategy="greedy"))[0][0]  # slide: keeps the newest 16
    assert cropped.tokens == generate(model, [list(range(4, 20))], cfg(strategy="greedy"))[0][0].tokens


def test_stops_at_eot_and_stop_strings():
    model = tiny()
    free = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=30))[0][0].tokens
    eot = free[5]
    out = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=30), eot_id=eot)[0][0]
    assert out.stop_reason == "eot" and out.tokens == free[:free.index(eot)]
    decode = lambda ids: "".join(chr(65 + t % 26) for t in ids)  # noqa: E731 - a toy tokenizer
    target = decode(free)[7:9]
    out = generate(model, [[1, 2, 3]], cfg(strategy="greedy", max_new_tokens=30), stop_strings=[target],
                   decode=decode)[0][0]
    assert out.stop_reason == "stop" and decode(out.tokens).endswith(target)
    with pytest.raises(TinyLMError, match="decode"):
        generate(model, [[1]], cfg(), stop_strings=["x"])
    assert cut_at_stop("to be\n\nor not", ["\n\n", "or"]) == "to be"


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_stop_at_eot_is_the_default_and_can_be_turned_off(strategy):
    model = tiny()
    s = cfg(strategy=strategy, max_new_tokens=30)
    free = generate(model, [[1, 2, 3]], s)[0][0].tokens
    eot = free[4]
    assert SampleConfig().stop_at_eot
    stopped = generate(model, [[1, 2, 3]], s, eot_id=eot, seed=0)[0][0]
    assert stopped.stop_reason == "eot" and len(stopped.tokens) < 30
    past = generate(model, [[1, 2, 3]], replace(s, stop_at_eot=False), eot_id=eot)[0][0]
    assert past.stop_reason == "length" and past.tokens == free and eot in past.tokens


def test_bad_prompts_are_refused():
    model = tiny()
    with pytest.raises(TinyLMError, match="empty"):
        generate(model, [[]], cfg())
    with pytest.raises(TinyLMError, match="vocabulary"):
        generate(model, [[V]], cfg())


# --------------------------------------------------------------------------- text, metrics

@pytest.fixture(scope="module")
def char_tok():
    from tinylm.tokenizer.char import CharTokenizer
    return CharTokenizer("abcdefghijklmnopqrstuvwxyz .,\n:ABCDEFGHIJKLMNOPQRSTUVWXYZ!?;'-0123456789", ["<|endoftext|>"])


def test_prompts_may_hold_special_tokens(char_tok):
    """A prompt is the user's, not corpus text: "<|endoftext|>" in it is the end-of-text id (as in
    training, between documents), not an error as encode's default would make it."""
    from tinylm.generation.generate import check_prompt, encode_prompt
    eot = char_tok.eot_token
    assert encode_prompt(char_tok, "<|endoftext|>Once") == [eot, *char_tok.encode("Once")]
    assert encode_prompt(char_tok, "") == [eot]
    check_prompt(char_tok, "the end.<|endoftext|>A", "data/x")  # accepted before training
    with pytest.raises(TinyLMError, match=r"characters \['é'\]"):
        check_prompt(char_tok, "café<|endoftext|>", "data/x")


def _streams_join_to_the_final_text(model, tok, prompts, stops, temperature, max_new_tokens, seed) -> None:
    """For each set of stop strings: the pieces streamed per row join to that row's final text,
    which never holds a stop string."""
    for stop in stops:
        pieces: dict[int, list[str]] = {}
        s = cfg(strategy="sample", temperature=temperature, num_samples=2, max_new_tokens=max_new_tokens)
        out = generate_text(model, tok, prompts, s, seed=seed, stop_strings=stop,
                            on_text=lambda r, p, got=pieces: got.setdefault(r, []).append(p))
        texts = [c.text for per_prompt in out for c in per_prompt]
        assert ["".join(pieces.get(r, [])) for r in range(4)] == texts
        for t in texts:
            assert not any(x in t for x in stop)


def test_generate_text_streams_exactly_the_final_text(char_tok):
    model = GPT(ModelConfig(vocab_size=char_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    _streams_join_to_the_final_text(model, char_tok, ["the ", "a"], ([], ["e"], ["ab", "e "]), 1.5, 60, seed=3)


class _CountingBytes:
    """A byte-level tokenizer (no merges: every multi-byte character spans several tokens) that
    records the decoding calls: (method, number of ids)."""

    def __init__(self):
        from tinylm.tokenizer.bpe import BPETokenizer
        self.tok, self.calls = BPETokenizer([]), []
        self.eot_token = None

    def decode_bytes(self, ids):
        self.calls.append(("decode_bytes", len(ids)))
        return self.tok.decode_bytes(ids)

    def decode_single_token_bytes(self, token):
        self.calls.append(("decode_single_token_bytes", 1))
        return self.tok.decode_single_token_bytes(token)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_text_stream_decodes_each_token_once_and_never_splits_a_character():
    from tinylm.generation.generate import _TextStream
    tok = _CountingBytes()
    text = "héllo ✓ wörld 🙂 end"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # some characters are split across tokens
    pieces: list[str] = []
    stream = _TextStream(tok, pieces.append, hold=0)
    for t in ids:
        stream.push(t)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert tok.calls == [("decode_single_token_bytes", 1)] * len(ids)  # one token per call: linear, not quadratic


def test_generate_text_streams_exactly_the_final_text_with_byte_tokens():
    """Random bytes from an untrained model, split characters and invalid UTF-8 included: the streamed
    pieces join to the full decode."""
    from tinylm.tokenizer.bpe import BPETokenizer
    tok = BPETokenizer([])
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    _streams_join_to_the_final_text(model, tok, ["caf\xe9 ", "\u2713"], ([], ["\xe9"], ["ab", "\n\n"]), 2.0, 80, seed=5)


def test_sample_text_is_the_first_sample_of_its_config(char_tok):
    model = GPT(ModelConfig(vocab_size=char_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    for s in (SampleConfig(prompt="the ", max_new_tokens=20, strategy="top_p", top_p=0.9, num_samples=3),
              SampleConfig(prompt="the ", max_new_tokens=20, strategy="beam", num_beams=3, num_samples=2)):
        first = generate_text(model, char_tok, [s.prompt], s, seed=1)[0][0]
        assert sample_text(model, char_tok, s, seed=1) == "the " + first.text


def test_token_scores_match_a_plain_forward_and_handle_long_text():
    model = tiny(block=16)
    prompt, new = [1, 2, 3], [4, 5, 6, 7]
    logp, ent = token_scores(model, prompt, new)
    full = torch.log_softmax(model(torch.tensor([prompt + new]))[0][0], -1)  # (7, V)
    torch.testing.assert_close(logp, full[2:6].gather(1, torch.tensor(new)[:, None])[:, 0])
    assert ((ent > 0) & (ent <= math.log(V) + 1e-4)).all()
    long_lp, long_ent = token_scores(model, prompt, list(range(40)))  # 43 tokens through a 16-token context
    assert long_lp.shape == (40,) and torch.isfinite(long_lp).all() and torch.isfinite(long_ent).all()
    torch.testing.assert_close(long_lp[:13], token_scores(model, prompt, list(range(13)))[0])


def test_token_scores_refuses_an_empty_prompt_and_restores_training_mode():
    model = tiny().train()
    with pytest.raises(TinyLMError, match="at least one token"):
        token_scores(model, [], [1, 2, 3])
    assert model.training

    def broken(*a, **k):
        raise RuntimeError("out of memory")
    model.forward = broken
    with pytest.raises(RuntimeError):
        token_scores(model, [1], [2, 3])
    assert model.training  # restored although the forward pass failed


def test_diversity_metrics():
    assert distinct_n(["a", "b", "a", "b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a", "b", "c"], 1) == 1.0 and distinct_n(["a"], 2) == 1.0
    assert repetition_rate(["a", "b", "c", "a", "b", "c"], 2) == pytest.approx(0.4)
    assert repetition_rate(["the", "the", "the", "the", "the", "the"], 4) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- CLI and report

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, text_200k):
    """A run trained for a few steps on real text: enough for the CLI and the report. Its
    [sample] section asks for min-p sampling, which the trainer's samples must follow."""
    from tinylm.training.trainer import train

    from conftest import tiny_config
    tmp = tmp_path_factory.mktemp("gen-run")
    c = tiny_config(tmp, text_200k, **{"train.max_steps": 20, "train.eval_interval": 20,
                                       "sample.strategy": "min_p", "sample.min_p": 0.05})
    train(c, log=lambda *a: None)
    return c.run_dir


def test_cli_sample_strategies_and_errors(trained_run, capsys):
    from tinylm.cli import main
    assert main(["sample", str(trained_run), "--strategy", "top_p", "--top-p", "0.9", "--n", "2",
                 "--max-new-tokens", "15", "--prompt", "the ", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.count("--- sample") == 2 and "strategy top_p (temperature 0.8, top_p 0.9)" in out.err
    assert main(["sample", str(trained_run), "--strategy", "beam", "--n", "2", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.count("beam score") == 2
    assert main(["sample", str(trained_run), "--sample.strategy", "greedy", "--sample.max_new_tokens", "8",
                 "--sample.overflow", "stop"]) == 0
    assert main(["sample", str(trained_run), "--strategy", "top_p", "--top-k", "5"]) == 2
    assert "--top-k does nothing with --strategy top_p" in capsys.readouterr().err
    assert main(["sample", str(trained_run), "--strategy", "top_p"]) == 2
    assert "--strategy top_p needs --top-p" in capsys.readouterr().err
    assert main(["sample", str(trained_run), "--model.n_layer", "3"]) == 2
    assert "only --sample.* settings" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "decode-report"])
def test_cli_seed_outside_numpys_range_is_one_line(trained_run, capsys, command):
    from tinylm.cli import main
    assert main([command, str(trained_run), "--seed", str(2**64)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tinylm: error: --seed {2**64} must be in [0, 2^32) (numpy's seed range), e.g. 1337"]


def test_cli_compiled_sampling_without_a_cpu_compiler_is_a_one_line_error(trained_run, capsys):
    from torch._inductor import config as inductor_config

    from tinylm.cli import main
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):  # inductor's compiler search list
        assert main(["sample", str(trained_run), "--max-new-tokens", "5", "--sample.compile", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in err[-1] and "--sample.compile true needs a C++ compiler" in err[-1]


def test_cli_sample_streams_the_same_text_as_the_library(trained_run, capsys):
    from tinylm.cli import main
    from tinylm.training import checkpoint as ckpt
    assert main(["sample", str(trained_run), "--max-new-tokens", "25", "--prompt", "an", "--seed", "9"]) == 0
    printed = capsys.readouterr().out.split("---\n", 1)[1]
    _, c, model, tok = ckpt.load_for_inference(trained_run)
    expected = sample_text(model, tok, replace(c.sample, prompt="an", max_new_tokens=25), seed=9)
    assert printed == expected + "\n"
    assert ckpt.resolve_checkpoint(trained_run).name == "step_000020"


def test_cli_sample_compile_setting_compiles_the_decode_step(trained_run, capsys, monkeypatch):
    """--sample.compile true reaches GPT.compile_decoding (the compiled path itself: a slow test above)."""
    from tinylm.cli import main
    from tinylm.model.gpt import GPT
    calls = []
    monkeypatch.setattr(GPT, "compile_decoding", lambda self: calls.append(self))
    assert main(["sample", str(trained_run), "--max-new-tokens", "5"]) == 0 and calls == []
    assert main(["sample", str(trained_run), "--max-new-tokens", "5", "--sample.compile", "true"]) == 0
    assert len(calls) == 1
    capsys.readouterr()


def test_cli_sample_moves_the_model_to_the_device(trained_run, capsys, monkeypatch):
    """--device, else the run's train.device, goes through resolve_device, and the model goes there."""
    import importlib

    from tinylm.cli import main
    from tinylm.generation.decode_state import Completion
    from tinylm.training import checkpoint
    asked, used = [], []

    def resolve(name, local_rank=0, flag="--train.device"):
        asked.append((name, flag))
        return torch.device("meta")  # nowhere a model would be by accident

    def fake_generate_text(model, tok, prompts, s, **kw):
        used.append(next(model.parameters()).device)
        return [[Completion([], "length", text="")]]

    monkeypatch.setattr(checkpoint, "resolve_device", resolve)
    # the module: the package's attribute tinylm.generation.generate is the function of that name
    monkeypatch.setattr(importlib.import_module("tinylm.generation.generate"), "generate_text", fake_generate_text)
    assert main(["sample", str(trained_run), "--device", "auto"]) == 0
    assert main(["sample", str(trained_run)]) == 0
    assert asked == [("auto", "--device"), ("cpu", "--device")]  # the second: the run's train.device (conftest's)
    assert used == [torch.device("meta")] * 2
    capsys.readouterr()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_sample_on_cuda_without_cuda_is_one_line(trained_run, capsys):
    from tinylm.cli import main
    assert main(["sample", str(trained_run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA device is available; use --device cpu" in err and "Traceback" not in err


def test_training_samples_follow_the_sample_config(trained_run):
    """samples.md at the last evaluation holds what `tinylm sample` gives from that checkpoint."""
    from tinylm.training.checkpoint import load_for_inference
    _, c, model, tok = load_for_inference(trained_run)
    assert c.sample.strategy == "min_p"
    written = (trained_run / "samples.md").read_text().split("## step 20 ")[1].split("```\n")[1]
    assert written == sample_text(model, tok, c.sample, seed=c.train.seed) + "\n"


def test_decode_report_writes_table_and_samples(trained_run, tmp_path, capsys):
    from tinylm.cli import main
    assert main(["decode-report", str(trained_run), "--n", "2", "--prompts", "2", "--prompt-tokens", "16",
                 "--max-new-tokens", "24", "--out", str(tmp_path),
                 "--variant", "hot:strategy=sample,temperature=1.5"]) == 0
    md = (tmp_path / "decode_report.md").read_text()
    for row in ("reference", "greedy", "beam", "sample", "top_k", "top_p", "min_p", "contrastive", "hot"):
        assert f"| {row} |" in md and f"**{row}**" in md
    assert md.count("### Prompt") == 2
    assert main(["decode-report", str(trained_run), "--strategies", "nucleus"]) == 2
    assert "unknown strategy 'nucleus'" in capsys.readouterr().err


def test_decode_report_rows_start_from_the_runs_sample_settings(trained_run, tmp_path, capsys):
    """The run asks for min_p 0.05; the command line for temperature 0.5 and a repetition penalty:
    every row decodes with them, under its own strategy."""
    from tinylm.cli import main
    assert main(["decode-report", str(trained_run), "--n", "1", "--prompts", "1", "--prompt-tokens", "8",
                 "--max-new-tokens", "8", "--out", str(tmp_path), "--strategies", "greedy,top_k,min_p,beam",
                 "--sample.temperature", "0.5", "--sample.repetition_penalty", "1.3"]) == 0
    md = (tmp_path / "decode_report.md").read_text()
    assert "| greedy | repetition_penalty 1.3 |" in md
    assert "| top_k | temperature 0.5, top_k 200, repetition_penalty 1.3 |" in md  # the run's top_k (the default)
    assert "| min_p | temperature 0.5, min_p 0.05, repetition_penalty 1.3 |" in md
    assert "| beam | num_beams 4, length_penalty 1.0, early_stopping True, repetition_penalty 1.3 |" in md
    capsys.readouterr()


def test_report_variants_change_only_the_strategy_and_the_knobs_it_needs():
    from tinylm.generation.decode_report import make_variants
    base = SampleConfig(temperature=0.7, top_k=0, top_p=0.95, num_beams=1, presence_penalty=0.5, num_samples=3)
    named, custom = ["sample", "top_k", "top_p", "beam"], [("hot", {"temperature": "1.5"})]
    rows = {v.name: v.cfg for v in make_variants(named, custom, base)}
    assert rows["top_k"] == replace(base, strategy="top_k", top_k=40, num_samples=1)  # off in the run: the standard k
    assert rows["top_p"] == replace(base, strategy="top_p", num_samples=1)  # the run's own 0.95
    assert rows["beam"] == replace(base, strategy="beam", num_beams=4, num_samples=1)
    assert rows["sample"] == replace(base, strategy="sample", num_samples=1)
    assert rows["hot"] == replace(base, temperature=1.5, num_samples=1)
