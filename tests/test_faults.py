"""Nothing overwritten, nothing stale, nothing left running, a full disk in one line (issue 30, items 1, 2, 4, 5).

Each test fails on a tinylm that overwrites a user's file, trains on shards of a corpus that changed since,
leaves pool workers behind a killed prepare, or prints a traceback for a full disk.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinylm.cli import main
from tinylm.config import to_toml
from tinylm.fileio import MADE, made_file
from tinylm.training.trainer import train

from conftest import cli_args, one_line_error, stdlib_text, tiny_config

MINE = "my own notes\n"


def quiet(*a, **k):
    pass


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_200k):
    """A finished 4-step run (its config)."""
    cfg = tiny_config(tmp_path_factory.mktemp("run"), text_200k, **{"train.max_steps": 4, "train.eval_interval": 0})
    train(cfg, log=quiet)
    return cfg


# ----------------------------------------------------------------------- item 1: a user's files are not replaced

def test_tokenizer_train_replaces_only_a_tokenizer_file_it_wrote(tmp_path, text_200k, capsys):
    out = tmp_path / "tok.txt"
    out.write_text(MINE)
    args = ["tokenizer", "train", "--corpus", str(text_200k), "--vocab-size", "300", "--workers", "1",
            "--out", str(out)]
    assert main(args) == 2
    one_line_error(capsys, f"{out} exists and was not written by tinylm", "choose another --out")
    assert out.read_text() == MINE and not out.with_suffix(".vocab.txt").exists()

    out.unlink()
    assert main(args) == 0 and made_file(out) and made_file(out.with_suffix(".vocab.txt"))
    assert main(args) == 0  # its own file: replaced
    capsys.readouterr()
    with out.open("a") as f:
        f.write("# edited by hand\n")  # changed since tinylm wrote it: the user's now
    assert main(args) == 2
    one_line_error(capsys, f"{out} exists and was not written by tinylm (or was changed since)")


@pytest.mark.parametrize("command, name", [("lr-find", "lr_find.json"), ("profile", "profile.md"),
                                           ("lr-find", "lr_find.png")])
def test_commands_with_out_refuse_a_users_file_before_any_work(tmp_path, run, command, name, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(MINE)
    assert main([command, *cli_args(run), "--out", str(out)]) == 2
    one_line_error(capsys, f"{out / name} exists and was not written by tinylm")
    assert listing(out) == {name: MINE.encode()}


def test_lr_find_replaces_its_own_result(tmp_path, run, capsys):
    out = tmp_path / "lr"
    args = ["lr-find", *cli_args(run), "--steps", "10", "--out", str(out)]
    assert main(args) == 0 and made_file(out / "lr_find.json")
    assert main(args) == 0
    assert "replacing the earlier result" in capsys.readouterr().out


def test_decode_report_refuses_a_users_report(tmp_path, run, capsys):
    out = tmp_path / "dec"
    out.mkdir()
    (out / "decode_report.md").write_text(MINE)
    assert main(["decode-report", str(run.run_dir), "--out", str(out), "--n", "1", "--max-new-tokens", "4"]) == 2
    one_line_error(capsys, f"{out / 'decode_report.md'} exists and was not written by tinylm")
    assert listing(out) == {"decode_report.md": MINE.encode()}


@pytest.mark.parametrize("command, name", [("sweep", "results.csv"), ("scaling", "report.md")])
def test_sweep_and_scaling_refuse_a_users_file_before_training(tmp_path, run, command, name, capsys):
    base = tmp_path / "base.toml"
    base.write_text(to_toml(run))
    out = tmp_path / "study"
    out.mkdir()
    (out / name).write_text(MINE)
    args = (["sweep", "--grid", str(_grid(tmp_path))] if command == "sweep"
            else ["scaling", "--budgets", "1e9,2e9,4e9", "--sizes", "1,2,3"])
    assert main([*args, "--config", str(base), "--out", str(out)]) == 2
    one_line_error(capsys, f"{out / name} exists and was not written by tinylm")
    assert listing(out) == {name: MINE.encode()}  # nothing trained


def _grid(tmp_path: Path) -> Path:
    grid = tmp_path / "grid.toml"
    grid.write_text('[axes]\n"optim.lr" = [1e-3, 2e-3]\n')
    return grid


USER_RUN = {"config.toml": "[train]\nmax_steps = 5\n", "metrics.jsonl": '{"step": 1, "loss": 1.0}\n',
            "samples.md": "my samples\n", ".lock": "my lock\n"}


@pytest.mark.parametrize("resume", [True, False])
def test_train_does_not_write_in_a_folder_that_is_not_a_run(tmp_path, text_200k, resume, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2})
    cfg.run_dir.mkdir(parents=True)
    files = USER_RUN if resume else {".lock": "my lock\n"}
    for name, text in files.items():
        (cfg.run_dir / name).write_text(text)
    assert main(["train", *cli_args(cfg), *(["--resume"] if resume else [])]) == 2
    one_line_error(capsys, f"{cfg.run_dir} holds files tinylm did not write", "is not a tinylm run folder",
                   "choose another --run.name")
    assert listing(cfg.run_dir) == {name: text.encode() for name, text in files.items()}


def test_a_run_folder_resumes_and_one_of_an_older_tinylm_too(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0})
    assert main(["train", *cli_args(cfg)]) == 0
    assert (cfg.run_dir / MADE).is_file()
    (cfg.run_dir / MADE).unlink()  # as an older tinylm left it: its checkpoints say it is a run folder
    assert main(["train", *cli_args(cfg), "--train.max_steps", "4", "--resume"]) == 0


def test_prepare_removes_only_scratch_folders_it_made(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f".data.tmp-{dead.pid}"  # named like prepare's scratch folder, made by the user
    mine.mkdir()
    (mine / "notes.txt").write_text(MINE)
    left = tmp_path / f".data.old-{dead.pid}"  # what a killed prepare leaves (marked as tinylm's)
    left.mkdir()
    (left / MADE).write_text('{"folder": true}\n')
    assert main(["prepare", *cli_args(cfg)]) == 0
    assert listing(mine) == {"notes.txt": MINE.encode()} and not left.exists()


# ----------------------------------------------------------------------- item 2: a changed corpus is noticed

def test_train_prepares_again_after_the_corpus_changed(tmp_path, text_200k, capsys):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(text_200k, corpus)
    cfg = tiny_config(tmp_path, corpus, **{"train.max_steps": 2, "train.eval_interval": 0})
    assert main(["prepare", *cli_args(cfg)]) == 0
    before = json.loads((Path(cfg.data.dir) / "meta.json").read_text())
    assert before["corpus_stamps"][str(corpus)]["size"] == corpus.stat().st_size
    capsys.readouterr()

    with corpus.open("a") as f:
        f.write("\nA NEW SCENE. Enter ZEBRA.\n" * 200)
    assert main(["train", *cli_args(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"the corpus file {corpus} has changed" in out and "preparing it again" in out
    after = json.loads((Path(cfg.data.dir) / "meta.json").read_text())
    assert after["corpus_bytes"] == corpus.stat().st_size > before["corpus_bytes"]
    assert after["vocab_size"] == before["vocab_size"] + ("Z" not in text_200k.read_text())


def test_a_same_size_replacement_is_noticed_and_a_touch_is_not(tmp_path, text_200k, capsys):
    corpus = tmp_path / "corpus.txt"
    text = text_200k.read_text()
    corpus.write_text(text)
    cfg = tiny_config(tmp_path, corpus)
    assert main(["prepare", *cli_args(cfg)]) == 0
    os.utime(corpus, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: same bytes
    capsys.readouterr()
    assert main(["prepare", *cli_args(cfg)]) == 0
    assert "changed" not in capsys.readouterr().out
    corpus.write_text(text[::-1])  # same size, other content
    os.utime(corpus, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert main(["prepare", *cli_args(cfg)]) == 0
    assert f"the corpus file {corpus} has changed (same size, other content)" in capsys.readouterr().out


def test_a_changed_corpus_with_a_folder_that_cannot_be_replaced_is_refused(tmp_path, text_200k, capsys):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(text_200k, corpus)
    cfg = tiny_config(tmp_path, corpus)
    assert main(["prepare", *cli_args(cfg)]) == 0
    (Path(cfg.data.dir) / "notes.txt").write_text(MINE)  # the user's file in the data folder
    with corpus.open("a") as f:
        f.write("more text\n")
    capsys.readouterr()
    assert main(["train", *cli_args(cfg)]) == 2
    one_line_error(capsys, f"the corpus file {corpus} has changed", "preparing it again failed",
                   "holds files tinylm did not write (notes.txt)")
    assert not cfg.run_dir.exists()


# ----------------------------------------------------------------------- item 4: a killed prepare leaves nothing

def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
@pytest.mark.parametrize("command, sig", [("tokenizer", signal.SIGKILL), ("tokenizer", signal.SIGTERM),
                                          ("prepare", signal.SIGTERM)])
def test_a_prepare_killed_while_counting_leaves_no_worker(tmp_path, command, sig):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(stdlib_text(6_000_000))  # 12 blocks of pre-token counting: seconds on 2 workers
    if command == "tokenizer":
        args = ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "400", "--workers", "2",
                "--out", str(tmp_path / "tok.txt")]
    else:
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("prepare counts on a pool only with 2 or more cores")
        cfg = tiny_config(tmp_path, corpus, **{"data.tokenizer": "bpe", "data.vocab_size": 400})
        args = ["prepare", *cli_args(cfg)]
    parent = subprocess.Popen([sys.executable, "-m", "tinylm", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = _children(parent.pid)
        assert len(workers) >= 2, "the pool never started"
        time.sleep(0.5)  # counting
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)], "pool workers outlived the killed prepare"
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)


# ----------------------------------------------------------------------- item 5: a full disk is one line

class FillingDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: writes go to ``path`` until then, then fail with ENOSPC
    (a short write first, as a real disk gives), through Python's own buffering like a real file."""

    def __init__(self, path: Path, room: int, mode: str):
        self.f = builtins.open(path, mode.replace("t", "").replace("b", "") + "b", buffering=0)  # noqa: SIM115
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(b), self.room)
        self.room -= n
        return self.f.write(bytes(b[:n]))

    def close(self) -> None:
        self.f.close()
        super().close()


