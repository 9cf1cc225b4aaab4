"""BPE interop files: tiktoken ranks files, GPT-2's release files, Hugging Face ``tokenizer.json``.

Our own file format lives with the class (:meth:`BPETokenizer.to_text`), and so does the
conversion to and from a live tiktoken encoding (``BPETokenizer.from_tiktoken("gpt2")``,
``from_ranks``, ``to_tiktoken()``), since tiktoken runs our fast path. This module reads and
writes the files other tools use:

- tiktoken: ``save_tiktoken_ranks`` / ``load_tiktoken_ranks`` (the ``<base64 token> <rank>``
  lines of ``*.tiktoken`` files).
- GPT-2's ``vocab.json`` + ``merges.txt``: :mod:`.gpt2_files` (``BPETokenizer.from_files`` reads them), with the
  byte <-> printable character table they and Hugging Face's ByteLevel use.
- Hugging Face ``tokenizers``: ``to_hf_json`` / ``save_hf`` write a ``tokenizer.json`` that
  ``tokenizers.Tokenizer.from_file`` loads and that encodes like ``encode(allowed_special="all")``
  (a BPE, or a character vocabulary: a ``WordLevel`` model over single characters);
  ``load_hf`` reads one back (and GPT-2's own), any byte-level BPE without a normalizer.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TinyLMError
from ..fileio import write_text_atomic
from .base import Tokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .gpt2_files import to_unicode, unicode_to_bytes

# every character its own piece: Oniguruma's "." would leave line breaks out, and runs of them together
CHAR_SPLIT = r"[\s\S]"
UNKNOWN = "<unk>"  # WordLevel's name for a missing character; not in the vocabulary, so one is an error


def save_tiktoken_ranks(tok: BPETokenizer, path: str | os.PathLike) -> None:
    """Write a tiktoken ranks file (``<base64 token> <id>`` per line, as ``*.tiktoken`` files).

    The file has no pattern or special tokens: pass them when loading, e.g.
    ``tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path),
    special_tokens=tok.special_tokens)``.
    """
    lines = [f"{base64.b64encode(t).decode('ascii')} {i}" for i, t in enumerate(tok.vocab)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def load_tiktoken_ranks(path: str | os.PathLike, special_tokens: Mapping[str, int] | Sequence[str] = (),
                        pattern: str = "gpt2") -> BPETokenizer:
    """Read a tiktoken ranks file (see :func:`save_tiktoken_ranks`) into a BPETokenizer."""
    ranks: dict[bytes, int] = {}
    try:
        for line in Path(path).read_text(encoding="ascii").splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (OSError, ValueError) as e:
        raise TinyLMError(f"{path} is not a tiktoken ranks file ({type(e).__name__}: {e})") from None
    return BPETokenizer.from_ranks(ranks, special_tokens, pattern, Path(path).stem)


def to_hf_json(tok: Tokenizer) -> dict:
    """A Hugging Face ``tokenizers`` JSON document for ``tok``, BPE or character level.

    BPE: pre-tokenization is the same regex (``Split``, isolated) followed by ``ByteLevel`` without
    its own regex (it only maps bytes to GPT-2's printable characters); the model is BPE with our
    vocabulary and merges. Characters: every character split off alone (:data:`CHAR_SPLIT`), looked
    up in a ``WordLevel`` vocabulary (a character it lacks is an error, as tinylm's), the ids joined
    back with ``Fuse``. Special tokens are added tokens, always recognized (so compare with
    ``tok.encode(text, allowed_special="all")``).
    """
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None}
    if isinstance(tok, CharTokenizer):
        return doc | {"pre_tokenizer": {"type": "Split", "pattern": {"Regex": CHAR_SPLIT}, "behavior": "Isolated",
                                        "invert": False},
                      "post_processor": None, "decoder": {"type": "Fuse"},
                      "model": {"type": "WordLevel", "vocab": dict(tok.stoi), "unk_token": UNKNOWN}}
    vocab = {to_unicode(t): i for i, t in enumerate(tok.vocab)}
    merges = [f"{to_unicode(tok.vocab[a])} {to_unicode(tok.vocab[b])}" for a, b in tok.merges]
    return doc | {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def save_hf(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write ``tokenizer.json`` for ``tokenizers.Tokenizer.from_file`` (and ``transformers``'
    ``PreTrainedTokenizerFast(tokenizer_file=...)``)."""
    write_text_atomic(path, json.dumps(to_hf_json(tok), ensure_ascii=False, indent=1) + "\n")


def load_hf(path: str | os.PathLike) -> Tokenizer:
    """A Hugging Face ``tokenizer.json`` of a byte-level BPE -> BPETokenizer: one :func:`save_hf` wrote
    (its ``Split`` regex is the pattern) or GPT-2's (``ByteLevel`` splits with GPT-2's own pattern);
    a character vocabulary :func:`save_hf` wrote -> CharTokenizer.

    Anything that would encode differently here is refused by name: another model type, a
    normalizer, SentencePiece's byte fallback (Llama 2's tokenizer), a prefix space.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        model, pre = doc["model"], doc.get("pre_tokenizer") or {}
        if model.get("type") == "WordLevel":
            return _load_hf_chars(doc, path)
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        pattern = _split_pattern(steps)
        unlike = {"normalizer": doc.get("normalizer") is not None, "byte_fallback": bool(model.get("byte_fallback")),
                  "continuing_subword_prefix": bool(model.get("continuing_subword_prefix")),
                  "end_of_word_suffix": bool(model.get("end_of_word_suffix")), "pre_tokenizer": pattern is None,
                  "add_prefix_space": any(s.get("add_prefix_space") for s in steps)}
        bad = next((k for k, v in unlike.items() if v), None)
        what = f"a {model.get('type')!r} model" if model.get("type") != "BPE" else bad and f"the setting {bad}"
        if what:
            raise TinyLMError(f"{path} holds {what}, which tinylm has no counterpart for; tinylm reads byte-level "
                              f"BPE tokenizers like GPT-2's (no normalizer, byte fallback or prefix space)")
        vocab = {int(i): unicode_to_bytes(t) or t.encode("utf-8") for t, i in model["vocab"].items()}
        for added in doc.get("added_tokens") or []:
            vocab.setdefault(int(added["id"]), added["content"].encode("utf-8"))
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        pairs = [(unicode_to_bytes(a), unicode_to_bytes(b)) for a, b in merges]  # ValueError: not two tokens
    except TinyLMError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # JSON of another shape
        raise TinyLMError(f"cannot read {path} as a Hugging Face tokenizer.json ({type(e).__name__}: {e}); "
                          f"pass the tokenizer.json of a byte-level BPE (such as GPT-2's)") from None
    try:
        return BPETokenizer.from_files(vocab, pairs, pattern)
    except TinyLMError as e:  # say which file
        raise TinyLMError(f"{path}: {e}") from None


def _load_hf_chars(doc: dict, path: str | os.PathLike) -> CharTokenizer:
    """A character vocabulary's tokenizer.json (what :func:`to_hf_json` writes for one) -> CharTokenizer: only one
    that tinylm would write the same way, so every character and special token keeps its id."""
    chars = doc["model"]["vocab"]  # character -> id
    added = sorted(doc.get("added_tokens") or [], key=lambda a: a["id"])
    if all(len(c) == 1 for c in chars):
        tok = CharTokenizer(chars, [a["content"] for a in added])
        if all(to_hf_json(tok)[k] == doc.get(k) for k in ("added_tokens", "normalizer", "pre_tokenizer", "decoder",
                                                            "model")):
            return tok
    raise TinyLMError(f"{path} holds a 'WordLevel' model that is not a character vocabulary as tinylm writes it; "
                      f"tinylm reads byte-level BPE tokenizers and its own character vocabularies")


def _split_pattern(steps: list[dict]) -> str | None:
    """The split regex of a tokenizer.json's pre-tokenizer steps; None when they are not one tinylm runs."""
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):  # GPT-2's own: ByteLevel splits
        return "gpt2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):  # what save_hf writes
        split = steps[0]
        if "Regex" in split.get("pattern", {}) and split.get("behavior") == "Isolated" and not split.get("invert"):
            return split["pattern"]["Regex"]
    return None


def to_hf_tokenizer(tok: BPETokenizer) -> Any:
    """The ``tokenizers.Tokenizer`` itself (needs ``pip install tokenizers``)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TinyLMError("Hugging Face export needs the `tokenizers` package: "
                          "pip install 'tinylm[dev]' (or pip install tokenizers)") from None
    return Tokenizer.from_str(json.dumps(to_hf_json(tok)))
