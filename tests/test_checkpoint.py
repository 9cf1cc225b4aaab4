"""Checkpoints and run folders under damage, full disks and concurrency: nothing lost, nothing silent.

Every refusal is checked for its one-line message and for leaving every file as it was.
"""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.fileio import claim_folder
from tinylm.model.gpt import GPT
from tinylm.training import checkpoint as ckpt
from tinylm.training.run_folder import LOCK, RunLock
from tinylm.training.tracking import logged_losses
from tinylm.training.trainer import Trainer, train

from conftest import cli_args, one_line_error, tiny_config

STEPS = {"train.max_steps": 20, "train.eval_interval": 10, "train.save_interval": 5, "train.keep_last": 3}


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_200k):
    """A finished 20-step run with checkpoints at steps 10, 15 and 20 (copy it before changing it)."""
    cfg = tiny_config(tmp_path_factory.mktemp("trained"), text_200k, **STEPS)
    train(cfg, log=quiet)
    return cfg


def copy_run(trained, tmp_path, text_200k, **overrides):
    """The trained run copied to tmp_path (sharing its data folder), and its config."""
    cfg = tiny_config(tmp_path, text_200k, **{**STEPS, "data.dir": trained.data.dir, **overrides})
    shutil.copytree(trained.run_dir, cfg.run_dir, symlinks=True)
    return cfg


