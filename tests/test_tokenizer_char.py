import pytest

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.tokenizer import CharTokenizer, DisallowedSpecial, load_tokenizer
from tinylm.tokenizer.io import load_hf, save_hf

from conftest import shared_text


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
    assert eot == len(tok.chars) and tok.eot_token == eot and tok.vocab_size == len(tok.chars) + 1
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [tok.stoi["a"], eot, tok.stoi["b"]]
    with pytest.raises(DisallowedSpecial, match="at character 1"):  # tiktoken's default, as for BPE
        tok.encode("a<|endoftext|>b")
    with pytest.raises(TinyLMError, match="not in this character vocabulary"):  # 'e', 'n', ... are not characters
        tok.encode_ordinary("a<|endoftext|>b")
    assert tok.encode_ordinary("a<|>b") == tok.encode("a<|>b") == [tok.stoi[c] for c in "a<|>b"]
    assert tok.decode([eot]) == "<|endoftext|>"
    with pytest.raises(TinyLMError, match="not special tokens"):  # the same rule as BPE's
        tok.encode("ab", allowed_special={"<|nope|>"})


def test_tiktoken_style_api():
    tok = CharTokenizer.train(["hello world"], special_tokens=["<|endoftext|>"])
    eot = tok.eot_token
    assert tok.n_vocab == tok.vocab_size == 9 and eot == 8
    text = "hello<|endoftext|>world"
    assert tok.encode_batch(["hello", text, ""], allowed_special="all") == [
        tok.encode("hello"), [*tok.encode("hello"), eot, *tok.encode("world")], []]
    with pytest.raises(DisallowedSpecial):
        tok.encode_batch(["hello", text])
    assert tok.decode_single_token_bytes(tok.stoi["o"]) == b"o"
    assert tok.decode_single_token_bytes(eot) == b"<|endoftext|>"
    assert tok.decode_bytes(tok.encode("hello")) == b"hello"
    assert tok.token_to_id("w") == tok.stoi["w"] and tok.token_to_id("<|endoftext|>") == eot
    assert tok.token_to_id("z") is None and tok.id_to_token(eot) == "<|endoftext|>" and tok.id_to_token(9) is None
    assert [tok.id_to_token(i) for i in range(8)] == tok.chars
    with pytest.raises(TinyLMError, match="not in this tokenizer"):
        tok.decode_single_token_bytes(9)


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


def test_file_without_special_tokens_still_loads(tmp_path):
    # files written before prepare gave every char tokenizer <|endoftext|>
    (tmp_path / "old.txt").write_text('tinylm-char 1\n{\n "chars": "ab",\n "special_tokens": []\n}\n')
    tok = load_tokenizer(tmp_path / "old.txt")
    assert tok.chars == ["a", "b"] and tok.eot_token is None and tok.vocab_size == 2


@pytest.mark.parametrize("damage", [
    lambda s: s[:len(s) // 2],                       # truncated
    lambda s: s.split("\n", 1)[0] + "\n",            # header only
    lambda s: s.replace('"special_tokens"', '"specials"'),
    lambda s: s.replace('"chars": ', '"chars": 5, "x": '),
], ids=["truncated", "header only", "missing key", "wrong type"])
def test_damaged_file_is_a_one_line_error_naming_it(tmp_path, damage):
    path = tmp_path / "t.txt"
    CharTokenizer.train(["hello world\n"], special_tokens=["<|endoftext|>"]).save(path)
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(TinyLMError, match=f"{path}: the character tokenizer file is corrupted") as e:
        load_tokenizer(path)
    assert "\n" not in str(e.value)


def test_binary_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_bytes(b"tinylm-char 1\n\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(TinyLMError, match=f"{path} is not a tinylm tokenizer file \\(byte 14 is not UTF-8"):
        load_tokenizer(path)
    assert main(["tokenizer", "encode", str(path), "--text", "a"]) == 2
    err = capsys.readouterr().err
    assert "is not a tinylm tokenizer file" in err and "Traceback" not in err


def test_a_tokenizer_json_of_the_characters_encodes_decodes_and_reads_back_the_same(tmp_path):
    """Hugging Face ``tokenizers`` runs the character vocabulary save_hf writes with tinylm's ids, line breaks
    in runs, astral characters and <|endoftext|> included, decodes them back to the text, and load_hf reads it
    back as the same tokenizer; a WordLevel vocabulary that tinylm would number otherwise is refused."""
    tokenizers = pytest.importorskip("tokenizers")
    text = shared_text("tinyshakespeare/input.txt", 100_000) + "\r\n\t déjà-vu \U0001F600  \n\n\n"
    tok = CharTokenizer.train([text], special_tokens=["<|endoftext|>"])
    save_hf(tok, tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample = text[-30_000:] + "<|endoftext|>" + text[:2_000]
    ids = tok.encode(sample, allowed_special="all")
    assert hf.encode(sample).ids == ids and len(ids) == len(sample) - len("<|endoftext|>") + 1
    assert hf.decode(ids, skip_special_tokens=False) == sample
    with pytest.raises(Exception, match="Missing"):  # a character it lacks is an error, as it is tinylm's
        hf.encode("\u20ac")
    back = load_hf(tmp_path / "tokenizer.json")
    assert isinstance(back, CharTokenizer) and back.same_ids(tok)
    other = tokenizers.Tokenizer(tokenizers.models.WordLevel({"b": 0, "a": 1}, unk_token="<unk>"))
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(TinyLMError, match=r"other.json holds a 'WordLevel' model that is not a character vocab"):
        load_hf(tmp_path / "other.json")
