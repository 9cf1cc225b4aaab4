"""Command line: parses arguments and calls library functions; no logic of its own.

    tinylm prepare  --config configs/shakespeare-char.toml [--data.corpus x ...] [--force]
    tinylm train    --config configs/shakespeare-char.toml [--optim.lr 1e-3 ...] [--resume]
    tinylm lr-find  --config configs/tinyshakespeare-char.toml [--steps 200] [--start 1e-5 --end 1]
    tinylm sample   runs/shakespeare-char [--prompt "ROMEO:"] [--strategy top_p --top-p 0.9] [--n 3]
    tinylm decode-report runs/shakespeare-char [--strategies greedy,top_p] [--n 5]
    tinylm eval     runs/shakespeare-char [--checkpoint best] [--split train] [--tokens all] [--text file.txt]
    tinylm eval     hf/gpt2 --text file.txt      (a Hugging Face GPT-2 or Llama folder, e.g. an export)
    tinylm info     runs/shakespeare-char
    tinylm export   runs/shakespeare-char --out model.safetensors | --format hf --out hf/shakespeare
    tinylm import   gpt2 --out runs/gpt2
    tinylm config   --config configs/shakespeare-char.toml [overrides] [--keys]
    tinylm doctor   --config configs/tinyshakespeare-char.toml [overrides] [--json] | RUN | --nan RUN/nonfinite_step_N
    tinylm profile  --config configs/tinyshakespeare-char.toml [--steps 5] [--out DIR]
    tinylm tokenizer train --corpus tinystories --vocab-size 4096 --out tok.txt
    tinylm tokenizer encode|decode|stats ...
    tinylm report   runs/a [runs/b ...] [--out DIR]
    tinylm sweep    --config base.toml --grid grid.toml [--seeds 3] [--jobs 2] [--out DIR]
    tinylm scaling  --config base.toml --budgets 1e12,3e12,1e13 [--sizes 2,3,4,5] [--verify 8,3e13]
    tinylm plan     --params 124M [--gpu h100] | --tokens | --flops | --budget-usd | --table
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TinyLMError

if TYPE_CHECKING:  # the command line imports each command's modules only when it runs
    from .config import Config
    from .generate import Completion

OVERRIDES_HELP = "Any config setting can follow as --section.key value (every key: `tinylm config --keys`)."


def _config_from(args: argparse.Namespace, extra: list[str]) -> Config:
    from .config import build_config
    return build_config(args.config, extra)


def cmd_prepare(args: argparse.Namespace, extra: list[str]) -> int:
    from .data import ensure_prepared, prepare
    cfg = _config_from(args, extra)
    if args.force:
        prepare(cfg.data, force=True, run_dir=cfg.run_dir, progress=cfg.run.progress)
    else:
        meta = ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=cfg.run.progress)
        print(f"{cfg.data.dir}: {meta['train']['tokens']:,} train + {meta['val']['tokens']:,} val tokens, "
              f"vocab {meta['vocab_size']} ({meta['tokenizer_kind']})")
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .runtime import shutdown_distributed
    from .train import train
    cfg = _config_from(args, extra)
    try:
        result = train(cfg, resume=args.resume)
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(finished=True)
    return 130 if result.stopped_early else 0


def cmd_lr_find(args: argparse.Namespace, extra: list[str]) -> int:
    from .lr_find import lr_find
    lr_find(_config_from(args, extra), start=args.start, end=args.end, steps=args.steps, out=args.out,
            divisor=args.divisor)
    return 0


def _sample_settings(cfg: Config, args: argparse.Namespace, extra: list[str]) -> None:
    """A flag whose name is a [sample] key (--top-p: top_p) sets that setting; see generate.sample_settings."""
    from dataclasses import fields

    from .generate import sample_settings
    keys = {f.name for f in fields(cfg.sample)}
    sample_settings(cfg, extra, {k: v for k, v in vars(args).items() if k in keys})


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    from dataclasses import replace

    from .checkpoint import load_for_inference
    from .generate import generate_text
    from .strategies import SAMPLING, describe_strategy
    path, cfg, model, tok = load_for_inference(args.run, args.checkpoint, device=args.device)
    _sample_settings(cfg, args, extra)
    s = cfg.sample
    seed = cfg.train.seed if args.seed is None else args.seed
    stops = args.stop or []
    print(f"tinylm: {path.name}, {describe_strategy(s)}, seed {seed}", file=sys.stderr)
    if s.compile:
        model.compile_decoding()  # compiled at the first generated token

    def emit(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def report_end(c: Completion) -> None:
        if c.stop_reason == "context":
            print(f"\ntinylm: stopped at the context length ({cfg.model.block_size} tokens); "
                  f"--sample.overflow slide would go on", file=sys.stderr)

    if s.strategy == "beam":  # beams change until the end: print the n best when done
        results = generate_text(model, tok, [s.prompt], s, seed=seed, stop_strings=stops)[0]
        for i, c in enumerate(results):
            print(f"--- sample {i + 1} ({path.name}, beam score {c.score:.3f}) ---\n{s.prompt}{c.text}")
            report_end(c)
        return 0
    # one sample at a time so that each streams; sample i uses seed + i, as a batch of n would
    n = s.num_samples if s.strategy in SAMPLING else 1
    if s.num_samples > 1 and n == 1:
        print(f"tinylm: {s.strategy} is deterministic: one sample instead of {s.num_samples}", file=sys.stderr)
    one = replace(s, num_samples=1)
    for i in range(n):
        print(f"--- sample {i + 1} ({path.name}) ---")
        sys.stdout.write(s.prompt)
        c = generate_text(model, tok, [s.prompt], one, seed=seed + i, stop_strings=stops, on_text=emit)[0][0]
        print()
        report_end(c)
    return 0


def cmd_decode_report(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from .checkpoint import load_for_inference
    from .decode_report import decode_report, parse_variant
    path, cfg, model, tok = load_for_inference(args.run, args.checkpoint, device=args.device)
    _sample_settings(cfg, args, extra)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
    out = Path(args.out) if args.out else run_dir
    md = decode_report(model, tok, cfg, out, strategies=[x for x in args.strategies.split(",") if x],
                       extra_variants=[parse_variant(v) for v in args.variant or []], n=args.n,
                       n_prompts=args.prompts, prompt_tokens=args.prompt_tokens,
                       max_new_tokens=args.max_new_tokens or cfg.sample.max_new_tokens,
                       seed=cfg.train.seed if args.seed is None else args.seed,
                       title=f"Decoding report: {run_dir.name} ({path.name})",
                       log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {md}" + (f" and {md.with_suffix('.png')}" if md.with_suffix(".png").is_file() else ""))
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from .evaluate import evaluate_run, parse_tokens
    from .runtime import shutdown_distributed
    try:
        report = evaluate_run(args.run, checkpoint=args.checkpoint, split=args.split,
                              tokens=parse_tokens(args.tokens), text=args.text, batch_size=args.batch_size,
                              device=args.device)
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(finished=True)
    if report is None:  # another process of torchrun: rank 0 prints
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        what = "a Hugging Face folder" if report["step"] is None else f"step {report['step']}"
        print(f"{report['checkpoint']} ({what}) on {report['on']}:\n"
              f"loss {report['loss']:.4f}  perplexity {report['perplexity']:.3f}  bits per byte "
              f"{report['bits_per_byte']:.4f}  tokens {report['tokens']:,}  bytes {report['bytes']:,}")
    return 0


def cmd_info(args: argparse.Namespace, extra: list[str]) -> int:
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
        # older checkpoints recorded neither: say what is known
        "precision": meta.get("precision", f"not recorded (configured: {cfg.train.precision})"),
        "training_time": _duration(meta["train_seconds"]) if "train_seconds" in meta else "not recorded",
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


def _duration(seconds: float) -> str:
    """``3725.4 -> "1h02m05s (3725 s)"``."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s ({s} s)" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s ({s} s)"


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from . import checkpoint as ckpt
    path = ckpt.resolve_checkpoint(args.run, args.checkpoint)
    if args.format == "hf":
        from .interop.hf_export import export_hf
        arch = export_hf(path, Path(args.out))
        print(f"{args.out}: {arch} + tokenizer.json from {path}")
        return 0
    n = ckpt.export_safetensors(path, Path(args.out))
    print(f"{args.out}: {n} tensors from {path}")
    return 0