def snapshot(folder):
    """Every file's content hash (and every link's target) under ``folder``; the lock file aside."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.name == LOCK:
            continue
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def truncate(path, n=None):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if n is None else n])


DAMAGE = {
    "meta_missing": lambda step: (step / "meta.json").unlink(),
    "meta_corrupt": lambda step: truncate(step / "meta.json", 40),
    "model_truncated": lambda step: truncate(step / "model.pt"),
    "trainer_truncated": lambda step: truncate(step / "trainer.pt"),
    "model_empty": lambda step: truncate(step / "model.pt", 0),
    "last_dangling": lambda step: shutil.rmtree(step),
}


# --------------------------------------------------------------------------- item 2: resume falls back

@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint_and_says_so(tmp_path, text_200k, trained, damage):
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 30})
    root = cfg.run_dir / "checkpoints"
    DAMAGE[damage](root / "step_000020")
    lines = []
    trainer = Trainer(cfg, resume=True, log=lines.append)
    trainer.close()
    assert trainer.state.step == 15
    log = "\n".join(lines)
    assert "resumed from" in log and "step_000015" in log
    assert ("points to step_000020, which is missing" if damage == "last_dangling"
            else "skipping step_000020") in log


def test_resume_after_a_damaged_checkpoint_prunes_nothing_it_needs(tmp_path, text_200k, trained):
    """Resumed from step 15 past a damaged step 20, the run saves step 18: steps 10 and 15 stay as they
    were, the damaged step 20 is left alone (nothing newer is complete), and `last` is step 18."""
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 18})
    root = cfg.run_dir / "checkpoints"
    (root / "step_000020" / "meta.json").unlink()
    before = snapshot(root)
    result = train(cfg, resume=True, log=quiet)
    assert result.step == 18
    after = snapshot(root)
    for name in ("step_000010", "step_000015", "step_000020"):
        assert {k: v for k, v in after.items() if k.startswith(name)} == \
               {k: v for k, v in before.items() if k.startswith(name)}
    assert os.readlink(root / "last") == "step_000018"


def test_resume_with_no_readable_checkpoint_stops_and_names_the_folder(tmp_path, text_200k, trained, capsys):
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 30})
    root = cfg.run_dir / "checkpoints"
    for step in ckpt.step_dirs(root):
        truncate(step / "trainer.pt")
    before = snapshot(cfg.run_dir)
    assert main(["train", *cli_args(cfg), "--resume"]) == 2
    one_line_error(capsys, f"no checkpoint in {root} can be loaded", "step_000020", "--resume")
    assert snapshot(cfg.run_dir) == before


def test_resume_of_a_run_that_never_saved_starts_at_step_0(tmp_path, text_200k):
    """`make demo` resumes a run folder that may not exist yet, or died before its first save."""
    cfg = tiny_config(tmp_path, text_200k)
    cfg.run_dir.mkdir(parents=True)
    claim_folder(cfg.run_dir)  # as train marks a run folder when it starts (a folder of yours is refused: test_faults)
    (cfg.run_dir / "metrics.jsonl").write_text("")
    trainer = Trainer(cfg, resume=True, log=quiet)
    trainer.close()
    assert trainer.state.step == 0


def _fake_checkpoint(root, step, *, meta=True):
    d = root / f"step_{step:06d}"
    d.mkdir(parents=True)
    for name in ckpt.TENSOR_FILES:
        (d / name).write_bytes(b"tensors")
    if meta:
        (d / "meta.json").write_text(json.dumps({"step": step, "config": {}}))
    return d


def test_prune_counts_only_complete_checkpoints_and_only_its_own_leftovers(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 15):
        _fake_checkpoint(root, step)
    _fake_checkpoint(root, 20, meta=False)  # damaged, newer than the next save
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, alive, gone = (root / f".tmp-step_000005-{pid}" for pid in (os.getpid(), 1, dead.pid))
    for p in (mine, alive, gone):
        p.mkdir()
    ckpt.save_checkpoint(root, 16, {part: {"w": torch.zeros(2)} for part in ckpt.PARTS}, {"config": {}}, keep_last=2)
    left = sorted(p.name for p in root.iterdir())
    # the damaged step 20 neither counts as one of the 2 kept nor is removed; step 10 is the one pruned
    assert left == [".tmp-step_000005-1", "last", "step_000015", "step_000016", "step_000020"]


def test_checkpoints_past_step_999999_are_ordered_by_step(tmp_path):
    """By name step_1000000 sorts before step_999999: listing, resuming and pruning go by the number (else the
    third save below would prune step 1,000,000 and keep 999,999)."""
    root = tmp_path / "checkpoints"
    parts = {part: {"w": torch.zeros(2)} for part in ckpt.PARTS}
    for step in (999_999, 1_000_000):
        ckpt.save_checkpoint(root, step, parts, {"config": {}}, keep_last=2)
    assert [p.name for p in ckpt.step_dirs(root)] == ["step_999999", "step_1000000"]
    assert ckpt.load_latest(root, log=quiet)[0].name == "step_1000000"
    ckpt.save_checkpoint(root, 1_000_001, parts, {"config": {}}, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["last", "step_1000000", "step_1000001"]


# --------------------------------------------------------------------------- item 3: a full disk

def _full_disk_save(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: some bytes written, then a RuntimeError over the OSError."""
    f.write(b"PK partial")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_failed_save_removes_its_temp_folder_and_keeps_the_last_checkpoint(tmp_path, text_200k, trained, capsys,
                                                                              monkeypatch):
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 25})
    root = cfg.run_dir / "checkpoints"
    before = snapshot(root)
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _full_disk_save)
        assert main(["train", *cli_args(cfg), "--resume"]) == 2
    one_line_error(capsys, "the disk is full", str(root / "step_000025"), "step_000020, is intact", "--resume")
    assert snapshot(root) == before  # no temporary folder left, nothing else touched
    assert main(["train", *cli_args(cfg), "--resume"]) == 0  # once there is space again
    assert ckpt.read_meta(ckpt.resolve_checkpoint(cfg.run_dir))["step"] == 25


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                      check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk, leave: int):
    """Write a ballast file until only ``leave`` bytes are free (0: until a write fails)."""
    with open(disk / "ballast", "wb", buffering=0) as f:
        try:
            while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave:
                f.write(b"\0" * min(free - leave, 1 << 16))
        except OSError:  # the disk is full
            pass


def test_full_tmpfs_save_fails_cleanly_and_resume_works_once_space_is_freed(tmp_path, text_200k, small_disk, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"run.dir": str(small_disk), "train.max_steps": 10,
                                              "train.eval_interval": 0})
    train(cfg, log=quiet)
    root = cfg.run_dir / "checkpoints"
    good = snapshot(root)
    _fill(small_disk, leave=64 * 1024)  # room for the logs, not for a checkpoint
    args = [*cli_args(cfg), "--train.max_steps", "20", "--resume"]
    assert main(["train", *args]) == 2
    one_line_error(capsys, "the disk is full", str(root / "step_000020"), "step_000010, is intact")
    assert snapshot(root) == good and not list(root.glob(".tmp-*"))

    (small_disk / "ballast").unlink()
    _fill(small_disk, leave=0)  # now not even config.toml fits
    assert main(["train", *args]) == 2
    one_line_error(capsys, "the disk is full", "config.toml")
    assert snapshot(root) == good

    (small_disk / "ballast").unlink()
    assert main(["train", *args]) == 0
    assert ckpt.read_meta(ckpt.resolve_checkpoint(cfg.run_dir))["step"] == 20


