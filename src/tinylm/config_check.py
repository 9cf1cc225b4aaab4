"""Checking a config's values: each converted to its field's type, durations and sizes parsed, the tree validated.

:func:`validate` checks the whole tree once, early, and names the flags to change in its messages;
the batch arithmetic it checks (:func:`micro_batch_size`, :func:`grad_accum_steps`) lives here once.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TinyLMError
from .generation.strategies import check_sample

if TYPE_CHECKING:
    from .config import Config, DataConfig


def convert_value(key: str, value: object, typ: type) -> bool | int | float | str:
    """Convert a TOML value or a command-line string to the field's declared type; a ``Literal`` field takes one of
    its values (``Literal["adamw", "muon"]``: the allowed values live in the annotation, nowhere else)."""
    if typing.get_origin(typ) is typing.Literal:
        allowed = typing.get_args(typ)
        converted = convert_value(key, value, type(allowed[0]))
        if converted not in allowed:
            raise TinyLMError(not_one_of(key, converted, allowed))
        return converted
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str and isinstance(value, str):
        return value
    tname = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[typ]
    raise TinyLMError(f"--{key} expects {tname}, got {value!r}")


def not_one_of(key: str, value: object, allowed: tuple) -> str:
    """The one message for a value outside a ``Literal`` field's values, with the nearest one when there is one."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return (f"--{key} {value!r} is not one of {', '.join(map(str, allowed))}"
            + (f"; did you mean {near[0]}?" if near else ""))


def literal_fields(section: object) -> dict[str, tuple]:
    """A config section's ``Literal`` fields and their allowed values: ``{"mlp": ("gelu_exact", ...), ...}``."""
    return {name: typing.get_args(typ) for name, typ in typing.get_type_hints(type(section)).items()
            if typing.get_origin(typ) is typing.Literal}


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, flag: str = "--data.max_bytes") -> int | None:
    """A size setting (``flag`` names it in the error) as a byte count: ``parse_bytes("200MB") -> 200_000_000``,
    ``"4KiB" -> 4096``, ``"" -> None`` (no cap). KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024."""
    if not str(text).strip():
        return None
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m[2].lower() if m else ""
    if m is None or unit not in _BYTE_UNITS or float(m[1].replace("_", "")) * _BYTE_UNITS[unit] < 1:
        raise TinyLMError(f"{flag} {text!r} is not a positive size; write e.g. 200MB, 4KiB or 1000000 (or \"\" "
                          f"for none)")
    return int(float(m[1].replace("_", "")) * _BYTE_UNITS[unit])


TOKENIZERS = ("char", "bpe", "gpt2")  # data.tokenizer's names; anything else is a tokenizer file


def tokenizer_file(d: DataConfig) -> Path | None:
    """``--data.tokenizer`` as a file path, or None when it names a tokenizer (char, bpe, gpt2)."""
    return None if d.tokenizer in TOKENIZERS else Path(d.tokenizer)


