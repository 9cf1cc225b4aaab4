"""Crash-safe writing helpers: atomic files and swapping a finished folder into place."""
import os
from pathlib import Path

import pytest

from tinylm.errors import TinyLMError
from tinylm.fileio import (
    check_replaceable,
    check_replaceable_folder,
    claim_folder,
    made_folder,
    replace_dir,
    scratch_sibling,
    write_text_atomic,
)


def test_replace_dir_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = scratch_sibling(final, "tmp")
    assert tmp == tmp_path / f".data.tmp-{os.getpid()}"
    tmp.mkdir()
    write_text_atomic(tmp / "new.txt", "new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no scratch or .old- folder left
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_replace_dir_makes_the_parent_and_takes_a_named_old_sibling(tmp_path):
    tmp = tmp_path / ".tmp-step"
    tmp.mkdir()
    replace_dir(tmp, tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not tmp.exists()
    again = tmp_path / ".tmp-step"
    again.mkdir()
    (again / "x").write_text("x")
    replace_dir(again, tmp_path / "a" / "b", old=tmp_path / "a" / ".old-b")
    assert os.listdir(tmp_path / "a") == ["b"] and os.listdir(tmp_path / "a" / "b") == ["x"]


def test_a_full_disk_while_logging_is_one_line():
    """metrics.jsonl and samples.md are appended to during training: a full disk there (Linux's
    /dev/full answers every write with ENOSPC) says so in one line, like a failed checkpoint."""
    from tinylm.errors import TinyLMError
    from tinylm.fileio import append_text
    from tinylm.training.tracking import JSONLSink
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(TinyLMError, match=r"the disk is full: no space left to write /dev/full; .* --resume"):
        append_text("/dev/full", "## step 10\n")
    sink = JSONLSink(Path("/dev/full"))
    with pytest.raises(TinyLMError, match="the disk is full: no space left to write /dev/full"):
        sink.log({"step": 1, "loss": 2.0})


def test_a_format_that_names_its_writer_is_its_own_proof(tmp_path):
    """check_replaceable with a content proof (an export's magic bytes): a file that passes it may be replaced, one
    that does not, a symbolic link to one that does, or a folder may not; an absent path may always be written."""
    def proof(p):
        return p.read_bytes().startswith(b"OURS")
    ours, theirs, link = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    ours.write_bytes(b"OURS 1")
    theirs.write_bytes(b"theirs")
    link.symlink_to(ours)
    check_replaceable(ours, proof=proof)
    check_replaceable(tmp_path / "new.bin", proof=proof)
    for path, needle in ((theirs, "exists and was not written by tinylm"), (link, "exists and was not written"),
                         (tmp_path, "is a folder")):
        with pytest.raises(TinyLMError, match=needle):
            check_replaceable(path, proof=proof)
    with pytest.raises(TinyLMError, match="exists and was not written"):  # the default proof: tinylm's record
        check_replaceable(ours)


def test_a_folder_is_replaced_only_when_absent_empty_or_proven(tmp_path):
    empty, mine, made, file = tmp_path / "empty", tmp_path / "mine", tmp_path / "made", tmp_path / "f"
    for d in (empty, mine, made):
        d.mkdir()
    (mine / "notes.txt").write_text("mine")
    (made / "x").write_text("x")
    claim_folder(made)
    file.write_text("a file")
    (tmp_path / "link").symlink_to(made)
    for ok in (tmp_path / "absent", empty, made):
        check_replaceable_folder(ok, made_folder)
    for path, needle in ((mine, f"{mine} exists and was not written by tinylm"), (file, "is a file"),
                         (tmp_path / "link", "is a symbolic link")):
        with pytest.raises(TinyLMError, match=needle):
            check_replaceable_folder(path, made_folder, fix="pick another")
