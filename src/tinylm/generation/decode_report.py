"""The decoding comparison: every strategy on the same prompts, measured side by side.

    tinylm decode-report runs/shakespeare-char   # -> runs/shakespeare-char/decode_report.md (+ .png)

Prompts are windows cut from the run's validation split at evenly spaced offsets, and the text
that really followed each window is measured too (the "reference" row): a strategy whose numbers
sit near the reference writes text that is, by these measures, like the real thing. Quality is
for people to judge, so the samples are printed side by side under the table.

What is measured, per strategy (words are the whitespace-separated pieces of the decoded text,
so the numbers compare across tokenizers):

* distinct-1/2/3: distinct n-grams / n-grams within each text, averaged (1 = nothing repeats);
* rep-4: share of word 4-grams that repeat an earlier one of the same text (a loop gives ~1);
* across samples: distinct word bigrams over the N samples of a prompt pooled / bigrams pooled,
  averaged over prompts; a deterministic strategy (greedy, beam, contrastive) counts as N copies
  of its one answer, which is what asking it N times gives;
* entropy: the model's next-token entropy (nats, temperature 1) along the generated tokens;
* perplexity: exp of the mean negative log-likelihood the model gives the generated tokens;
* length in tokens, and generation speed (all prompts x samples in one batch).

The measures are here too: :func:`token_scores` (the model's log-probability and entropy at each
generated token), :func:`distinct_n` and :func:`repetition_rate`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config, SampleConfig, set_value, validate
from ..errors import TinyLMError
from ..fileio import Outputs, write_text_atomic
from ..model.gpt import GPT
from ..plotting import pyplot, save_figure
from ..tokenizer import Tokenizer
from .decode_state import Completion
from .generate import encode_prompt, generate
from .strategies import SAMPLING, STRATEGIES, describe_settings, is_off


@torch.inference_mode()
def token_scores(model: GPT, prompt: Sequence[int], tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own view of a continuation, at temperature 1 and without filters.

    Returns the log-probability (T,) of each of the T tokens given everything before it, and the
    entropy (T,) in nats of the model's next-token distribution at that point. The model's
    perplexity of the text is ``exp(-logprob.mean())``. A sequence longer than the context is read
    in windows that move by half the context, so each token is scored with at least
    block_size / 2 tokens before it (or all of them, near the start).
    """
    if not prompt:
        raise TinyLMError("token_scores needs a prompt of at least one token: the first token is predicted from "
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


@dataclass
class Variant:
    """One row of the report: a name and the complete settings it decodes with."""
    name: str
    cfg: SampleConfig


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"hot:strategy=sample,temperature=1.5"`` -> ``("hot", {"strategy": "sample", "temperature": "1.5"})``."""
    name, _, body = spec.partition(":")
    if not name or not body:
        raise TinyLMError(f"--variant {spec!r} should look like NAME:key=value,key=value "
                          f"(keys of [sample], e.g. hot:strategy=sample,temperature=1.5)")
    settings = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise TinyLMError(f"--variant {spec!r}: {item!r} is not key=value")
        settings[key.strip()] = value.strip()
    return name, settings


def make_variants(names: Sequence[str], extra: Sequence[tuple[str, dict]], base: SampleConfig) -> list[Variant]:
    """One row per named strategy plus the custom ones, each a validated SampleConfig that starts from
    ``base`` (the run's settings, with the --sample.* overrides): a named row changes the strategy,
    and a setting the strategy needs (``Strategy.needs``: its common value) only where ``base`` has it
    off; a custom row changes exactly the keys it names."""
    for name in names:
        if name not in STRATEGIES:
            raise TinyLMError(f"unknown strategy {name!r} for the report; choose from {', '.join(STRATEGIES)} "
                              f"or add your own with --variant NAME:key=value,...")
    rows = [(name, {"strategy": name, **{k: v for k, v in STRATEGIES[name].needs.items()
                                         if is_off(k, getattr(base, k))}}) for name in names]
    out = []
    for name, settings in rows + list(extra):
        cfg = Config(sample=replace(base, num_samples=1))  # the report asks for its own number of samples
        for key, value in settings.items():
            set_value(cfg, f"sample.{key}", value)
        validate(cfg)
        out.append(Variant(name, cfg.sample))
    return out


@dataclass
class Row:
    """The measurements of one strategy (or of the reference text)."""
    name: str
    settings: str
    texts: list[list[str]]  # [prompt][sample]
    distinct: tuple[float, float, float] = (math.nan,) * 3
    rep4: float = math.nan
    across: float = math.nan
    entropy: float = math.nan
    perplexity: float = math.nan
    length: float = math.nan
    tokens_per_s: float = math.nan
    stop_reasons: dict[str, int] = field(default_factory=dict)


def validation_prompts(data_dir: str | Path, n_prompts: int, prompt_tokens: int,
                       continuation_tokens: int) -> list[tuple[list[int], list[int]]]:
    """``n_prompts`` (prompt, what really followed) pairs cut from the validation split at evenly
    spaced offsets: the same pairs every time for the same data."""
    from ..data.shards import load_meta, read_shard
    meta = load_meta(data_dir)
    tokens = np.concatenate([np.asarray(read_shard(Path(data_dir) / s)) for s in meta["val"]["shards"]])
    span = prompt_tokens + continuation_tokens
    if len(tokens) < span:
        raise TinyLMError(f"the validation split of {data_dir} has {len(tokens)} tokens, fewer than one prompt "
                          f"+ continuation ({span}); use smaller --prompt-tokens / --max-new-tokens")
    starts = np.linspace(0, len(tokens) - span, n_prompts).astype(int)
    return [(tokens[s:s + prompt_tokens].tolist(), tokens[s + prompt_tokens:s + span].tolist()) for s in starts]


def measure(model: GPT, row: Row, prompts: list[list[int]],
            completions: list[list[list[int]]], n: int) -> Row:
    """Fill in a row's numbers from its texts and the model's scores of its tokens."""
    words = [[t.split() for t in per_prompt] for per_prompt in row.texts]
    flat = [w for per_prompt in words for w in per_prompt]
    row.distinct = tuple(float(np.mean([distinct_n(w, k) for w in flat])) for k in (1, 2, 3))
    row.rep4 = float(np.mean([repetition_rate(w, 4) for w in flat]))
    pooled = []
    for per_prompt in words:
        copies = per_prompt * (n // len(per_prompt))  # a deterministic strategy: n copies of its answer
        grams = [g for w in copies for g in ngrams(w, 2)]
        pooled.append(len(set(grams)) / len(grams) if grams else 1.0)
    row.across = float(np.mean(pooled))
    logps, ents, lengths = [], [], []
    for prompt, per_prompt in zip(prompts, completions, strict=True):
        for tokens in per_prompt:
            lengths.append(len(tokens))
            if tokens:
                lp, ent = token_scores(model, prompt, tokens)
                logps.append(lp)
                ents.append(ent)
    if logps:
        all_lp, all_ent = np.concatenate([x.numpy() for x in logps]), np.concatenate([x.numpy() for x in ents])
        row.perplexity = float(np.exp(-all_lp.mean()))
        row.entropy = float(all_ent.mean())
    row.length = float(np.mean(lengths))
    return row


def run_report(model: GPT, tok: Tokenizer, pairs: list[tuple[list[int], list[int] | None]],
               variants: list[Variant], *, n: int, seed: int,
               log: Callable[[str], None] = print) -> list[Row]:
    """Generate with every variant from the same prompts and measure everything.

    ``pairs`` are (prompt ids, reference continuation ids or None). Returns the reference row
    (when references are given) followed by one row per variant.
    """
    prompts = [p for p, _ in pairs]
    rows = []
    if all(ref is not None for _, ref in pairs):
        ref = Row("reference", "the text that followed in the validation split",
                  [[tok.decode(r)] for _, r in pairs])
        rows.append(measure(model, ref, prompts, [[r] for _, r in pairs], 1))
        ref.across = math.nan  # one text per prompt: nothing to compare across
    for v in variants:
        cfg = replace(v.cfg, num_samples=n) if v.cfg.strategy in SAMPLING else v.cfg
        t0 = time.perf_counter()
        results: list[list[Completion]] = generate(model, prompts, cfg, seed=seed, eot_id=tok.eot_token)
        seconds = time.perf_counter() - t0
        n_tokens = sum(len(c.tokens) for per_prompt in results for c in per_prompt)
        row = Row(v.name, describe_settings(v.cfg) or "-",
                  [[tok.decode(c.tokens) for c in per_prompt] for per_prompt in results])
        row.tokens_per_s = n_tokens / seconds if seconds > 0 else math.nan
        for per_prompt in results:
            for c in per_prompt:
                row.stop_reasons[c.stop_reason] = row.stop_reasons.get(c.stop_reason, 0) + 1
        rows.append(measure(model, row, prompts, [[c.tokens for c in pp] for pp in results], n))
        log(f"decode-report: {v.name}: {n_tokens} tokens in {seconds:.1f} s")
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot_rows(rows: list[Row], path: Path) -> bool:
    """Diversity (distinct-2) against the model's perplexity of the samples; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import ScalarFormatter
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=120)
    markers = "osD^vP<>Xh"
    for i, r in enumerate(x for x in rows if not math.isnan(x.perplexity)):
        ref = r.name == "reference"
        ax.scatter([r.perplexity], [r.distinct[1]], marker="*" if ref else markers[i % len(markers)],
                   s=180 if ref else 55, color="black" if ref else None, zorder=3, label=r.name, alpha=0.85)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("model perplexity of the generated text (log scale; left = likelier to the model)")
    ax.set_ylabel("distinct-2 within a text (up = less repetition)")
    ax.set_title("Decoding strategies: diversity vs model likelihood")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(plt, fig, path)


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


def render_markdown(rows: list[Row], *, title: str, setup: list[str], prompts_text: list[str],
                    png_name: str | None, sample_chars: int = 600) -> str:
    """The report: setup, the table, the plot, how to read it, then the samples side by side."""
    out = [f"# {title}", ""] + [f"- {line}" for line in setup] + [""]
    out += ["| strategy | settings | distinct-1 | distinct-2 | distinct-3 | rep-4 | across samples "
            "| entropy (nats) | perplexity | length (tokens) | tokens/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.name} | {r.settings} | {_fmt(r.distinct[0])} | {_fmt(r.distinct[1])} | "
                   f"{_fmt(r.distinct[2])} | {_fmt(r.rep4)} | {_fmt(r.across)} | {_fmt(r.entropy, 2)} | "
                   f"{_fmt(r.perplexity, 2)} | {_fmt(r.length, 0)} | {_fmt(r.tokens_per_s, 0)} |")
    out.append("")
    if png_name:
        out += [f"![diversity vs model likelihood]({png_name})", ""]
    out += ["How to read it: distinct-n is the share of a text's word n-grams that are unique (higher = less "
            "repetition); rep-4 the share of word 4-grams that repeat an earlier one (a loop gives ~1); "
            "*across samples* pools the samples of a prompt (deterministic strategies count as identical "
            "copies, so low); entropy is the model's uncertainty along the generated tokens; perplexity is "
            "how likely the model finds the text (greedy and beam search chase low perplexity and tend to "
            "loop; pure sampling matches the model's own distribution, typos included). The reference row "
            "is real text: a strategy near it on both axes writes text that is, by these numbers, like the "
            "real thing. Quality is for you to judge below.", ""]
    stops = {r.name: r.stop_reasons for r in rows if r.stop_reasons}
    if any(set(s) - {"length"} for s in stops.values()):
        out += ["Why samples ended: " + "; ".join(f"{k}: " + ", ".join(f"{reason} {c}" for reason, c in v.items())
                                                   for k, v in stops.items()), ""]
    out += ["## Samples", "",
            f"The first sample of each strategy for each prompt (up to {sample_chars} characters).", ""]
    for i, prompt in enumerate(prompts_text):
        out += [f"### Prompt {i + 1}", "", _fence(prompt), ""]
        for r in rows:
            text = r.texts[i][0]
            more = " …" if len(text) > sample_chars else ""
            out += [f"**{r.name}**", "", _fence(text[:sample_chars] + more), ""]
    return "\n".join(out)


def decode_report(model: GPT, tok: Tokenizer, cfg: Config, out_dir: str | Path, *,
                  strategies: Sequence[str] = tuple(STRATEGIES), extra_variants: Sequence[tuple[str, dict]] = (),
                  n: int = 5, n_prompts: int = 4, prompt_tokens: int = 64, max_new_tokens: int = 200,
                  seed: int = 0, title: str = "Decoding report", log: Callable[[str], None] = print) -> Path:
    """Write ``decode_report.md`` (and ``decode_report.png`` when matplotlib is installed) to out_dir.

    Prompts come from the validation split of ``cfg.data.dir``; without it, the run's
    ``sample.prompt`` is the one prompt and there is no reference row. Returns the markdown path.
    """
    if n < 1 or n_prompts < 1 or prompt_tokens < 1 or max_new_tokens < 1:
        raise TinyLMError("--n, --prompts, --prompt-tokens and --max-new-tokens must all be >= 1")
    variants = make_variants(strategies, extra_variants, replace(cfg.sample, max_new_tokens=max_new_tokens))
    out_dir = Path(out_dir)
    files = Outputs([out_dir / "decode_report.md", out_dir / "decode_report.png"])  # refused before decoding
    try:
        pairs = validation_prompts(cfg.data.dir, n_prompts, min(prompt_tokens, model.cfg.block_size), max_new_tokens)
        source = (f"{n_prompts} windows of {prompt_tokens} tokens at evenly spaced offsets of the validation split "
                  f"of `{cfg.data.dir}`; the reference row is the {max_new_tokens} tokens that followed each")
    except TinyLMError as e:
        log(f"decode-report: no validation prompts ({e}); using sample.prompt {cfg.sample.prompt!r}")
        pairs = [(encode_prompt(tok, cfg.sample.prompt), None)]
        source = f"the run's sample.prompt {cfg.sample.prompt!r} (no validation split found)"
    rows = run_report(model, tok, pairs, variants, n=n, seed=seed, log=log)
    png = out_dir / "decode_report.png"
    with files:
        has_png = plot_rows(rows, png)
    if not has_png:
        log("decode-report: matplotlib is not installed, so no plot (pip install 'tinylm[plot]')")
    m = model.cfg
    setup = [f"model: {m.n_layer} layers, width {m.n_embd}, context {m.block_size}, vocab {m.vocab_size} "
             f"({model.num_params() / 1e6:.2f}M parameters)",
             f"prompts: {source}",
             f"{n} samples per prompt for the sampling strategies (sample i with seed {seed} + row), one for the "
             f"deterministic ones; up to {max_new_tokens} new tokens each",
             f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}; tokens/s = all of a strategy's rows in one batch, "
             f"on this machine at that moment"]
    md = render_markdown(rows, title=title, setup=setup, prompts_text=[tok.decode(p) for p, _ in pairs],
                         png_name=png.name if has_png else None)
    path = out_dir / "decode_report.md"
    with files:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, md + "\n")
    return path
