"""Commands over runs: report, sweep, scaling (each trains or reads many runs), plan."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import TinyLMError
from .training import OVERRIDES_HELP


def cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    from ..analysis import plan as planner
    frontier = planner.load_frontier(args.scaling) if args.scaling else None
    mfu = planner.measured_mfu(args.mfu_from) if args.mfu_from else args.mfu
    if args.bytes is not None:
        from ..config_check import parse_bytes
        budget = parse_bytes(args.bytes, "--bytes")
        vocabs = tuple(int(v) for v in _amounts(args.vocab_sizes)) if args.vocab_sizes else planner.BUDGET_VOCABS
        print(planner.format_budget(budget, args.bits, planner.budget_shapes(budget, args.bits, vocabs=vocabs,
                                                                             context=args.context), args.context))
        return 0
    if args.table:
        print(planner.cost_table(args.gpu, args.gpus, mfu, args.context, frontier))
        return 0
    print(planner.format_plan(planner.plan(params=args.params, tokens=args.tokens, flops=args.flops,
                                           budget_usd=args.budget_usd, gpu=args.gpu, n_gpus=args.gpus, mfu=mfu,
                                           context=args.context, frontier=frontier)))
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from ..analysis.report import FIGURE, write_report
    md = write_report(args.runs, args.out, log_axes=args.log, log=lambda m: print(f"tinylm: {m}", file=sys.stderr))
    figure = md.parent / FIGURE
    print(f"wrote {md}" + (f" and {figure}" if figure.is_file() else " (no plots: pip install 'tinylm[plot]')"))
    return 0


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from ..analysis.sweep import run_sweep
    sweep = run_sweep(args.config, args.grid, args.out, seeds=args.seeds, jobs=args.jobs, threads=args.threads,
                      overrides=extra)
    failed = [r for r in sweep.results if r.status != "ok"]
    print(f"wrote {sweep.out / 'report.md'}, results.csv and results.json"
          + (f"; {len(failed)} run(s) failed (listed in the report)" if failed else ""))
    return 1 if failed else 0


def cmd_scaling(args: argparse.Namespace, extra: list[str]) -> int:
    from ..analysis.scaling import run_scaling
    result = run_scaling(args.config, args.budgets, args.sizes, args.out, verify=args.verify, predict_at=args.predict,
                         head_size=args.head_size, tokens_per_param=args.tokens_per_param,
                         lr_width=args.lr_width, seeds=args.seeds, jobs=args.jobs,
                         threads=args.threads, overrides=extra, resamples=args.resamples)
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


def _amount(text: str) -> float:
    """``plan.parse_amount`` as an argparse type: its refusal becomes the flag's error."""
    from ..analysis.plan import parse_amount
    try:
        return parse_amount(text)
    except TinyLMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _amounts(text: str) -> list[float]:
    return [_amount(t) for t in text.split(",") if t.strip()]


def _pair(text: str) -> tuple[float, float]:
    values = _amounts(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give N,D, e.g. 12M,200M (non-embedding parameters, tokens)")
    return values[0], values[1]


def _window(text: str) -> tuple[float, float]:
    values = _amounts(text)
    if len(values) != 2 or not 0 < values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: give LOW,HIGH tokens per parameter with 0 < LOW < HIGH, "
                                         "e.g. 1,1000")
    return values[0], values[1]


def _add_run_pool_flags(sp: argparse.ArgumentParser, config_help: str, out: str, out_help: str) -> None:
    """The flags of a command that trains many runs as child processes (sweep, scaling)."""
    sp.add_argument("--config", help=config_help)
    sp.add_argument("--seeds", type=int, default=1, help="seeds per point: train.seed + 0, 1, ... (default 1)")
    sp.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    sp.add_argument("--threads", type=int, help="torch threads per run (default: CPU cores / jobs)")
    sp.add_argument("--out", default=out, help=f"{out_help} (default {out})")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """scaling, sweep, report and plan."""
    from ..analysis.plan import BUDGET_VOCABS, HEAD_SIZE
    from ..config import ARTIFACT_BITS
    sp = sub.add_parser("scaling", help="IsoFLOP scaling study: fits, a prediction, and its verification.",
                        description="For each compute budget C, train models of each depth (width 64 x depth) on "
                                    "D = C / 6N tokens (N: non-embedding parameters); fit IsoFLOP parabolas "
                                    "(N*(C)) and L(N, D) = E + A/N^alpha + B/D^beta (on each point's mean over "
                                    "--seeds) with bootstrap intervals; predict, and with --verify train the "
                                    "predicted model. "
                                    f"{OVERRIDES_HELP}")
    _add_run_pool_flags(sp, "base TOML preset (data, context, batch, optimizer)", "runs/scaling",
                        "folder for the runs and results")
    sp.add_argument("--budgets", type=_amounts, required=True, help="compute budgets C in FLOPs, e.g. 1e12,3e12,1e13")
    sp.add_argument("--sizes", type=lambda t: [x for x in t.split(",") if x.strip()], default=["1", "2", "3", "4"],
                    help="model depths (width 64 x depth) or depth x width, e.g. 1x64,2x64,2x96,3x128 "
                         "(default 1,2,3,4)")
    sp.add_argument("--head-size", type=int, default=HEAD_SIZE,
                    help=f"attention head size of the study's models (default {HEAD_SIZE}: one head below width 128; "
                         "32 keeps several heads in narrow models)")
    sp.add_argument("--tokens-per-param", type=_window, metavar="LOW,HIGH",
                    help="train only the budget x size pairs with D / N in this range, e.g. 1,1000 "
                         "(default: every pair)")
    sp.add_argument("--lr-width", type=int, metavar="W",
                    help="the config's learning rate is the one for width W; width w trains at lr x W / w "
                         "(muP's rule for Adam; default: one rate for every width)")
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
        sp.add_argument(flag, type=_amount, help=what)
    sp.add_argument("--gpu", default="h100", help="device of the price table (default h100; cpu = this CPU)")
    sp.add_argument("--gpus", type=int, default=1, help="devices training together (default 1)")
    sp.add_argument("--mfu", type=float, help="model FLOPs utilization (default: the table's assumption)")
    sp.add_argument("--mfu-from", metavar="RUN", help="use the median MFU this tinylm run measured")
    sp.add_argument("--context", type=int, default=1024, help="context length for attention's FLOPs")
    sp.add_argument("--scaling", metavar="STUDY", help="a `tinylm scaling` folder: its fitted frontier N*(C)")
    sp.add_argument("--table", action="store_true", help="the one-page cost model, 10M to 7B parameters")
    sp.add_argument("--bytes", metavar="SIZE", help="a byte budget for the quantized artifact, e.g. 16MB: list the "
                                                    "shapes (vocab x width x depth) that fit at --bits")
    sp.add_argument("--bits", type=int, choices=ARTIFACT_BITS, default=8,
                    help="with --bytes: bits per matrix weight (tinylm export --quantize intN; default 8)")
    sp.add_argument("--vocab-sizes", metavar="V1,V2,...",
                    help=f"with --bytes: the vocabularies to list (default {','.join(map(str, BUDGET_VOCABS))})")
    sp.set_defaults(func=cmd_plan, overrides=False)
