import pytest

from tinylm.errors import TinyLMError
from tinylm.tokenizer import CharTokenizer, load_tokenizer


def test_known_answer_and_round_trip():
    tok = CharTokenizer.train(["hello", " world"])
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    assert tok.vocab_size == 8


def test_unknown_character_names_it():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(TinyLMError, match=r"\['z'\]"):
        tok.encode("abz")


def test_special_tokens_after_chars_and_only_when_allowed():
    tok = CharTokenizer.train(["ab<|>"], special_tokens=["<|endoftext|>"])
    eot = tok.special_tokens["<|endoftext|>"]
    assert eot == len(tok.chars) and tok.eot_id == eot and tok.vocab_size == len(tok.chars) + 1
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [tok.stoi["a"], eot, tok.stoi["b"]]
    with pytest.raises(TinyLMError):  # 'e', 'n', ... are not characters of this vocabulary
        tok.encode("a<|endoftext|>b")
    assert tok.decode([eot]) == "<|endoftext|>"


def test_save_load_round_trip(tmp_path):
    tok = CharTokenizer.train(["héllo\n\t\"wörld\" 🙂"], special_tokens=["<|endoftext|>"])
    tok.save(tmp_path / "t.txt")
    back = load_tokenizer(tmp_path / "t.txt")
    assert isinstance(back, CharTokenizer)
    assert back.chars == tok.chars and back.special_tokens == tok.special_tokens
    assert (tmp_path / "t.txt").read_text().startswith("tinylm-char 1\n")


def test_load_errors(tmp_path):
    with pytest.raises(TinyLMError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.txt")
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(TinyLMError, match="not a tinylm tokenizer file"):
        load_tokenizer(tmp_path / "x.txt")
    (tmp_path / "y.txt").write_text("tinylm-wordpiece 1\n{}")
    with pytest.raises(TinyLMError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path / "y.txt")


def test_empty_text_is_an_error():
    with pytest.raises(TinyLMError, match="empty"):
        CharTokenizer.train([""])
