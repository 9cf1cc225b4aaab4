"""The CLI wires library functions; these check the wiring and the messages people see."""
import pytest

from tinylm.cli import main


@pytest.fixture
def english(tmp_path, text_200k):
    return str(text_200k)


def test_tokenizer_train_encode_decode(tmp_path, english, capsys):
    out = tmp_path / "tok.txt"
    assert main(["tokenizer", "train", "--corpus", english, "--vocab-size", "300", "--out", str(out)]) == 0
    assert "300 tokens (43 merges" in capsys.readouterr().out
    assert (tmp_path / "tok.vocab.txt").is_file()
    assert main(["tokenizer", "encode", str(out), "--text", "the king<|endoftext|>"]) == 0
    plain = capsys.readouterr().out.split()
    assert main(["tokenizer", "encode", str(out), "--text", "the king<|endoftext|>", "--allowed-special", "all"]) == 0
    special = capsys.readouterr().out.split()
    assert special[-1] == "299" and len(special) < len(plain)
    assert main(["tokenizer", "decode", str(out), "--ids", " ".join(plain)]) == 0
    assert capsys.readouterr().out == "the king<|endoftext|>"


def test_tokenizer_stats_table(english, capsys):
    assert main(["tokenizer", "stats", "--corpus", english, "--vocab-sizes", "256,512", "--width", "64",
                 "--max-chars", "50000"]) == 0
    out = capsys.readouterr().out
    assert "| bpe-256 " in out and "| bpe-512 " in out and "16,384" in out  # 256 x 64 embedding params


def test_tokenizer_errors(tmp_path, english, capsys):
    assert main(["tokenizer", "train", "--corpus", english, "--vocab-size", "100", "--out",
                 str(tmp_path / "t.txt")]) == 2
    assert "256" in capsys.readouterr().err
    assert main(["tokenizer", "encode", str(tmp_path / "none.txt"), "--text", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_command(capsys):
    assert main(["config", "--model.n_layer", "3"]) == 0
    assert "n_layer = 3" in capsys.readouterr().out
    assert main(["config", "--keys"]) == 0
    assert "--optim.lr (default 0.001): Peak learning rate of the hidden weight matrices" in capsys.readouterr().out