# --------------------------------------------------------------------------- item 4: one process per run folder

def test_a_second_train_on_a_running_run_folder_is_refused_naming_the_holder(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.eval_interval": 0,
                                              "train.save_interval": 5})
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "train", *cli_args(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not logged_losses(cfg.run_dir):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            assert main(["train", *cli_args(cfg), *extra]) == 2
            one_line_error(capsys, f"run folder {cfg.run_dir} is in use by tinylm pid {proc.pid}", "--run.name")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    RunLock(cfg.run_dir).release()  # the kernel dropped the lock of the killed process


def test_the_run_lock_is_released_when_training_ends(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 0})
    train(cfg, log=quiet)
    RunLock(cfg.run_dir).release()
    with pytest.raises(TinyLMError, match="already exists"):  # a failed start unlocks too
        Trainer(cfg, log=quiet)
    RunLock(cfg.run_dir).release()


def test_the_lock_file_exists_only_while_a_run_holds_it(tmp_path, text_200k, trained, capsys):
    """A finished run leaves no .lock, nor does a start refused after it took the lock: a resume with other
    settings, or a run folder that exists without --resume."""
    assert not (trained.run_dir / LOCK).exists()
    cfg = copy_run(trained, tmp_path, text_200k)
    before = sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*"))
    for extra, why in ((["--resume", "--model.n_layer", "3"], "--model.n_layer: checkpoint 2, this run 3"),
                       ([], "already exists")):
        assert main(["train", *cli_args(cfg), *extra]) == 2
        assert why in capsys.readouterr().err
        assert sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*")) == before


def test_a_lock_file_its_holder_removed_is_not_taken(tmp_path, monkeypatch):
    """The holder removes the file as it lets go: a process that opened it just before then holds a lock on a
    file no longer in the folder, and must lock the one at the path instead (else two processes could train)."""
    real_flock, locked = fcntl.flock, []

    def flock_as_the_holder_leaves(fd, operation):
        real_flock(fd, operation)
        if not locked:  # the first file this process locks was removed by its holder a moment before
            (tmp_path / LOCK).unlink()
        locked.append(fd)

    monkeypatch.setattr(fcntl, "flock", flock_as_the_holder_leaves)
    lock = RunLock(tmp_path)
    assert len(locked) == 2 and (tmp_path / LOCK).is_file()
    with pytest.raises(TinyLMError, match="is in use by tinylm pid"):
        RunLock(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK).exists()


# --------------------------------------------------------------------------- item 5: run.name is one folder name

@pytest.mark.parametrize("name", ["..", ".", " ", "a/b", "../x", "/tmp/x", "a\\b"])
def test_run_name_must_be_one_plain_folder_name(tmp_path, text_200k, capsys, name):
    cfg = tiny_config(tmp_path, text_200k)
    (tmp_path / "runs").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["train", *cli_args(cfg), "--run.name", name]) == 2
    one_line_error(capsys, "--run.name", "one plain folder name")
    assert sorted(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- item 6: a checkpoint's own tokenizer

def test_sample_decodes_with_the_checkpoints_tokenizer_after_the_data_is_prepared_again(tmp_path, text_200k,
                                                                                           capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 30, "train.eval_interval": 0})
    train(cfg, log=quiet)
    capsys.readouterr()
    step = ckpt.resolve_checkpoint(cfg.run_dir)
    assert (step / ckpt.TOKENIZER).read_bytes() == (tmp_path / "data" / "tokenizer.txt").read_bytes()
    sample = ["sample", str(cfg.run_dir), "--strategy", "greedy", "--max-new-tokens", "40", "--prompt", "the "]
    assert main(sample) == 0
    expected = capsys.readouterr().out

    other = tmp_path / "other.txt"  # a dozen other characters: every id means something else now
    other.write_text("xyz0123456789\n" * 5000)
    assert main(["prepare", "--force", "--data.corpus", str(other), "--data.dir", str(tmp_path / "data"),
                 "--data.tokenizer", "char", "--run.progress", "false"]) == 0
    assert (tmp_path / "data" / "tokenizer.txt").read_bytes() != (step / ckpt.TOKENIZER).read_bytes()
    capsys.readouterr()
    assert main(sample) == 0
    assert capsys.readouterr().out == expected

    out = tmp_path / "model.safetensors"  # export carries the same tokenizer file
    assert main(["export", str(cfg.run_dir), "--out", str(out)]) == 0
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["tinylm_tokenizer"] == (step / ckpt.TOKENIZER).read_text()


