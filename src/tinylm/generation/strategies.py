"""Which [sample] settings each decoding strategy reads, and what values they may take: the one table.

:data:`STRATEGIES` says, per strategy, which settings it reads and which of them make it what it
is; :data:`SETTINGS` says, per setting, its valid values and the value that turns it off. Everything
that depends on that knowledge reads it here: the config's checks (:func:`check_sample`, called by
``config.validate``), the logits processors' own checks (:func:`check_setting`), which processors a
strategy gets (``sampling.build_processors``), the one-line description of the settings in use
(:func:`describe_strategy`), the CLI's "--top-k does nothing with --strategy top_p" and the decode
report's rows. A new strategy is one row of :data:`STRATEGIES` plus its loop in ``generate.py``.

The ``[sample]`` section of the config (:class:`SampleConfig`) lives here, beside the table it is checked
against; ``config`` composes it. No torch here: importing ``config`` stays instant.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

from ..errors import TinyLMError


@dataclass
class SampleConfig:
    prompt: str = "\n"
    """Text the samples start from."""
    max_new_tokens: int = 300
    """Tokens generated per sample (fewer if an end-of-text token or a stop string comes first)."""
    stop_at_eot: bool = True
    """End a sample at the end-of-text token (false: go on past it into a new document)."""
    strategy: str = "sample"
    """greedy | sample (temperature + every filter below that is on) | top_k | top_p | min_p (temperature + that
    one filter) | beam | contrastive; which settings each reads: the STRATEGIES table in
    tinylm/generation/strategies.py."""
    temperature: float = 0.8
    """Softmax temperature (> 0) for the sampling strategies; lower is more conservative."""
    top_k: int = 200
    """Sample among the k most likely tokens; 0 turns it off."""
    top_p: float = 1.0
    """Nucleus sampling: keep the fewest most likely tokens whose probabilities sum to >= top_p; 1 turns it off."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p x the most likely token's probability; 0 turns it off."""
    repetition_penalty: float = 1.0
    """CTRL penalty on tokens already in the text (positive logits / r, negative x r), every strategy; 1 turns it
    off."""
    frequency_penalty: float = 0.0
    """Subtract this x (times the token occurred so far) from its logit, every strategy; 0 turns it off."""
    presence_penalty: float = 0.0
    """Subtract this from the logit of every token that occurred so far, every strategy; 0 turns it off."""
    no_repeat_ngram: int = 0
    """Never produce the same n-gram of this many tokens twice, every strategy; 0 turns it off."""
    num_beams: int = 4
    """Beams kept by strategy = beam (1 = greedy)."""
    length_penalty: float = 1.0
    """Beam score = sum of log-probabilities / length ** length_penalty; > 0 favours longer, 0 = plain sum."""
    early_stopping: bool = True
    """Beam search stops as soon as num_beams hypotheses have ended (false: when no live beam can beat them)."""
    contrastive_k: int = 4
    """Candidate tokens per step for strategy = contrastive."""
    contrastive_alpha: float = 0.6
    """Contrastive search: score = (1 - alpha) x probability - alpha x max cosine similarity to the context;
    0 = greedy."""
    overflow: Literal["slide", "stop"] = "slide"
    """At the context length: slide (keep the newest 3/4 of the context, re-read it, go on) | stop."""
    num_samples: int = 1
    """Samples per prompt for `tinylm sample`, sample i with seed + i (beam: the n best beams)."""
    compile: bool = False
    """`tinylm sample`: torch.compile the one-token decode step (pays 15-60 s once; ~1.5x more tokens/s at batch 1
    on CPU)."""



@dataclass(frozen=True)
class Strategy:
    """One decoding strategy's settings."""
    reads: tuple[str, ...]
    """The [sample] settings it reads, besides the :data:`PENALTIES` that every strategy reads."""
    needs: dict[str, float] = field(default_factory=dict)
    """Those that make it what it is, with a common value (from its paper or common practice): a
    decode-report row sets it where the run has it off, and messages give it as the example."""


# the order is the decode report's: the deterministic strategies around the sampling ones
STRATEGIES: dict[str, Strategy] = {
    "greedy": Strategy(()),
    "beam": Strategy(("num_beams", "length_penalty", "early_stopping"), {"num_beams": 4}),
    "sample": Strategy(("temperature", "top_k", "top_p", "min_p")),  # every filter that is on
    "top_k": Strategy(("temperature", "top_k"), {"top_k": 40}),
    "top_p": Strategy(("temperature", "top_p"), {"top_p": 0.9}),
    "min_p": Strategy(("temperature", "min_p"), {"min_p": 0.1}),
    "contrastive": Strategy(("contrastive_k", "contrastive_alpha"), {"contrastive_k": 4, "contrastive_alpha": 0.6}),
}
PENALTIES = ("repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram")
SAMPLING = tuple(name for name, s in STRATEGIES.items() if "temperature" in s.reads)  # draw from a distribution


@dataclass(frozen=True)
class Setting:
    """The valid values of one [sample] setting."""
    valid: Callable[[float], bool]
    text: str
    """The valid values in words, for messages: ``"in (0, 1]"``."""
    off: float | None = None
    """The value that turns it off, valid in a config (beam and contrastive search with theirs off are greedy)."""


