"""Checking one value: converted to its field's type (a ``Literal`` field to one of its values), sizes and
durations parsed, seeds bounded. No knowledge of the config tree: :mod:`tinylm.config` builds on this module
(its ``validate`` checks the tree)."""
from __future__ import annotations

import difflib
import re
import typing

from .errors import TinyLMError


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


def check_seed(seed: int, flag: str) -> None:
    """A seed numpy and torch both take: [0, 2^32) (numpy's range; torch's is wider)."""
    if not 0 <= seed < 2**32:
        raise TinyLMError(f"{flag} {seed} must be in [0, 2^32) (numpy's seed range), e.g. 1337")
