"""Character-level tokenizer: one id per distinct character of the training text.

The classic tiny-Shakespeare setup (65 characters). Characters are sorted by code point so the
same text always gives the same ids. A character never seen in training has no id: encoding it
is an error that names the character (train on a text that contains it, or use BPE).
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from ..errors import TinyLMError
from .base import Tokenizer, register


@register
class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = ()):
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise TinyLMError("CharTokenizer takes single characters")
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}
        # special tokens get the ids after the characters, in the order given
        self.special_tokens = {s: len(self.chars) + i for i, s in enumerate(dict.fromkeys(special_tokens))}
        self._id_to_text = self.chars + list(self.special_tokens)

    @classmethod
    def train(cls, texts: Iterable[str], special_tokens: Iterable[str] = ()) -> CharTokenizer:
        """Collect the character set of a stream of text chunks.

        ``CharTokenizer.train(["hello", "world"]).chars -> ['d', 'e', 'h', 'l', 'o', 'r', 'w']``
        """
        seen: set[str] = set()
        for chunk in texts:
            seen.update(chunk)
        if not seen:
            raise TinyLMError("cannot build a character tokenizer from an empty text")
        return cls(seen, special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_text)

    def _encode(self, text: str, allowed: set[str]) -> list[int]:
        if allowed:
            return self._encode_with_specials(text, allowed, self._encode_plain)
        return self._encode_plain(text)

    def _encode_plain(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted({c for c in text if c not in stoi})
            raise TinyLMError(f"characters {missing[:10]!r} are not in this character vocabulary "
                              f"({len(self.chars)} chars); retrain the tokenizer on text that "
                              f"contains them or use --data.tokenizer bpe") from None

    def decode(self, ids: Iterable[int]) -> str:
        table = self._id_to_text
        return "".join(table[i] if 0 <= i < len(table) else "\ufffd" for i in ids)

    def token_to_id(self, token: str) -> int | None:
        """A character or a special token's text -> its id: ``token_to_id("a")``."""
        return self.stoi.get(token, self.special_tokens.get(token))

    def id_to_token(self, id: int) -> str | None:
        return self._id_to_text[id] if 0 <= id < len(self._id_to_text) else None

    def to_text(self) -> str:
        return json.dumps({"chars": "".join(self.chars), "special_tokens": list(self.special_tokens)},
                          ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_text(cls, body: str) -> CharTokenizer:
        try:
            d = json.loads(body)
            if not (isinstance(d.get("chars"), str) and isinstance(d.get("special_tokens"), list)):
                raise TypeError('expected {"chars": "<characters>", "special_tokens": [...]}')
            return cls(d["chars"], d["special_tokens"])
        except (ValueError, AttributeError, TypeError) as e:  # truncated, binary or edited
            raise TinyLMError(f"the character tokenizer file is corrupted ({type(e).__name__}: {e})") from None
