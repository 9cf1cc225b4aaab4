"""The README's commands, run as written: what it says and what tinylm does cannot drift apart.

The README marks each block of commands this file runs with ``<!-- readme-test: NAME -->`` on the
line before the fenced block. Each line is split like a shell would and handed to ``tinylm``'s own
``main``, with :data:`TINY` appended to the commands that train, so that the whole quick start runs
in seconds; nothing else about the commands changes. ``make demo`` itself (set-up included) is not
run: its recipe must be exactly the README's demo block.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tinylm.cli import main
from tinylm.data import corpora
from tinylm.training.tracking import read_metrics

from conftest import COLLECTED, REPO, SHARED_DATA, TINYSHAKESPEARE, stdlib_text

MARK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```bash\n(.*?)```", re.S)

#: appended to every `tinylm train` and `lr-find` line: a tiny model and a few steps, in fp32 on the CPU
TINY = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32",
        "--train.batch_size", "4", "--train.max_steps", "4", "--train.eval_interval", "2",
        "--train.eval_tokens", "64", "--sample.max_new_tokens", "16", "--train.precision", "fp32",
        "--train.device", "cpu", "--run.progress", "false"]


def readme_blocks() -> dict[str, list[list[str]]]:
    """Each marked block's commands, split into words: ``{"demo": [["tinylm", "train", ...], ...], ...}``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return {name: [words for line in body.splitlines() if (words := shlex.split(line, comments=True))]
            for name, body in MARK.findall(text)}


def makefile_demo() -> list[list[str]]:
    """The tinylm commands of the Makefile's `demo` recipe, with ``$(BIN)/tinylm`` read as ``tinylm``."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    lines = [line.strip() for line in recipe[1].splitlines()]
    return [shlex.split(line.replace("$(BIN)/tinylm", "tinylm")) for line in lines if "$(BIN)/tinylm" in line]


def test_the_readme_lists_exactly_what_make_demo_runs():
    blocks = readme_blocks()
    assert set(blocks) >= {"demo", "own-text", "configuration"}
    assert blocks["demo"] == makefile_demo()
    for name, commands in blocks.items():
        assert all(words[0] == "tinylm" for words in commands), name


def run(words: list[str]) -> int:
    assert words[0] == "tinylm", words
    return main(words[1:] + (TINY if words[1] in ("train", "lr-find") else []))


def run_block(commands: list[list[str]], capsys) -> str:
    """Run each command; all must succeed. Returns what they printed."""
    out = []
    for words in commands:
        code = run(words)
        printed = capsys.readouterr()
        assert code == 0, (words, printed.err)
        out.append(printed.out + printed.err)
    return "".join(out)


@pytest.fixture
def shakespeare_offline(tmp_path, monkeypatch):
    """The `shakespeare` corpus without network: the shared data folder's copy when it has one, else
    real text under the corpus's file name with its digest pinned to match (the text is not what is
    tested here, the commands are)."""
    if (SHARED_DATA / corpora.CORPORA["shakespeare"].path).is_file():
        monkeypatch.setenv("TINYLM_DATA_DIR", str(SHARED_DATA))
        return
    text = TINYSHAKESPEARE.read_text(encoding="utf-8") if TINYSHAKESPEARE.is_file() else stdlib_text(300_000)
    root = tmp_path / "corpora"
    path = root / corpora.CORPORA["shakespeare"].path
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    entry = corpora.CORPORA["shakespeare"]
    monkeypatch.setitem(corpora.CORPORA, "shakespeare", corpora.NamedCorpus(
        entry.path, entry.url, hashlib.sha256(path.read_bytes()).hexdigest(), entry.description))
    monkeypatch.setenv("TINYLM_DATA_DIR", str(root))


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys, shakespeare_offline, text_200k):
    """A fresh folder with the repository's presets: the demo, the demo again, your own text, configuration."""
    work = tmp_path / "clone"
    shutil.copytree(REPO / "configs", work / "configs")
    monkeypatch.chdir(work)
    blocks = readme_blocks()

    out = run_block(blocks["demo"], capsys)
    assert "done at step 4: final train loss" in out and "ROMEO:" in out
    run_dir = work / "runs" / "shakespeare-char"
    metrics, samples = read_metrics(run_dir), (run_dir / "samples.md").read_text()

    again = run_block(blocks["demo"], capsys)  # `make demo` a second time
    assert f"run {run_dir.relative_to(work)} is complete" in again and "ROMEO:" in again
    assert "nan" not in again and "tok/s" not in again
    assert read_metrics(run_dir) == metrics and (run_dir / "samples.md").read_text() == samples

    demo_data = sorted(p.name for p in (work / "data").iterdir())
    shutil.copy(text_200k, work / "notes.txt")  # "notes.txt": your own text
    run_block(blocks["own-text"], capsys)
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["notes-bpe1024", "notes-char", "shakespeare-char"]
    assert sorted(p.name for p in (work / "data").iterdir()) == sorted([*demo_data, "notes-bpe1024", "notes-char"])
    assert read_metrics(run_dir) == metrics  # the demo's run is untouched

    run_block(blocks["configuration"], capsys)
    assert (work / "runs" / "deeper" / "config.toml").is_file()


def test_the_readme_states_the_number_of_tests():
    """"about N tests" within 10% of the suite; checked when the whole suite runs (`make test`, `make test-fast`)."""
    every_file = {p.name for p in (REPO / "tests").glob("test_*.py")}
    if {Path(str(item.fspath)).name for item in COLLECTED} != every_file:
        pytest.skip("only a run of the whole suite can count it")
    stated = int(re.search(r"about (\d+) tests", (REPO / "README.md").read_text(encoding="utf-8"))[1])
    assert abs(len(COLLECTED) - stated) <= 0.1 * stated, f"the suite has {len(COLLECTED)} tests, README says {stated}"


def test_what_the_readmes_examples_write_in_the_repository_is_ignored_by_git_and_removed_by_make_clean():
    """`--out hf/...` or `--out reports/...` run in a clone leave no untracked clutter, and `make clean` takes it."""
    import subprocess
    if not (REPO / ".git").exists():
        pytest.skip("not a git clone")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))  # the examples one copies and runs
    tops = {Path(out).parts[0] for out in re.findall(r"--out (\w[\w./-]*)", commands) if out.upper() != out}
    assert {"hf", "reports", "runs"} <= tops
    clean = re.search(r"^clean:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)[1].split()
    for top in sorted(tops):
        probe = top if "." in top else f"{top}/x"  # a file, or something inside a folder
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=REPO).returncode == 0
        assert ignored and top in clean, top