SETTINGS: dict[str, Setting] = {
    "max_new_tokens": Setting(lambda v: v > 0, "positive"),
    "num_samples": Setting(lambda v: v >= 1, ">= 1"),
    "temperature": Setting(lambda v: v > 0 and math.isfinite(v), "> 0"),
    "top_k": Setting(lambda v: v >= 1, ">= 1", off=0),
    "top_p": Setting(lambda v: 0 < v <= 1, "in (0, 1]", off=1.0),
    "min_p": Setting(lambda v: 0 <= v < 1, "in [0, 1)", off=0.0),
    "repetition_penalty": Setting(lambda v: v > 0 and math.isfinite(v), "> 0 (> 1 penalizes)", off=1.0),
    "frequency_penalty": Setting(math.isfinite, "a finite number", off=0.0),
    "presence_penalty": Setting(math.isfinite, "a finite number", off=0.0),
    "no_repeat_ngram": Setting(lambda v: v >= 1, ">= 1", off=0),
    "num_beams": Setting(lambda v: v >= 1, ">= 1", off=1),
    "length_penalty": Setting(math.isfinite, "a finite number"),
    "contrastive_k": Setting(lambda v: v >= 1, ">= 1", off=1),
    "contrastive_alpha": Setting(lambda v: 0 <= v <= 1, "in [0, 1]", off=0.0),
}


def samples_per_prompt(s: SampleConfig) -> int:
    """Completions each prompt gets: ``num_samples`` for the sampling strategies (sample i with seed + i) and for
    beam search (its best beams); one for greedy and contrastive search, which are deterministic."""
    return s.num_samples if s.strategy in SAMPLING or s.strategy == "beam" else 1


def is_off(key: str, value: float) -> bool:
    """Does ``value`` turn the setting off? ``is_off("top_p", 1.0) -> True``; temperature is never off."""
    off = SETTINGS[key].off if key in SETTINGS else None
    return off is not None and value == off


def check_setting(key: str, value: float, name: str | None = None, allow_off: bool = True) -> None:
    """Refuse a value outside the setting's range: ``--sample.top_p 1.5 must be in (0, 1]; 1.0 turns it off``.

    A logits processor passes ``allow_off=False``: a processor that is off is one not made.
    """
    s = SETTINGS[key]
    if not (s.valid(value) or (allow_off and is_off(key, value))):
        off = f"; {s.off} turns it off" if s.off is not None else ""
        raise TinyLMError(f"{name or key} {value} must be {s.text}{off}")


def in_use(s: SampleConfig) -> list[str]:
    """The settings ``s.strategy`` reads that are on: ``["temperature", "top_p"]`` for top_p sampling."""
    keys = STRATEGIES[s.strategy].reads + PENALTIES
    return [k for k in keys if not is_off(k, getattr(s, k))]


def describe_settings(s: SampleConfig) -> str:
    """``"temperature 0.8, top_p 0.9"`` for top_p sampling; "" when no setting matters (plain greedy)."""
    return ", ".join(f"{k} {getattr(s, k)}" for k in in_use(s))


def describe_strategy(s: SampleConfig) -> str:
    """``"strategy top_p (temperature 0.8, top_p 0.9)"``: the strategy and the settings that matter for it."""
    shown = describe_settings(s)
    return f"strategy {s.strategy}" + (f" ({shown})" if shown else "")


def check_sample(s: SampleConfig, flags: Collection[str] = (), given: Collection[str] = ()) -> None:
    """Check a [sample] section; every message names the flags to change.

    ``flags``: the settings that have a command-line flag of their own (``top_p`` -> ``--top-p``),
    named so in messages; any other is ``--sample.KEY``. ``given``: the settings set by those
    flags, each of which must be read by the strategy (a flag that does nothing is a mistake).
    """
    def flag(key: str) -> str:
        return "--" + key.replace("_", "-") if key in flags else f"--sample.{key}"

    if s.strategy not in STRATEGIES:
        raise TinyLMError(f"{flag('strategy')} {s.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for key in given:
        users = [name for name, st in STRATEGIES.items() if key in st.reads]
        if users and s.strategy not in users:
            raise TinyLMError(f"{flag(key)} does nothing with {flag('strategy')} {s.strategy} (it is used by "
                              f"{', '.join(users)}); drop it, or use {flag('strategy')} sample to combine filters")
    for key in SETTINGS:
        check_setting(key, getattr(s, key), flag(key))
    # top_k / top_p / min_p sampling with its filter off would be plain sampling under another name
    # (beam and contrastive search with theirs off are greedy search, as their papers define it)
    needs = STRATEGIES[s.strategy].needs if s.strategy in SAMPLING else {}
    for key, example in needs.items():
        if is_off(key, getattr(s, key)):
            raise TinyLMError(f"{flag('strategy')} {s.strategy} needs {flag(key)}, e.g. {flag(key)} {example} "
                              f"({key} {getattr(s, key)} turns it off)")
    if s.strategy == "beam" and s.num_samples > s.num_beams:
        raise TinyLMError(f"{flag('num_samples')} {s.num_samples} > {flag('num_beams')} {s.num_beams}: beam search "
                          f"returns at most one sequence per beam; raise {flag('num_beams')} or lower "
                          f"{flag('num_samples')}")
