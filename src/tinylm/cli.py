"""Command line: parses arguments and calls library functions; no logic of its own.

    tinylm prepare  --config configs/shakespeare-char.toml [--data.corpus x ...] [--force]
    tinylm train    --config configs/shakespeare-char.toml [--optim.lr 1e-3 ...] [--resume]
    tinylm sample   runs/shakespeare-char [--prompt "ROMEO:"] [--temperature 0.8] [--top-k 200]
    tinylm info     runs/shakespeare-char
    tinylm config   --config configs/shakespeare-char.toml [overrides] [--keys]
    tinylm tokenizer train --corpus tinystories --vocab-size 4096 --out tok.txt
    tinylm tokenizer encode|decode|stats ...
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import TinyLMError

OVERRIDES_HELP = "then any config overrides as --section.key value (see `tinylm config --keys`)"


def _config_from(args, extra: list[str]):
    from .config import build_config
    return build_config(args.config, extra)


def cmd_prepare(args, extra) -> int:
    from .data import ensure_prepared, prepare
    cfg = _config_from(args, extra)
    if args.force:
        prepare(cfg.data, progress=cfg.run.progress)
    else:
        meta = ensure_prepared(cfg.data, progress=cfg.run.progress)
        print(f"{cfg.data.dir}: {meta['train']['tokens']:,} train + {meta['val']['tokens']:,} val tokens, "
              f"vocab {meta['vocab_size']} ({meta['tokenizer_kind']})")
    return 0


def cmd_train(args, extra) -> int:
    from .train import shutdown_distributed, train
    cfg = _config_from(args, extra)
    try:
        result = train(cfg, resume=args.resume)
    finally:
        shutdown_distributed()
    return 130 if result.stopped_early else 0


def _load_for_inference(run: str, which: str):
    from . import checkpoint as ckpt
    from .data import load_data_tokenizer
    from .model import GPT
    path = ckpt.resolve_checkpoint(run, which)
    cfg = ckpt.checkpoint_config(path)
    model = GPT(cfg.model)
    model.load_state_dict(ckpt.load_part(path, "model"))
    model.eval()
    return path, cfg, model, load_data_tokenizer(cfg.data.dir)


def cmd_sample(args, extra) -> int:
    from .generate import sample_text
    if extra:
        raise TinyLMError(f"unexpected arguments {extra}; see `tinylm sample --help`")
    path, cfg, model, tok = _load_for_inference(args.run, args.checkpoint)
    s = cfg.sample
    for i in range(args.num_samples or s.num_samples):
        text = sample_text(model, tok, s.prompt if args.prompt is None else args.prompt,
                           args.max_new_tokens or s.max_new_tokens,
                           temperature=args.temperature or s.temperature,
                           top_k=s.top_k if args.top_k is None else args.top_k,
                           seed=(cfg.train.seed if args.seed is None else args.seed) + i)
        print(f"--- sample {i + 1} ({path.name}) ---\n{text}")
    return 0


def cmd_info(args, extra) -> int:
    from . import checkpoint as ckpt
    from .model import GPT
    path = ckpt.resolve_checkpoint(args.run, args.checkpoint)
    meta = ckpt.read_meta(path)
    cfg = ckpt.checkpoint_config(path)
    model = GPT(cfg.model)
    m = cfg.model
    info = {
        "checkpoint": str(path), "step": meta["step"], "tokens_seen": meta["tokens_seen"],
        "val_loss": meta["val_loss"], "best_val_loss": meta["best_val_loss"],
        "parameters": model.num_params(), "non_embedding_parameters": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(),
        "model": f"{m.n_layer} layers, width {m.n_embd}, {m.n_head} heads, context {m.block_size}, "
                 f"vocab {m.vocab_size}, {m.norm}/{m.pos}/{m.mlp}",
        "data": f"{cfg.data.corpus} ({cfg.data.tokenizer}) in {cfg.data.dir}",
        "saved_at": meta["saved_at"], "versions": meta["versions"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>26}: {v}")
    return 0


def cmd_export(args, extra) -> int:
    from pathlib import Path

    from . import checkpoint as ckpt
    path = ckpt.resolve_checkpoint(args.run, args.checkpoint)
    n = ckpt.export_safetensors(path, Path(args.out))
    print(f"{args.out}: {n} tensors from {path}")
    return 0


def cmd_config(args, extra) -> int:
    from .config import describe_keys, to_toml
    print(describe_keys() if args.keys else to_toml(_config_from(args, extra)))
    return 0


def _load_any_tokenizer(spec: str):
    from .tokenizer import load_tokenizer
    if spec == "gpt2":
        from .tokenizer.bpe import BPETokenizer
        return BPETokenizer.from_tiktoken("gpt2")
    return load_tokenizer(spec)


def cmd_tok_train(args, extra) -> int:
    from . import corpora
    from .tokenizer.bpe import BPETokenizer
    corpus = corpora.get_corpus(args.corpus)
    specials = [s for s in args.special_tokens.split(",") if s]
    texts = corpora.iter_corpus(corpus, separator=specials[0] if specials else "\n\n")
    tok = BPETokenizer.train(texts, args.vocab_size, special_tokens=specials, pattern=args.pattern,
                             workers=args.workers or None, progress=True)
    tok.save(args.out)
    print(f"{args.out}: {tok.vocab_size} tokens ({tok.n_merges} merges, special {list(tok.special_tokens)})")
    return 0


def cmd_tok_encode(args, extra) -> int:
    tok = _load_any_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(map(str, tok.encode(text, allowed_special=args.allowed_special))))
    return 0


def cmd_tok_decode(args, extra) -> int:
    from .tokenizer.bpe import parse_ids
    tok = _load_any_tokenizer(args.tokenizer)
    sys.stdout.write(tok.decode(parse_ids(args.ids if args.ids is not None else sys.stdin.read())))
    return 0


def cmd_tok_stats(args, extra) -> int:
    import itertools

    from . import corpora
    from .tokenizer.bpe import format_token_stats, token_stats
    corpus = corpora.get_corpus(args.corpus)
    sample, n = [], 0
    for chunk in itertools.takewhile(lambda _: n < args.max_chars, corpora.iter_corpus(corpus)):
        sample.append(chunk)
        n += len(chunk)
    sizes = [int(v) for v in args.vocab_sizes.split(",")]
    rows = token_stats(sample, sizes, args.width, progress=True)
    print(f"corpus {args.corpus}: {n:,} characters\n")
    print(format_token_stats(rows, args.width))
    return 0


def _add_tokenizer_commands(sub) -> None:
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
    tsub.choices["encode"].add_argument("--allowed-special", default="none",
                                        help="'all' to turn special-token text into its id")
    tsub.choices["decode"].add_argument("--ids", help='ids like "15496 995" (default: stdin)')
    sp = tsub.add_parser("stats", help="tokens per character and embedding cost for several vocab sizes")
    sp.add_argument("--corpus", required=True)
    sp.add_argument("--vocab-sizes", default="256,1024,4096,16384", help="comma-separated")
    sp.add_argument("--width", type=int, default=384, help="model width for the embedding-parameter column")
    sp.add_argument("--max-chars", type=int, default=5_000_000, help="characters of the corpus to use")
    sp.set_defaults(func=cmd_tok_stats)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinylm", description="Train small language models from raw text.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=f"{help} {OVERRIDES_HELP}.")
        sp.add_argument("--config", help="TOML preset, e.g. configs/shakespeare-char.toml")
        return sp

    sp = with_config("prepare", "Tokenize a corpus into train/val token shards.")
    sp.add_argument("--force", action="store_true", help="rebuild even if the data folder exists")
    sp.set_defaults(func=cmd_prepare)

    sp = with_config("train", "Train a model (prepares the data first if needed).")
    sp.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    sp.set_defaults(func=cmd_train)

    sp = with_config("config", "Print the resolved config as TOML.")
    sp.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    sp.set_defaults(func=cmd_config)

    for name, help, func in (("sample", "Generate text from a trained run.", cmd_sample),
                             ("info", "Show a run's or checkpoint's config, size and losses.", cmd_info),
                             ("export", "Write a checkpoint's model weights alone as safetensors.", cmd_export)):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("run", help="run folder (runs/<name>) or a checkpoint folder")
        sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
        sp.set_defaults(func=func)
        if name == "info":
            sp.add_argument("--json", action="store_true", help="print JSON")
        if name == "export":
            sp.add_argument("--out", required=True, help="file to write, e.g. model.safetensors")
    _add_tokenizer_commands(sub)
    sample = sub.choices["sample"]
    sample.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    sample.add_argument("--max-new-tokens", type=int)
    sample.add_argument("--temperature", type=float)
    sample.add_argument("--top-k", type=int, help="0 turns top-k off")
    sample.add_argument("--num-samples", type=int)
    sample.add_argument("--seed", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.func(args, extra)
    except TinyLMError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinylm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
