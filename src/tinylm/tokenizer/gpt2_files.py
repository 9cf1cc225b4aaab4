"""GPT-2's release files (``vocab.json`` + ``merges.txt``; OpenAI: ``encoder.json`` + ``vocab.bpe``) and the byte <->
printable character table they spell tokens in (Hugging Face's ByteLevel uses it too). Depends on nothing else of
the tokenizer package, so the BPE class and the interop files both import it.
"""
from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from ..errors import TinyLMError


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (used by ``encoder.json``, ``vocab.bpe`` and
    Hugging Face's ByteLevel). Printable Latin-1 bytes map to themselves, the other 68 bytes to
    U+0100 upwards in byte order: ``bytes_to_unicode()[32] == "Ġ"`` (the space)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def to_unicode(token: bytes) -> str:
    """A token's bytes in GPT-2's printable characters: ``b" world"`` -> ``"Ġworld"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def unicode_to_bytes(token: str) -> bytes | None:
    """Inverse of GPT-2's byte -> character table: ``"Ġworld"`` -> ``b" world"``; None when a
    character is not in the table (the text is no byte-level token)."""
    decoder = _byte_decoder()
    try:
        return bytes(decoder[c] for c in token)
    except KeyError:
        return None


@cache
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def read_gpt2_files(vocab_json: str | os.PathLike,
                    merges_txt: str | os.PathLike) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """GPT-2's ``vocab.json`` (OpenAI: ``encoder.json``) and ``merges.txt`` (``vocab.bpe``) as byte
    pairs for ``BPETokenizer.from_files``: ``{id: token bytes}`` and ``[(left, right), ...]``.

    Tokens are spelled in GPT-2's printable characters (``Ġ t`` = space + "t"); a token that is
    not (a special token such as ``<|endoftext|>`` usually is) counts as its UTF-8 text. The
    merges file may start with a ``#version`` line.
    """
    def raw(s: str) -> bytes:
        data = unicode_to_bytes(s)
        return s.encode("utf-8") if data is None else data

    try:
        encoder: dict[str, int] = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        if lines[0].startswith("#version"):  # OpenAI's file has this header; other copies may not
            lines = lines[1:]
        merges = []
        for line in filter(None, lines):
            a, b = line.split(" ")  # ValueError unless exactly two tokens
            merges.append((raw(a), raw(b)))
        return {int(i): raw(t) for t, i in encoder.items()}, merges
    except (OSError, ValueError, AttributeError, TypeError) as e:  # AttributeError, TypeError: JSON of another shape
        raise TinyLMError(f"cannot read GPT-2 files {vocab_json} + {merges_txt} ({type(e).__name__}: {e}); "
                          f"pass GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe)") from None