def parse_duration(text: str) -> float | None:
    """Seconds in a duration: ``"90s" -> 90``, ``"10m" -> 600``, ``"1h30m" -> 5400``, ``"600" -> 600``; "" -> None."""
    text = text.strip().lower()
    if not text:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise TinyLMError(f"--train.time_budget {text!r} is not a duration; write e.g. 90s, 10m or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, as the README writes durations: ``360 -> "6m"``, ``5400 -> "1h30m"``,
    ``90 -> "1m30s"``, ``6 -> "6s"`` (whole seconds)."""
    s = round(seconds)
    parts = [(s // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"


def micro_batch_size(cfg: Config, world_size: int = 1) -> int:
    """Sequences per process per forward: --train.micro_batch_size, or (0) the process's share of the batch."""
    return cfg.train.micro_batch_size or cfg.train.batch_size // world_size


def grad_accum_steps(cfg: Config, world_size: int = 1) -> int:
    """Micro-steps per optimizer step: batch_size / (micro_batch_size * processes)."""
    return cfg.train.batch_size // (micro_batch_size(cfg, world_size) * world_size)


def check_seed(seed: int, flag: str) -> None:
    """A seed numpy and torch both take: [0, 2^32) (numpy's range; torch's is wider)."""
    if not 0 <= seed < 2**32:
        raise TinyLMError(f"{flag} {seed} must be in [0, 2^32) (numpy's seed range), e.g. 1337")


def validate(cfg: Config, world_size: int = 1) -> None:
    """Check the tree once, early; every message names the flags to change."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.sample

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise TinyLMError(msg)

    for sec in (f.name for f in dataclasses.fields(cfg)):  # values set in Python skip convert_value
        for name, allowed in literal_fields(getattr(cfg, sec)).items():
            value = getattr(getattr(cfg, sec), name)
            need(value in allowed, not_one_of(f"{sec}.{name}", value, allowed))
    for key in ("model.block_size", "model.n_layer", "model.n_head", "model.n_embd",
                "train.max_steps", "train.batch_size", "train.log_interval"):
        sec, name = key.split(".")
        need(getattr(getattr(cfg, sec), name) > 0, f"--{key} must be positive")
    need(m.n_embd % m.n_head == 0,
         f"--model.n_embd {m.n_embd} is not divisible by --model.n_head {m.n_head}")
    need(m.pos != "rope" or (m.n_embd // m.n_head) % 2 == 0,
         f"rotary positions need an even head size; --model.n_embd {m.n_embd} / --model.n_head {m.n_head} is odd")
    need(m.rope_base > 1 and math.isfinite(m.rope_base),  # base 0: infinite frequencies, NaN at step 1
         f"--model.rope_base {m.rope_base} must be a finite number > 1 (the rotary base; 10000 is usual, larger for "
         f"long contexts)")
    need(m.vocab_size == 0 or m.vocab_size >= 2, "--model.vocab_size must be 0 (from the data) or >= 2")
    need(m.vocab_pad_to >= 1, f"--model.vocab_pad_to {m.vocab_pad_to} must be >= 1 (1 = no padding; 64 for GPUs)")
    need(m.loss_chunk >= 0, f"--model.loss_chunk {m.loss_chunk} must be >= 0 (0 = the whole batch at once)")
    need(0.0 <= m.dropout < 1.0, f"--model.dropout {m.dropout} must be in [0, 1)")
    need(m.mlp_ratio > 0, "--model.mlp_ratio must be positive")
    file = tokenizer_file(d)
    need(file is None or file.is_file(),
         f"--data.tokenizer {d.tokenizer!r} is not one of {', '.join(TOKENIZERS)}, nor a tokenizer file"
         + (f" (it is a folder: give the file in it, e.g. {file / 'tokenizer.txt'})" if file and file.is_dir()
            else " (no such file)") + "; pass another run's data/<name>/tokenizer.txt to reuse its tokenizer")
    need(d.tokenizer != "bpe" or d.vocab_size >= 257,
         f"--data.vocab_size {d.vocab_size} is too small for byte-level BPE: it needs the 256 byte "
         f"tokens plus at least one merge (use >= 257, e.g. 4096)")
    need(0.0 < d.val_fraction < 1.0, f"--data.val_fraction {d.val_fraction} must be in (0, 1)")
    need(d.num_workers >= 0, "--data.num_workers must be >= 0 (0 = automatic)")
    parse_bytes(d.max_bytes)
    need(o.lr > 0 and math.isfinite(o.lr), f"--optim.lr {o.lr} must be a positive number")
    need(0 <= o.min_lr_ratio <= 1, f"--optim.min_lr_ratio {o.min_lr_ratio} must be in [0, 1]")
    need(o.warmup_steps >= 0, "--optim.warmup_steps must be >= 0")
    need(all(0 <= b < 1 for b in (o.beta1, o.beta2, o.embed_beta1, o.embed_beta2)),
         "--optim.beta1, --optim.beta2, --optim.embed_beta1 and --optim.embed_beta2 must be in [0, 1)")
    need(o.weight_decay >= 0 and o.embed_weight_decay >= 0 and o.grad_clip >= 0,
         "--optim.weight_decay, --optim.embed_weight_decay and --optim.grad_clip must be >= 0")
    need(o.embed_lr >= 0 and o.scalar_lr >= 0, "--optim.embed_lr and --optim.scalar_lr must be >= 0 (0 = inherit)")
    need(o.name != "muon" or o.embed_lr > 0,
         f"--optim.name muon needs --optim.embed_lr: the AdamW learning rate of the embeddings, head and norms "
         f"(Muon's --optim.lr {o.lr} is for hidden matrices only; try --optim.lr 0.02 --optim.embed_lr 3e-3)")
    need(o.name != "muon" or not t.fsdp, "--optim.name muon does not support --train.fsdp yet (Newton-Schulz "
         "needs whole matrices); use DDP (the default under torchrun) or --optim.name adamw")
    need(0 < o.decay_frac <= 1, f"--optim.decay_frac {o.decay_frac} must be in (0, 1]")
    need(0 <= o.momentum < 1 and 0 <= o.momentum_warmup_start < 1,
         "--optim.momentum and --optim.momentum_warmup_start must be in [0, 1)")
    need(o.ns_steps >= 1 and o.momentum_warmup_steps >= 0,
         "--optim.ns_steps must be >= 1 and --optim.momentum_warmup_steps >= 0")
    check_seed(t.seed, "--train.seed")
    need(t.eval_interval >= 0, "--train.eval_interval must be >= 0 (0 = only at the end)")
    need(t.eval_tokens >= 0, "--train.eval_tokens must be >= 0 (0 = the whole validation split)")
    need(t.micro_batch_size >= 0, "--train.micro_batch_size must be >= 0 (0 = no accumulation)")
    need(t.threads >= 0, "--train.threads must be >= 0 (0 = torch's default)")
    need(t.save_interval >= 0 and t.keep_last >= 1 and t.max_skips >= 1,
         "--train.save_interval must be >= 0, --train.keep_last and --train.max_skips >= 1")
    need(t.spike_factor == 0 or t.spike_factor > 1, "--train.spike_factor must be 0 (off) or > 1")
    parse_duration(t.time_budget)
    parse_bytes(t.artifact_bytes, "--train.artifact_bytes")
    micro = micro_batch_size(cfg, world_size)
    need(t.batch_size % world_size == 0,
         f"--train.batch_size {t.batch_size} is not divisible by {world_size} DDP processes")
    need(micro > 0 and t.batch_size % (micro * world_size) == 0,
         f"--train.batch_size {t.batch_size} is not divisible by --train.micro_batch_size {micro} "
         f"x {world_size} process(es); pick a micro-batch that divides the batch")
    check_sample(s)
    # one plain folder name: "..", "." or a path would put the run's files outside (or on top of) --run.dir
    need(cfg.run.name == "" or (cfg.run.name.strip() not in ("", ".", "..")  # "": derive_names fills it in
                                and not set(cfg.run.name) & {"/", "\\", "\0"}),
         f"--run.name {cfg.run.name!r} must be one plain folder name (not empty, '.' or '..', no '/' or '\\'), "
         f"e.g. --run.name my-run; put the parent folder in --run.dir")