def test_a_checkpoint_without_its_own_tokenizer_uses_the_data_folders(tmp_path, text_200k, trained, capsys):
    cfg = copy_run(trained, tmp_path, text_200k)
    sample = ["sample", str(cfg.run_dir), "--strategy", "greedy", "--max-new-tokens", "20"]
    assert main(sample) == 0
    expected = capsys.readouterr().out
    (ckpt.resolve_checkpoint(cfg.run_dir) / ckpt.TOKENIZER).unlink()  # as saved by an older tinylm
    assert main(sample) == 0
    assert capsys.readouterr().out == expected


# --------------------------------------------------------------------------- item 10: one line, nothing touched

def _other_shape_model(step):
    cfg = ckpt.checkpoint_config(step)
    cfg.model.n_embd = 48
    torch.save(GPT(cfg.model).state_dict(), step / "model.pt")


SAMPLE_DAMAGE = {
    "model_empty": (lambda step: truncate(step / "model.pt", 0), "model.pt: the file is empty (0 bytes)"),
    "model_truncated": (lambda step: truncate(step / "model.pt"), "model.pt: the file is truncated or corrupt"),
    "model_other_shape": (_other_shape_model, "model.pt does not fit the model its meta.json describes"),
    "meta_corrupt": (lambda step: truncate(step / "meta.json", 40), "meta.json is corrupt"),
    "tokenizer_corrupt": (lambda step: truncate(step / ckpt.TOKENIZER, 30), "tokenizer file is corrupted"),
    "meta_missing": (lambda step: (step / "meta.json").unlink(), "has no meta.json: it is incomplete"),
    "last_dangling": (shutil.rmtree, "points to step_000020, which is missing"),
}


@pytest.mark.parametrize("damage", SAMPLE_DAMAGE)
def test_sample_on_a_damaged_checkpoint_is_one_line(tmp_path, text_200k, trained, capsys, damage):
    cfg = copy_run(trained, tmp_path, text_200k)
    make, message = SAMPLE_DAMAGE[damage]
    make(cfg.run_dir / "checkpoints" / "step_000020")
    before = snapshot(cfg.run_dir)
    assert main(["sample", str(cfg.run_dir), "--max-new-tokens", "5"]) == 2
    one_line_error(capsys, message)
    assert snapshot(cfg.run_dir) == before


def test_run_dir_that_is_a_file_is_refused(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k)
    (tmp_path / "runs").write_text("my notes\n")
    assert main(["train", *cli_args(cfg)]) == 2
    one_line_error(capsys, f"{tmp_path / 'runs'} is a file, not a folder", "--run.dir")
    assert (tmp_path / "runs").read_text() == "my notes\n"


def test_export_to_an_existing_folder_is_refused_and_leaves_no_temp_file(tmp_path, text_200k, trained, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(trained.run_dir), "--out", str(out)]) == 2
    one_line_error(capsys, f"--out {out} is a folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exported", "mine.txt"]
    assert (out / "mine.txt").read_text() == "keep"


def test_export_replaces_only_its_own_export(tmp_path, trained, capsys):
    """An existing file at --out is replaced only when tinylm exported it (a re-export)."""
    from safetensors.torch import load_file
    mine = tmp_path / "model.safetensors"
    mine.write_bytes(b"my own weights, not tinylm's")
    assert main(["export", str(trained.run_dir), "--out", str(mine)]) == 2
    one_line_error(capsys, f"{mine} exists and was not written by tinylm", "choose another --out")
    assert mine.read_bytes() == b"my own weights, not tinylm's" and sorted(tmp_path.iterdir()) == [mine]
    ours = tmp_path / "ours.safetensors"
    assert main(["export", str(trained.run_dir), "--out", str(ours)]) == 0
    first = load_file(ours)
    inode = ours.stat().st_ino  # the export writes a new file and renames it over the old one
    assert main(["export", str(trained.run_dir), "--out", str(ours)]) == 0  # a re-export replaces it
    assert ours.stat().st_ino != inode and len(list(tmp_path.iterdir())) == 2
    again = load_file(ours)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_export_on_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, trained, capsys, monkeypatch):
    def full_disk(fd):  # the data is written, then the disk has no room for it (delayed allocation)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "model.safetensors"
    assert main(["export", str(trained.run_dir), "--out", str(out)]) == 2
    one_line_error(capsys, f"the disk is full: no space left to write {out}")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- item 11: a finished run