def cmd_import(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from .checkpoint import save_weights
    from .config import Config
    from .interop.hf_import import import_hf
    out = Path(args.out)
    cfg = Config()
    cfg.run.dir, cfg.run.name = str(out.parent), out.name
    source = import_hf(args.source)
    cfg.model = source.model
    cfg.data.tokenizer = "gpt2" if getattr(source.tokenizer, "name", "") == "gpt2" else "bpe"
    cfg.data.vocab_size = source.tokenizer.vocab_size
    step_dir = save_weights(cfg, source.state, source.tokenizer, source.source)
    m = cfg.model
    family = "GPT-2" if m.pos == "learned" else "Llama"
    print(f"{out}: {family} from {source.source} ({m.n_layer} layers, width {m.n_embd}, vocab {m.vocab_size}) "
          f"in {step_dir}")
    return 0


def cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    from .config import describe_keys, to_toml
    print(describe_keys() if args.keys else to_toml(_config_from(args, extra)))
    return 0


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    from .doctor import doctor, options_from, run_config
    if args.nan:
        from .diagnostics import format_nan_report, replay_bundle
        if args.run or args.config or extra:
            raise TinyLMError("--nan BUNDLE replays a saved step on its own: give no run, --config or overrides")
        report = replay_bundle(args.nan, device=args.device or "cpu")
        print(json.dumps(report, indent=2) if args.json else format_nan_report(report))
        return 0
    if args.run and args.config:
        raise TinyLMError("give a run folder or --config, not both (a run folder brings its own config.toml)")
    cfg = run_config(args.run, extra) if args.run else _config_from(args, extra)
    opts = options_from({**vars(args), "checks": tuple(args.checks.split(",")) if args.checks else None})
    report = doctor(cfg, opts, log=(lambda msg: print(msg, file=sys.stderr)) if args.json else print)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def cmd_profile(args: argparse.Namespace, extra: list[str]) -> int:
    from .profiling import profile
    profile(_config_from(args, extra), steps=args.steps, out=args.out)
    return 0


def _load_any_tokenizer(spec: str):
    from .tokenizer import load_tokenizer
    if spec == "gpt2":
        from .tokenizer.bpe import BPETokenizer
        return BPETokenizer.from_tiktoken("gpt2")
    return load_tokenizer(spec)


def cmd_tok_train(args: argparse.Namespace, extra: list[str]) -> int:
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


def cmd_tok_encode(args: argparse.Namespace, extra: list[str]) -> int:
    from .tokenizer import DisallowedSpecial
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
    from .tokenizer.base import parse_ids
    tok = _load_any_tokenizer(args.tokenizer)
    sys.stdout.write(tok.decode(parse_ids(args.ids if args.ids is not None else sys.stdin.read())))
    return 0


def cmd_tok_stats(args: argparse.Namespace, extra: list[str]) -> int:
    from . import corpora
    from .tokenizer.stats import format_token_stats, token_stats
    sample = corpora.head(corpora.get_corpus(args.corpus), args.max_chars)
    n = sum(map(len, sample))
    sizes = [int(v) for v in args.vocab_sizes.split(",")]
    rows = token_stats(sample, sizes, args.width, progress=True)
    print(f"corpus {args.corpus}: {n:,} characters\n")
    print(format_token_stats(rows, args.width))
    return 0


def cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    from .analysis import plan as planner
    frontier = planner.load_frontier(args.scaling) if args.scaling else None
    mfu = planner.measured_mfu(args.mfu_from) if args.mfu_from else args.mfu
    if args.table:
        print(planner.cost_table(args.gpu, args.gpus, mfu, args.context, frontier))
        return 0
    print(planner.format_plan(planner.plan(params=args.params, tokens=args.tokens, flops=args.flops,
                                           budget_usd=args.budget_usd, gpu=args.gpu, n_gpus=args.gpus, mfu=mfu,
                                           context=args.context, frontier=frontier)))
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from .analysis.report import FIGURE, write_report
    md = write_report(args.runs, args.out, log_axes=args.log)
    figure = md.parent / FIGURE
    print(f"wrote {md}" + (f" and {figure}" if figure.is_file() else " (no plots: pip install 'tinylm[plot]')"))
    return 0


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from .analysis.sweep import run_sweep
    sweep = run_sweep(args.config, args.grid, args.out, seeds=args.seeds, jobs=args.jobs, threads=args.threads,
                      overrides=extra)
    failed = [r for r in sweep.results if r.status != "ok"]
    print(f"wrote {sweep.out / 'report.md'}, results.csv and results.json"
          + (f"; {len(failed)} run(s) failed (listed in the report)" if failed else ""))
    return 1 if failed else 0


def cmd_scaling(args: argparse.Namespace, extra: list[str]) -> int:
    from .analysis.scaling import run_scaling
    result = run_scaling(args.config, args.budgets, args.sizes, args.out, verify=args.verify, predict_at=args.predict,
                         jobs=args.jobs, threads=args.threads, overrides=extra, resamples=args.resamples)
    law, pred = result["law"]["params"], result.get("prediction")
    f = result["frontier"]
    print((f"frontier N* = {f['g']:.3g} C^{f['a']:.3f}" if f else "no frontier (see scaling.md)") +
          f"; L(N, D) = {law['E']:.3f} + {law['A']:.3g}/N^{law['alpha']:.3f} + {law['B']:.3g}/D^{law['beta']:.3f}")
    if pred:
        print(f"predicted loss at N {pred['N']:,}, D {pred['D']:,}: {pred['loss']:.4f} [{pred['low']:.4f}, "
              f"{pred['high']:.4f}]" + (f"; measured {pred['measured']:.4f} ({pred['error']:+.2%})"
                                        if pred.get("measured") is not None else ""))
    print(f"wrote {args.out}/scaling.md, scaling.json" + (", scaling.png" if (Path(args.out) / "scaling.png").is_file()
                                                           else ""))
    return 0


def _amounts(text: str) -> list[float]:
    from .analysis.plan import parse_amount
    return [parse_amount(t) for t in text.split(",") if t.strip()]


def _pair(text: str) -> tuple[float, float]:
    values = _amounts(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give N,D, e.g. 12M,200M (non-embedding parameters, tokens)")
    return values[0], values[1]


def _add_run_pool_flags(sp: argparse.ArgumentParser, config_help: str, out: str, out_help: str) -> None:
    """The flags of a command that trains many runs as child processes (sweep, scaling)."""
    sp.add_argument("--config", help=config_help)
    sp.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    sp.add_argument("--threads", type=int, help="torch threads per run (default: CPU cores / jobs)")
    sp.add_argument("--out", default=out, help=f"{out_help} (default {out})")


def _add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    from .analysis.plan import parse_amount
    sp = sub.add_parser("scaling", help="IsoFLOP scaling study: fits, a prediction, and its verification.",
                        description="For each compute budget C, train models of each depth (width 64 x depth) on "
                                    "D = C / 6N tokens (N: non-embedding parameters); fit IsoFLOP parabolas "
                                    "(N*(C)) and L(N, D) = E + A/N^alpha + B/D^beta with bootstrap intervals; "
                                    f"predict, and with --verify train the predicted model. {OVERRIDES_HELP}")
    _add_run_pool_flags(sp, "base TOML preset (data, context, batch, optimizer)", "runs/scaling",
                        "folder for the runs and results")
    sp.add_argument("--budgets", type=_amounts, required=True, help="compute budgets C in FLOPs, e.g. 1e12,3e12,1e13")
    sp.add_argument("--sizes", type=lambda t: [x for x in t.split(",") if x.strip()], default=["1", "2", "3", "4"],
                    help="model depths (width 64 x depth) or depth x width, e.g. 1x64,2x64,2x96,3x128 "
                         "(default 1,2,3,4)")
    sp.add_argument("--predict", type=_pair, metavar="N,D", help="predict the loss of N parameters on D tokens")
    sp.add_argument("--verify", type=_pair, metavar="N,D", help="predict, then train that model and compare")
    sp.add_argument("--resamples", type=int, default=200, help="bootstrap resamples for the intervals")
    sp.set_defaults(func=cmd_scaling, overrides=True)
    sp = sub.add_parser("sweep", help="Train a grid of settings x seeds; results table, statistics and plots.",
                        description="Train every point of a grid (TOML: axes of dotted keys with lists of values, "
                                    "or named variants) x seeds as real runs, JOBS at a time; a second call skips "
                                    "finished runs and resumes unfinished ones. Writes results.csv/.json and "
                                    f"report.md (mean ± std, Welch's t-test against the baseline). {OVERRIDES_HELP}")
    _add_run_pool_flags(sp, "base TOML preset every point starts from", "runs/sweep",
                        "folder for runs/, results and report")
    sp.add_argument("--grid", required=True, help="grid TOML, e.g. configs/ablations/architecture.toml")
    sp.add_argument("--seeds", type=int, default=1, help="seeds per point: train.seed + 0, 1, ... (default 1)")
    sp.set_defaults(func=cmd_sweep, overrides=True)
    sp = sub.add_parser("report", help="A run's report: summary, curves, curve-health verdict, last sample.",
                        description="Write report.md (+ report.png with matplotlib) for a run folder, or a "
                                    "comparison of several runs (overlaid curves, one table row each).")
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s), e.g. runs/shakespeare-char")
    sp.add_argument("--out", help="folder for report.md/.png (default: the run folder; needed for several runs)")
    sp.add_argument("--log", action="store_true", help="log-log axes for the loss curves")
    sp.set_defaults(func=cmd_report, overrides=False)

    sp = sub.add_parser("plan", help="Chinchilla-optimal parameters and tokens, training time and $ cost.",
                        description="From one of --params, --tokens, --flops (6ND) or --budget-usd: the "
                                    "compute-optimal model size and tokens (20 tokens per parameter, or a "
                                    "`tinylm scaling` frontier), FLOPs, time and cost on --gpu. Prices and "
                                    "assumed MFUs: src/tinylm/analysis/gpus.py.")
    for flag, what in (("--params", "parameters, e.g. 124M"), ("--tokens", "training tokens, e.g. 2.5B"),
                       ("--flops", "training compute 6ND, e.g. 1e18"), ("--budget-usd", "dollars to spend")):
        sp.add_argument(flag, type=parse_amount, help=what)
    sp.add_argument("--gpu", default="h100", help="device of the price table (default h100; cpu = this CPU)")
    sp.add_argument("--gpus", type=int, default=1, help="devices training together (default 1)")
    sp.add_argument("--mfu", type=float, help="model FLOPs utilization (default: the table's assumption)")
    sp.add_argument("--mfu-from", metavar="RUN", help="use the median MFU this tinylm run measured")
    sp.add_argument("--context", type=int, default=1024, help="context length for attention's FLOPs")
    sp.add_argument("--scaling", metavar="STUDY", help="a `tinylm scaling` folder: its fitted frontier N*(C)")
    sp.add_argument("--table", action="store_true", help="the one-page cost model, 10M to 7B parameters")
    sp.set_defaults(func=cmd_plan, overrides=False)


def _add_tokenizer_commands(sub: argparse._SubParsersAction) -> None:
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


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    help = "Loss, perplexity and bits per byte of a checkpoint on its run's split or on a text file."
    sp = sub.add_parser("eval", help=help, description=f"{help} Under torchrun the processes share the windows.")
    sp.add_argument("run", help="run folder (runs/<name>), a checkpoint folder, or a Hugging Face GPT-2 or Llama "
                                "folder (with --text)")
    sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
    sp.add_argument("--split", choices=("val", "train"), help="the run's prepared split to score (default val)")
    sp.add_argument("--tokens", metavar="N|all",
                    help="tokens to score from the start (default: the run's train.eval_tokens on a split, all "
                         "of a text)")
    sp.add_argument("--text", metavar="FILE", help="score this UTF-8 text file, tokenized with the run's tokenizer")
    sp.add_argument("--batch-size", type=int, help="windows per forward pass (default: the run's micro-batch, or "
                                                   "4096 tokens' worth for a Hugging Face folder; the result "
                                                   "does not depend on it)")
    sp.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=cmd_eval)


