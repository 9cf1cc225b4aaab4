"""Commands that take a config (a preset and overrides): prepare, train, lr-find, doctor, profile, config."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..errors import TinyLMError

if TYPE_CHECKING:  # the command line imports each command's modules only when it runs
    from ..config import Config

OVERRIDES_HELP = "Any config setting can follow as --section.key value (every key: `tinylm config --keys`)."


def _config_from(args: argparse.Namespace, extra: list[str]) -> Config:
    from ..config import build_config
    return build_config(args.config, extra)


def cmd_prepare(args: argparse.Namespace, extra: list[str]) -> int:
    from ..data.prepare import ensure_prepared, prepare
    cfg = _config_from(args, extra)
    if args.force:
        prepare(cfg.data, force=True, run_dir=cfg.run_dir, progress=cfg.run.progress)
    else:
        meta = ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=cfg.run.progress)
        print(f"{cfg.data.dir}: {meta['train']['tokens']:,} train + {meta['val']['tokens']:,} val tokens, "
              f"vocab {meta['vocab_size']} ({meta['tokenizer_kind']})")
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from ..training.runtime import shutdown_distributed
    from ..training.trainer import train
    cfg = _config_from(args, extra)
    try:
        result = train(cfg, resume=args.resume)
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(finished=True)
    return 130 if result.stopped_early else 0


def cmd_lr_find(args: argparse.Namespace, extra: list[str]) -> int:
    from ..training.lr_find import lr_find
    lr_find(_config_from(args, extra), start=args.start, end=args.end, steps=args.steps, out=args.out,
            divisor=args.divisor)
    return 0


def cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    from ..config import describe_keys, to_toml
    print(describe_keys() if args.keys else to_toml(_config_from(args, extra)))
    return 0


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    from ..diagnostics.doctor import doctor, run_config
    from ..diagnostics.doctor_options import options_from
    if args.nan:
        from ..diagnostics.nonfinite import format_nan_report, replay_bundle
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
    from ..diagnostics.profiling import profile
    profile(_config_from(args, extra), steps=args.steps, out=args.out)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """prepare, train, lr-find, doctor, profile and config: each reads ``--config PRESET`` and overrides."""
    from ..diagnostics.doctor_options import CHECKS, DoctorOptions

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

    sp = with_config("config", "Print the resolved config as TOML.")
    sp.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    sp.set_defaults(func=cmd_config)
