"""The CLI wires library functions; these check the wiring and the messages people see."""
import subprocess
import sys

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
    assert main(["tokenizer", "encode", str(out), "--text", "the king<|endoftext|>"]) == 2  # tiktoken's default
    err = capsys.readouterr().err
    assert err == ("tinylm: error: the text contains the special token '<|endoftext|>' at character 8; pass "
                   "--allowed-special all to encode it as that token, or --ordinary to encode it as plain text\n")
    assert main(["tokenizer", "encode", str(out), "--text", "the king<|endoftext|>", "--ordinary"]) == 0
    plain = capsys.readouterr().out.split()
    for allowed in ("all", "<|endoftext|>"):
        assert main(["tokenizer", "encode", str(out), "--text", "the king<|endoftext|>", "--allowed-special",
                     allowed]) == 0
        special = capsys.readouterr().out.split()
        assert special[-1] == "299" and len(special) < len(plain)
    assert main(["tokenizer", "encode", str(out), "--text", "the king", "--allowed-special", "none"]) == 0
    assert capsys.readouterr().out.split() == plain[:len(special) - 1]
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


def test_tokenizer_train_out_a_folder_is_one_line(tmp_path, english, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["tokenizer", "train", "--corpus", english, "--vocab-size", "300", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"tinylm: error: {tmp_path} is a folder, and tinylm writes a file there; choose another --out, or " \
                  f"move it away\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_config_command(capsys):
    assert main(["config", "--model.n_layer", "3"]) == 0
    assert "n_layer = 3" in capsys.readouterr().out
    assert main(["config", "--keys"]) == 0
    assert "--optim.lr (default 0.001): Peak learning rate of the hidden weight matrices" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["config", "--keys"], ["config", "--model.n_layer", "3"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    # `tinylm config --keys | head`: the reader is gone before tinylm writes
    p = subprocess.Popen([sys.executable, "-m", "tinylm", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


@pytest.mark.parametrize("argv, message", [
    (["info", "RUN", "--jsn"], "`tinylm info` has no flag --jsn; did you mean --json?"),
    (["info", "RUN", "--sample.temperature", "1"],
     "`tinylm info` has no flag --sample.temperature; config overrides do not apply to `tinylm info`"),
    (["info", "RUN", "extra"], "`tinylm info` does not take the argument 'extra'"),
    (["export", "RUN", "--out", "OUT", "--fomat", "x"],
     "`tinylm export` has no flag --fomat; did you mean --format, --out?"),
    (["tokenizer", "encode", "gpt2", "--txt", "hi"],
     "`tinylm tokenizer encode` has no flag --txt; did you mean --text?"),
    (["tokenizer", "decode", "gpt2", "--idz", "1"], "`tinylm tokenizer decode` has no flag --idz; did you mean --ids?"),
    (["tokenizer", "train", "--corpus", "x", "--vocab-size", "300", "--out", "OUT", "--workrs", "2"],
     "`tinylm tokenizer train` has no flag --workrs; did you mean --workers"),
    (["tokenizer", "stats", "--corpus", "x", "--widht", "8"], "`tinylm tokenizer stats` has no flag --widht"),
    (["train", "--lr", "1e-3"], "`tinylm train` has no flag --lr; did you mean --optim.lr"),
    (["train", "--optim.lr", "1e-3", "--froce"], "`tinylm train` has no flag --froce"),
    (["sample", "RUN", "--tempreature", "1"], "`tinylm sample` has no flag --tempreature; did you mean --temperature"),
    (["decode-report", "RUN", "--strategy", "greedy"],
     "`tinylm decode-report` has no flag --strategy; did you mean --strategies"),
])
def test_every_command_refuses_an_unknown_flag_naming_the_nearest(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a in ("RUN", "OUT") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # refused before anything was read or written


def test_commands_with_config_overrides_still_take_them(capsys):
    assert main(["config", "--optim.lr", "3e-4", "--model.n_layer=3"]) == 0
    assert "lr = 0.0003" in capsys.readouterr().out
    assert main(["config", "--optim.lrr", "3e-4"]) == 2  # the config's own check, with its suggestions
    assert "unknown config key --optim.lrr; did you mean --optim.lr" in capsys.readouterr().err


def torch_loaded(code: str, *args: str) -> bool:
    """Whether ``python -c code args...`` in a fresh interpreter imported torch (checked as it exits)."""
    probe = f"import atexit, sys\natexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n{code}"
    p = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stderr.splitlines()[-1] == "True"


CLI = "from tinylm.cli import main\nsys.exit(main())"


@pytest.mark.parametrize("argv", [["--help"], ["config", "--keys"], ["doctor", "--help"],
                                  ["tokenizer", "train", "--corpus", "TEXT", "--vocab-size", "260", "--workers", "1",
                                   "--out", "OUT"]])
def test_commands_that_compute_nothing_start_without_torch(tmp_path, english, argv):
    """Importing torch takes seconds: only the commands that run a model may load it."""
    argv = [english if a == "TEXT" else str(tmp_path / "tok.txt") if a == "OUT" else a for a in argv]
    assert not torch_loaded(CLI, *argv)


@pytest.mark.parametrize("code", ["import tinylm.config", "from tinylm import Config, TinyLMError, __version__"])
def test_the_config_and_the_light_public_names_import_without_torch(code):
    assert not torch_loaded(code)


def test_a_public_name_that_needs_torch_loads_it_on_first_use():
    assert torch_loaded("import tinylm\nassert 'torch' not in sys.modules\ntinylm.GPT")
