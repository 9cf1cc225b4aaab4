"""tinylm tokenizer train | encode | decode | stats: byte-level BPE tokenizers from the command line."""
from __future__ import annotations

import argparse
import sys

from ..errors import TinyLMError


def _load_any_tokenizer(spec: str):
    from ..tokenizer import load_tokenizer
    if spec == "gpt2":
        from ..tokenizer.bpe import BPETokenizer
        return BPETokenizer.from_tiktoken("gpt2")
    return load_tokenizer(spec)


def cmd_tok_train(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from ..data.corpora import get_corpus
    from ..data.documents import iter_corpus
    from ..fileio import Outputs
    from ..tokenizer.bpe import BPETokenizer
    out = Path(args.out)
    files = Outputs([out, out.with_suffix(".vocab.txt")])  # a file tinylm did not write is refused before training
    corpus = get_corpus(args.corpus)
    specials = [s for s in args.special_tokens.split(",") if s]
    texts = iter_corpus(corpus, separator=specials[0] if specials else "\n\n")
    tok = BPETokenizer.train(texts, args.vocab_size, special_tokens=specials, pattern=args.pattern,
                             workers=args.workers or None, progress=True)
    with files:
        tok.save(out)
    print(f"{args.out}: {tok.vocab_size} tokens ({tok.n_merges} merges, special {list(tok.special_tokens)})")
    return 0


def cmd_tok_encode(args: argparse.Namespace, extra: list[str]) -> int:
    from ..tokenizer import DisallowedSpecial
    tok = _load_any_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    if args.ordinary:
        ids = tok.encode_ordinary(text)
    else:
        allowed = args.allowed_special
        allowed = {s for s in allowed.split(",") if s} if allowed not in ("all", "none") else allowed
        try:
            ids = tok.encode(text, allowed_special=set() if allowed == "none" else allowed)
        except DisallowedSpecial as e:  # the library's message names Python arguments; say the flags
            raise TinyLMError(f"the text contains the special token {e.token!r} at character {e.position}; pass "
                              f"--allowed-special all to encode it as that token, or --ordinary to encode it as "
                              f"plain text") from None
    print(" ".join(map(str, ids)))
    return 0


def cmd_tok_decode(args: argparse.Namespace, extra: list[str]) -> int:
    from ..tokenizer.base import parse_ids
    tok = _load_any_tokenizer(args.tokenizer)
    sys.stdout.write(tok.decode(parse_ids(args.ids if args.ids is not None else sys.stdin.read())))
    return 0


def cmd_tok_stats(args: argparse.Namespace, extra: list[str]) -> int:
    from ..data.corpora import get_corpus
    from ..data.documents import head
    from ..tokenizer.stats import format_token_stats, token_stats
    sample = head(get_corpus(args.corpus), args.max_chars)
    n = sum(map(len, sample))
    sizes = [int(v) for v in args.vocab_sizes.split(",")]
    rows = token_stats(sample, sizes, args.width, progress=True)
    print(f"corpus {args.corpus}: {n:,} characters\n")
    print(format_token_stats(rows, args.width))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``tinylm tokenizer`` and its subcommands."""
    tp = sub.add_parser("tokenizer", help="Train, use and compare BPE tokenizers.",
                        description="Train, use and compare byte-level BPE tokenizers.")
    tsub = tp.add_subparsers(dest="tokenizer_command", required=True)
    sp = tsub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus")
    sp.add_argument("--corpus", required=True, help="named corpus or file/folder/glob")
    sp.add_argument("--vocab-size", type=int, required=True, help="256 bytes + merges + special tokens")
    sp.add_argument("--out", required=True, help="tokenizer file to write (plus a .vocab.txt listing)")
    sp.add_argument("--pattern", default="gpt2", help="pre-tokenizer: gpt2, cl100k or a regex")
    sp.add_argument("--special-tokens", default="<|endoftext|>", help="comma-separated; '' for none")
    sp.add_argument("--workers", type=int, default=0, help="processes for counting (0 = all cores)")
    sp.set_defaults(func=cmd_tok_train)
    for name, func in (("encode", cmd_tok_encode), ("decode", cmd_tok_decode)):
        sp = tsub.add_parser(name, help=f"{name} with a tokenizer file (or 'gpt2')")
        sp.add_argument("tokenizer", help="tokenizer file, or gpt2")
        sp.set_defaults(func=func)
    tsub.choices["encode"].add_argument("--text", help="text to encode (default: stdin)")
    specials = tsub.choices["encode"].add_mutually_exclusive_group()
    specials.add_argument("--allowed-special", default="none",
                          help="special tokens whose text becomes their id: all, none or a comma-separated "
                               "list (others in the text are an error)")
    specials.add_argument("--ordinary", action="store_true", help="encode special-token text as ordinary text")
    tsub.choices["decode"].add_argument("--ids", help='ids like "15496 995" (default: stdin)')
    sp = tsub.add_parser("stats", help="tokens per character and embedding cost for several vocab sizes")
    sp.add_argument("--corpus", required=True)
    sp.add_argument("--vocab-sizes", default="256,1024,4096,16384", help="comma-separated")
    sp.add_argument("--width", type=int, default=384, help="model width for the embedding-parameter column")
    sp.add_argument("--max-chars", type=int, default=5_000_000, help="characters of the corpus to use")
    sp.set_defaults(func=cmd_tok_stats)