def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path, text_200k, trained, capsys):
    cfg = copy_run(trained, tmp_path, text_200k)
    before = snapshot(cfg.run_dir)
    assert main(["train", *cli_args(cfg), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already at step 20 (--train.max_steps 20)" in out and "--train.max_steps 40" in out
    assert "nan" not in out and "tok/s" not in out
    assert snapshot(cfg.run_dir) == before


# --------------------------------------------------------------------------- lost, unreadable, diverged checkpoints

def test_resume_after_the_checkpoints_were_deleted_is_refused(tmp_path, text_200k, trained, capsys):
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 30})
    shutil.rmtree(cfg.run_dir / "checkpoints")
    before = snapshot(cfg.run_dir)
    assert main(["train", *cli_args(cfg), "--resume"]) == 2
    one_line_error(capsys, f"{cfg.run_dir} trained to step 20 (its metrics.jsonl), past its save at step 5",
                   "were they deleted?", "train without --resume")
    assert snapshot(cfg.run_dir) == before  # no second history appended to its metrics


def test_resume_of_a_run_killed_before_its_first_save_says_it_starts_again(tmp_path, text_200k, trained):
    cfg = copy_run(trained, tmp_path, text_200k)
    shutil.rmtree(cfg.run_dir / "checkpoints")
    metrics = cfg.run_dir / "metrics.jsonl"  # as if killed while saving step 5, its first save
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= 5]
    metrics.write_text("".join(line + "\n" for line in kept))
    lines = []
    trainer = Trainer(cfg, resume=True, log=lines.append)
    trainer.close()
    assert trainer.state.step == 0
    assert f"resume: {cfg.run_dir} has no checkpoint (it stopped at step 5, before its first save): starting again " \
           "at step 0" in lines


@pytest.mark.parametrize("how", ["chmod", "patch"])
def test_an_unreadable_checkpoint_is_one_line_not_skipped_as_damaged(tmp_path, text_200k, trained, capsys,
                                                                     monkeypatch, how):
    from conftest import make_unreadable
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 30})
    newest = cfg.run_dir / "checkpoints" / "step_000020"
    make_unreadable(how, monkeypatch, newest / "model.pt", newest / "trainer.pt")
    assert main(["sample", str(cfg.run_dir), "--max-new-tokens", "5"]) == 2
    one_line_error(capsys, f"cannot read {newest / 'model.pt'}: Permission denied; give your user read access")
    # not skipped as damaged: a resume from step 15 would replace the intact step 20 when it saves that step again
    assert main(["train", *cli_args(cfg), "--resume"]) == 2
    one_line_error(capsys, f"cannot read {newest}", "Permission denied")


def test_a_checkpoints_folder_it_cannot_list_is_a_read_error_and_the_run_stays(tmp_path, text_200k, trained, capsys,
                                                                                monkeypatch):
    """Resuming a run whose checkpoints folder cannot be listed (mode 000 for an ordinary user) says it cannot
    *read* it (not "cannot write"), names it, unlocks the run, and changes nothing."""
    cfg = copy_run(trained, tmp_path, text_200k, **{"train.max_steps": 30})
    folder = cfg.run_dir / "checkpoints"
    before = snapshot(cfg.run_dir)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert main(["train", *cli_args(cfg), "--resume"]) == 2
    one_line_error(capsys, f"cannot read {folder}: Permission denied; give your user read access to it")
    monkeypatch.undo()
    assert snapshot(cfg.run_dir) == before and not (cfg.run_dir / LOCK).exists()


def test_sample_of_non_finite_weights_is_one_line(tmp_path, text_200k, trained, capsys):
    cfg = copy_run(trained, tmp_path, text_200k)
    path = cfg.run_dir / "checkpoints" / "step_000020" / "model.pt"
    state = torch.load(path, weights_only=True)
    state["blocks.1.mlp.up.weight"][0, 0] = float("nan")
    torch.save(state, path)
    assert main(["sample", str(cfg.run_dir), "--max-new-tokens", "5"]) == 2
    one_line_error(capsys, "step_000020 holds non-finite weights (1 tensor(s), e.g. blocks.1.mlp.up.weight): the run "
                           "diverged before this save; use an earlier checkpoint")