def _add_doctor_commands(sub: argparse._SubParsersAction,
                         with_config: Callable[[str, str], argparse.ArgumentParser]) -> None:
    from .doctor import CHECKS, DoctorOptions
    d = DoctorOptions()
    sp = with_config("doctor", "Quick checks of a config on its own data: pass / warn / fail with the number, "
                               "the reason and the fix; exit status 1 on a fail.")
    # RUN, when given, comes first: a positional argument would also swallow an override's value
    sp.usage = "tinylm doctor [RUN | --config PRESET] [overrides] [--json] [--checks ...] | --nan BUNDLE"
    sp.set_defaults(run=None, leading_run=True)
    sp.add_argument("--json", action="store_true", help="print the report as JSON (the log goes to stderr)")
    sp.add_argument("--nan", metavar="BUNDLE", help="replay RUN/nonfinite_step_N: name the first module whose "
                                                    "output or gradient went non-finite, and the likely cause")
    sp.add_argument("--device", help="--nan: where to replay (default cpu)")
    sp.add_argument("--checks", help=f"comma-separated subset of {','.join(CHECKS)}")
    sp.add_argument("--steps", type=int, help=f"steps of each short run (default {d.steps})")
    sp.add_argument("--seeds", type=int, help=f"seeds for the val-loss spread (default {d.seeds})")
    sp.add_argument("--batch-size", type=int, help=f"sequences per step of the short runs (default {d.batch_size})")
    sp.add_argument("--overfit-steps", type=int, help=f"steps on one batch (default {d.overfit_steps})")
    sp.set_defaults(func=cmd_doctor)
    sp = with_config("profile", "Time each component (embeddings, attention, MLP, norms, head + loss, backward, "
                                "optimizer, data) on the real model and loop; table, bar chart, FLOP shares.")
    sp.add_argument("--steps", type=int, default=5, help="profiled steps, after one warm-up step (default 5)")
    sp.add_argument("--out", help="folder for profile.md/.json/.png (default: runs/<name>-profile)")
    sp.set_defaults(func=cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    from .strategies import STRATEGIES
    p = argparse.ArgumentParser(prog="tinylm", description="Train small language models from raw text.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=f"{help} {OVERRIDES_HELP}")
        sp.add_argument("--config", help="TOML preset, e.g. configs/shakespeare-char.toml")
        sp.set_defaults(overrides=True)
        return sp

    sp = with_config("prepare", "Tokenize a corpus into train/val token shards.")
    sp.add_argument("--force", action="store_true",
                    help="rebuild a data folder tinylm prepared, even with other settings")
    sp.set_defaults(func=cmd_prepare)

    sp = with_config("train", "Train a model (prepares the data first if needed).")
    sp.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    sp.set_defaults(func=cmd_train)

    sp = with_config("lr-find", "LR range test: raise the LR exponentially from a fresh init, suggest a peak LR.")
    sp.add_argument("--start", type=float, default=1e-5, help="first LR of the sweep (default 1e-5)")
    sp.add_argument("--end", type=float, default=1.0, help="last LR of the sweep (default 1)")
    sp.add_argument("--steps", type=int, default=200, help="steps of the sweep; stops early at divergence")
    sp.add_argument("--divisor", type=float, default=5.0, help="suggested LR = divergence LR / this (4-10)")
    sp.add_argument("--out", help="folder for lr_find.json/.png (default: runs/<name>-lr-find)")
    sp.set_defaults(func=cmd_lr_find)

    _add_doctor_commands(sub, with_config)

    sp = with_config("config", "Print the resolved config as TOML.")
    sp.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    sp.set_defaults(func=cmd_config)

    for name, help, func in (("sample", "Generate text from a trained run.", cmd_sample),
                             ("info", "Show a run's or checkpoint's config, size and losses.", cmd_info),
                             ("export", "Write a checkpoint's weights as safetensors, or as a Hugging Face folder.",
                              cmd_export)):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("run", help="run folder (runs/<name>) or a checkpoint folder")
        sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
        sp.set_defaults(func=func, overrides=name == "sample")  # sample takes --sample.* settings
        if name == "info":
            sp.add_argument("--json", action="store_true", help="print JSON")
        if name == "export":
            sp.add_argument("--out", required=True,
                            help="safetensors: the file to write (model.safetensors); hf: the folder to write")
            sp.add_argument("--format", choices=("safetensors", "hf"), default="safetensors",
                            help="safetensors: the weights alone (default); hf: a folder transformers loads "
                                 "(GPT2LMHeadModel or LlamaForCausalLM + tokenizer.json)")
    sp = sub.add_parser("import", help="Make a run folder from a Hugging Face GPT-2 model (folder or hub name).",
                        description="Make a run folder from a Hugging Face GPT-2 model: a local folder (config.json "
                                    "+ model.safetensors or pytorch_model.bin) or a hub name such as gpt2 (needs "
                                    "the hf extra); a Llama folder that `tinylm export --format hf` wrote is read "
                                    "too. Sample, export or fine-tune it (--train.init_from RUN).")
    sp.add_argument("source", help="a folder, or a hub name: gpt2, gpt2-medium, openai-community/gpt2-large, ...")
    sp.add_argument("--out", required=True, help="the run folder to create, e.g. runs/gpt2")
    sp.set_defaults(func=cmd_import, overrides=False)
    _add_eval_command(sub)
    _add_tokenizer_commands(sub)
    _add_analysis_commands(sub)
    sample = sub.choices["sample"]
    sample.description = ("Generate text from a trained run, streamed as it comes. Defaults come from the run's "
                          "[sample] settings; any of them can be changed with --sample.KEY VALUE "
                          "(see `tinylm config --keys`).")
    sample.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    sample.add_argument("--strategy", choices=tuple(STRATEGIES),
                        help="greedy | sample (temperature + every filter that is on) | top_k | top_p | min_p "
                             "(temperature + that filter) | beam | contrastive")
    sample.add_argument("--max-new-tokens", type=int)
    sample.add_argument("--temperature", type=float, help="> 0; lower is more conservative (sampling strategies)")
    sample.add_argument("--top-k", type=int, help="keep the k most likely tokens; 0 turns top-k off")
    sample.add_argument("--top-p", type=float, help="nucleus: keep the most likely tokens up to this much probability")
    sample.add_argument("--min-p", type=float, help="drop tokens less likely than this x the most likely one")
    sample.add_argument("--repetition-penalty", type=float, help="CTRL penalty on tokens already in the text (1 = off)")
    sample.add_argument("--num-beams", type=int, help="beams for --strategy beam")
    sample.add_argument("--n", "--num-samples", dest="num_samples", type=int,
                        help="samples (sample i uses seed + i); for beam search the n best beams")
    sample.add_argument("--seed", type=int, help="default: the run's train.seed")
    sample.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sample.add_argument("--stop", action="append", metavar="TEXT",
                        help="stop when the text contains TEXT (repeatable; e.g. --stop $'\\n\\n')")

    sp = sub.add_parser("decode-report", help="Compare decoding strategies on the same prompts: table, plot, samples.",
                        description="Generate with every decoding strategy from the same validation-text prompts; "
                                    "write distinct-1/2/3, repetition, entropy, perplexity, length and speed per "
                                    "strategy, a diversity-vs-likelihood plot and the samples side by side to "
                                    "decode_report.md (+ .png with matplotlib).")
    sp.add_argument("run", help="run folder (runs/<name>) or a checkpoint folder")
    sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
    sp.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated rows of the report (each with the run's [sample] settings and "
                         "--sample.* overrides under that strategy, see docs/generation.md)")
    sp.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                    help="an extra row, e.g. hot:strategy=sample,temperature=1.5 (repeatable)")
    sp.add_argument("--n", type=int, default=5, help="samples per prompt for the sampling strategies")
    sp.add_argument("--prompts", type=int, default=4, help="prompts cut from the validation split")
    sp.add_argument("--prompt-tokens", type=int, default=64, help="tokens per prompt")
    sp.add_argument("--max-new-tokens", type=int, help="default: the run's sample.max_new_tokens")
    sp.add_argument("--seed", type=int, help="default: the run's train.seed")
    sp.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sp.add_argument("--out", help="folder for decode_report.md/.png (default: the run folder)")
    sp.set_defaults(func=cmd_decode_report, overrides=True)  # --sample.* settings
    return p


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was given, e.g. the one of `tinylm tokenizer encode`."""
    for name in ("command", "tokenizer_command"):
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, name, None) is None:
            break
        parser = sub.choices[getattr(args, name)]
    return parser


def _check_unknown(parser: argparse.ArgumentParser, extra: list[str], overrides: bool) -> None:
    """Refuse what a command does not know, naming the nearest flags it does know.

    ``overrides``: the command takes config overrides (``--section.key value``), checked later by
    the config itself; every other flag, and any stray word, is refused here.
    """
    from .config import all_keys
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    known = flags + (["--" + k for k in all_keys()] if overrides else [])
    i = 0
    while i < len(extra):
        arg = extra[i]
        name = arg.split("=", 1)[0]
        if overrides and name.startswith("--") and "." in name:
            i += 1 if "=" in arg else 2  # an override and its value
            continue
        if not name.startswith("-"):
            raise TinyLMError(f"`{parser.prog}` does not take the argument {arg!r}; see `{parser.prog} --help`")
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"its flags are {', '.join(flags)}"
        if "." in name and not overrides:
            hint = f"config overrides do not apply to `{parser.prog}`; {hint}"
        raise TinyLMError(f"`{parser.prog}` has no flag {name}; {hint}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "leading_run", False) and extra and not extra[0].startswith("-"):
        args.run, extra = extra[0], extra[1:]  # `tinylm doctor RUN ...`
    try:
        _check_unknown(_command_parser(parser, args), extra, getattr(args, "overrides", False))
        return args.func(args, extra)
    except TinyLMError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinylm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
