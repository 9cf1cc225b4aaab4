"""``tinylm tokenizer stats``: what each vocabulary size costs (embedding parameters) and buys (tokens per character).

On English: ~1.0 tokens/char at 256 ids, ~0.35 at 4096, ~0.25 for GPT-2's 50,257.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from ..errors import TinyLMError
from .bpe import BPETokenizer


def token_stats(texts: Iterable[str], vocab_sizes: Sequence[int], width: int, *,
                pattern: str = "gpt2", gpt2: bool = True, eval_texts: Iterable[str] | None = None,
                workers: int | None = None, progress: bool = False) -> list[dict]:
    """``tinylm tokenizer stats``: what each vocabulary size costs and buys on a corpus.

    Trains one BPE tokenizer (no special tokens) on ``texts`` up to ``max(vocab_sizes)`` and
    truncates it to each size (merges form a chain, so that equals training to each size), plus
    GPT-2's own tokenizer when ``gpt2`` (skipped with a note if tiktoken's files are
    unavailable). Each row: tokens per character and bytes per token of ``eval_texts``
    (default: the training text itself) and the embedding parameters ``vocab_size x width``
    (one tied embedding; double it for an untied output layer). Holds the text in memory: pass
    a sample.
    """
    train_texts = [texts] if isinstance(texts, str) else list(texts)
    evals = train_texts if eval_texts is None else ([eval_texts] if isinstance(eval_texts, str) else list(eval_texts))
    n_chars = sum(len(t) for t in evals)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in evals)
    if not n_chars:
        raise TinyLMError("token_stats needs some text; the corpus sample is empty")
    rows: list[dict] = []

    def row(label: str, tok: BPETokenizer, note: str = "") -> dict:
        n_tok = sum(len(ids) for ids in tok.encode_batch(evals, disallowed_special=()))  # text: specials too
        return {"tokenizer": label, "vocab_size": tok.vocab_size, "tokens": n_tok, "chars": n_chars,
                "bytes": n_bytes, "tokens_per_char": n_tok / n_chars, "bytes_per_token": n_bytes / n_tok,
                "chars_per_token": n_chars / n_tok, "embedding_params": tok.vocab_size * width,
                "note": note}

    sizes = sorted(set(vocab_sizes))
    if sizes:
        if sizes[0] < 256:
            raise TinyLMError(f"vocab size {sizes[0]} is below 256 (the byte tokens); use 256 or more")
        with warnings.catch_warnings():  # too few merges for the largest size: noted per row
            warnings.simplefilter("ignore")
            big = BPETokenizer.train(train_texts, sizes[-1], special_tokens=(), pattern=pattern,
                                     workers=workers, progress=progress)
        for v in sizes:
            if v > big.vocab_size:  # the corpus ran out of pairs: report the largest there is
                rows.append(row(f"bpe-{v}", big, f"capped: the corpus has only {big.n_merges} merges"))
            else:
                rows.append(row(f"bpe-{v}", big.truncated(v), "trained on this corpus"))
    if gpt2:
        try:
            rows.append(row("gpt2", BPETokenizer.from_tiktoken("gpt2"), "GPT-2's (tiktoken)"))
        except TinyLMError as e:  # offline without TIKTOKEN_CACHE_DIR: report, don't fail
            rows.append({"tokenizer": "gpt2", "vocab_size": 50257, "tokens": None, "chars": n_chars,
                         "bytes": n_bytes, "tokens_per_char": None, "bytes_per_token": None,
                         "chars_per_token": None, "embedding_params": 50257 * width,
                         "note": f"unavailable: {type(e).__name__} (set TIKTOKEN_CACHE_DIR)"})
    return rows


def format_token_stats(rows: Sequence[dict], width: int | None = None) -> str:
    """The :func:`token_stats` rows as a Markdown table (what ``tinylm tokenizer stats`` prints)."""
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    head = ["tokenizer", "vocab", "tokens/char", "bytes/token", "tokens", "embedding params"
            + (f" (d={width})" if width else ""), "note"]
    body = [[r["tokenizer"], f"{r['vocab_size']:,}", num(r["tokens_per_char"], ".3f"),
             num(r["bytes_per_token"], ".2f"), num(r["tokens"], ","), f"{r['embedding_params']:,}",
             r.get("note", "")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in body])