def filling_open(match: str, room: int):
    """An ``open`` whose files named ``*match`` (opened for writing) sit on a disk with ``room`` bytes left."""
    def fake(path, mode="r", *args, encoding=None, **kwargs):
        if str(path).endswith(match) and any(c in mode for c in "wa"):
            raw = io.BufferedWriter(FillingDisk(Path(path), room, mode))
            return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        return builtins.open(path, mode, *args, encoding=encoding, **kwargs)
    return fake


def test_a_full_disk_while_appending_metrics_is_one_line_and_resume_continues(tmp_path, text_200k, capsys,
                                                                              monkeypatch):
    from tinylm.training import tracking
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 20, "train.log_interval": 1,
                                              "train.eval_interval": 10})
    with monkeypatch.context() as m:
        m.setattr(tracking, "open", filling_open("metrics.jsonl", room=600), raising=False)
        assert main(["train", *cli_args(cfg)]) == 2
    one_line_error(capsys, f"the disk is full: no space left to write {cfg.run_dir / 'metrics.jsonl'}", "--resume")
    assert main(["train", *cli_args(cfg), "--resume"]) == 0


def test_a_full_disk_while_preparing_is_one_line_and_leaves_nothing(tmp_path, text_200k, capsys, monkeypatch):
    import importlib
    prepare = importlib.import_module("tinylm.data.prepare")  # the module (tinylm.data.prepare is its function)
    cfg = tiny_config(tmp_path, text_200k)
    with monkeypatch.context() as m:
        m.setattr(prepare, "open", filling_open(".tokens", room=10_000), raising=False)
        assert main(["prepare", *cli_args(cfg)]) == 2
    one_line_error(capsys, f"the disk is full: no space left to write {cfg.data.dir}", "tinylm prepare")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data") or p.name == "data"]
    assert main(["prepare", *cli_args(cfg)]) == 0
