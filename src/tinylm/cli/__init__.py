"""The command line: one parser built from the command groups, strict flags, dispatch; no logic of its own.

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

Each group of commands is a module of its own here, with its flags and the calls into the library:
``training`` (commands that take a config), ``inference`` (a trained run), ``tokenizer``, ``analysis``.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys

from ..errors import TinyLMError
from ..version import __version__
from . import analysis, inference, tokenizer, training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinylm", description="Train small language models from raw text.")
    p.add_argument("--version", action="version", version=f"tinylm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (training, inference, tokenizer, analysis):
        group.add_commands(sub)
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
    from ..config import all_keys
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
        status = args.func(args, extra)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return status
    except BrokenPipeError:  # `tinylm config --keys | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit fails no more
        return 141  # quietly, as a Unix tool stopped by SIGPIPE (128 + 13)
    except TinyLMError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:  # an unreadable corpus or checkpoint, a folder that cannot be written: one line
        print(f"tinylm: error: cannot access {e.filename or e}: {e.strerror or 'permission denied'}; give your user "
              f"access to it (chmod, chown), or use another path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinylm: interrupted", file=sys.stderr)
        return 130
