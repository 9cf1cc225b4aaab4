import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.cli import main
from tinylm.config import DataConfig
from tinylm.data.loader import BatchLoader, TokenWindows
from tinylm.data.prepare import ensure_prepared, prepare
from tinylm.data.shards import load_data_tokenizer, load_meta, read_shard, write_shard
from tinylm.errors import TinyLMError
from tinylm.fileio import claim_folder

from conftest import cli_args, tiny_config


def test_shard_round_trip_and_header(tmp_path):
    for dtype in (np.uint16, np.uint32):
        tokens = np.arange(1000, dtype=dtype) * 7
        write_shard(tmp_path / "s.bin", tokens)
        back = read_shard(tmp_path / "s.bin")
        assert back.dtype == dtype and np.array_equal(back, tokens)
        assert (tmp_path / "s.bin").stat().st_size == 64 + tokens.nbytes
    assert not list(tmp_path.glob(".*tmp"))


def test_corrupt_and_truncated_shards_are_named(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(100, dtype=np.uint16))
    data = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-10])
    with pytest.raises(TinyLMError, match="truncated or corrupt"):
        read_shard(tmp_path / "t.bin")
    (tmp_path / "b.bin").write_bytes(b"NOTASHARD" + data[9:])
    with pytest.raises(TinyLMError, match="not a tinylm token shard"):
        read_shard(tmp_path / "b.bin")


def _prepared(tmp_path, text: str, **kw) -> DataConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), dir=str(tmp_path / "prep"), **{"tokenizer": "char", **kw})
    prepare(cfg, progress=False, log=lambda *a: None)
    return cfg


def test_prepare_char_split_is_the_tail_fraction(tmp_path, text_200k):
    text = text_200k.read_text(encoding="utf-8")
    cfg = _prepared(tmp_path, text)
    meta = load_meta(cfg.dir)
    tok = load_data_tokenizer(cfg.dir)
    n = len(text.strip()) + 1  # one document (a file; no markers), then its end-of-text id
    assert meta["total_tokens"] == n and meta["vocab_size"] == len(set(text)) + 1  # + <|endoftext|>
    assert meta["train"]["tokens"] == int(n * 0.9)  # nanoGPT's split for char-level: not moved to a document start
    train = read_shard(tmp_path / "prep" / meta["train"]["shards"][0])
    val = read_shard(tmp_path / "prep" / meta["val"]["shards"][0])
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text.strip() + "<|endoftext|>"
    assert train.dtype == np.uint16


def test_prepare_is_deterministic(tmp_path, text_200k):
    text = text_200k.read_text(encoding="utf-8")[:20_000]
    a = _prepared(tmp_path / "a", text)
    b = _prepared(tmp_path / "b", text)
    for name in ("train_000000.bin", "val_000000.bin", "tokenizer.txt"):
        assert (tmp_path / "a" / "prep" / name).read_bytes() == (tmp_path / "b" / "prep" / name).read_bytes()
    assert a != b  # different folders, same content


def test_prepare_parallel_workers_give_identical_tokens(tmp_path, text_200k):
    text = text_200k.read_text(encoding="utf-8")
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):  # several files: documents separated by a blank line
        (corpus / f"{i}.txt").write_text(text[i * 30_000:(i + 1) * 30_000], encoding="utf-8")
    outs = []
    for workers in (1, 2):
        cfg = DataConfig(corpus=str(corpus), tokenizer="char", dir=str(tmp_path / f"w{workers}"),
                         num_workers=workers)
        prepare(cfg, progress=False, log=lambda *a: None)
        outs.append((tmp_path / f"w{workers}" / "train_000000.bin").read_bytes())
    assert outs[0] == outs[1]


def test_ensure_prepared_refuses_stale_folder(tmp_path, text_200k):
    cfg = _prepared(tmp_path, text_200k.read_text(encoding="utf-8")[:5000])
    assert ensure_prepared(cfg, progress=False)["vocab_size"] > 0
    cfg.val_fraction = 0.2
    with pytest.raises(TinyLMError, match=r"--data.val_fraction was 0.1, now 0.2"):
        ensure_prepared(cfg, progress=False)


def test_empty_corpus_and_missing_data(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TinyLMError, match="empty"):
        prepare(DataConfig(corpus=str(tmp_path / "empty.txt"), dir=str(tmp_path / "p")), progress=False)
    with pytest.raises(TinyLMError, match="run `tinylm prepare"):
        load_meta(tmp_path / "nothing")
    assert not (tmp_path / "p").exists()


def test_non_utf8_corpus_strict_then_replace(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"hello \xff world\n" * 50)
    cfg = DataConfig(corpus=str(tmp_path / "bad.txt"), dir=str(tmp_path / "p"))
    with pytest.raises(TinyLMError, match="encoding_errors replace"):
        prepare(cfg, progress=False, log=lambda *a: None)
    cfg.encoding_errors = "replace"
    prepare(cfg, progress=False, log=lambda *a: None)
    assert "\ufffd" in load_data_tokenizer(cfg.dir).chars


def test_corpus_shorter_than_a_window(tmp_path):
    cfg = _prepared(tmp_path, "to be or not to be, that is the question\n" * 3)
    with pytest.raises(TinyLMError, match=r"too few for one window of --model\.block_size 64"):
        TokenWindows(cfg.dir, "val", 64)


@pytest.fixture
def windows(tmp_path, text_200k):
    cfg = _prepared(tmp_path, text_200k.read_text(encoding="utf-8")[:50_000])
    return TokenWindows(cfg.dir, "train", 16)


def test_batches_are_shifted_by_one(windows):
    x, y = BatchLoader(windows, 4, seed=1).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_epoch_mode_visits_each_window_once(windows):
    loader = BatchLoader(windows, 8, mode="epoch", seed=3)
    n_windows = len(loader._epoch_starts())
    seen = []
    while loader.epoch == 0:
        seen += loader._next_global_starts().tolist()
    first_epoch = seen[:n_windows]
    assert len(set(first_epoch)) == n_windows  # without replacement
    assert np.all(np.diff(sorted(first_epoch)) == 16)  # non-overlapping, stride T


def test_loader_state_restores_the_exact_stream(windows):
    for mode in ("epoch", "random"):
        a = BatchLoader(windows, 8, mode=mode, seed=5)
        for _ in range(400):  # crosses an epoch boundary
            a.next_batch()
        state = json.loads(json.dumps({k: v for k, v in a.state_dict().items() if k != "gen"}))
        state["gen"] = a.state_dict()["gen"]
        expected = [a.next_batch()[0] for _ in range(5)]
        b = BatchLoader(windows, 8, mode=mode, seed=5)
        b.load_state_dict(state)
        for e in expected:
            assert torch.equal(b.next_batch()[0], e)
    with pytest.raises(TinyLMError, match=r"--data\.sampling"):
        BatchLoader(windows, 8, mode="random", seed=5).load_state_dict(BatchLoader(windows, 8).state_dict())


def test_ranks_split_the_global_batch(windows):
    single = BatchLoader(windows, 8, seed=9)
    ranks = [BatchLoader(windows, 4, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = single.next_batch()[0]
        parts = [r.next_batch()[0] for r in ranks]
        assert torch.equal(torch.cat(parts), whole)


# --------------------------------------------------------------------------- documents and end-of-text

def test_char_corpus_without_a_newline_is_separated_by_end_of_text(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("abcabcabc" * 20, encoding="utf-8")  # no "\n" anywhere
    (corpus / "b.txt").write_text("cbacba" * 20, encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), tokenizer="char", dir=str(tmp_path / "prep"), val_fraction=0.0)
    meta = prepare(cfg, progress=False, log=lambda *a: None)
    tok = load_data_tokenizer(cfg.dir)
    assert tok.chars == ["a", "b", "c"] and tok.eot_token == 3 and meta["vocab_size"] == 4
    ids = read_shard(tmp_path / "prep" / meta["train"]["shards"][0]).tolist()
    assert ids.count(tok.eot_token) == 2  # one after each document, none inside
    assert tok.decode(ids) == "abcabcabc" * 20 + "<|endoftext|>" + "cbacba" * 20 + "<|endoftext|>"


# --------------------------------------------------------------------------- what prepare may replace

def _tree(root: Path) -> dict[str, object]:
    """Every path under root, hidden ones too: file bytes, link targets, "dir" for folders."""
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else
            p.read_bytes() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--run.progress", "false"])
    return code, capsys.readouterr().err


def _setup_case(case: str, tmp: Path) -> tuple[str, str, str]:
    """(corpus spec, --data.dir, expected words of the refusal) for a --data.dir prepare must not replace."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    (tmp / "corpus.txt").write_text(text, encoding="utf-8")
    corpus = str(tmp / "corpus.txt")
    if case == "user folder":
        (tmp / "mine").mkdir()
        (tmp / "mine" / "notes.md").write_text("my notes")
        (tmp / "mine" / "thesis").mkdir()
        return corpus, str(tmp / "mine"), "holds files tinylm did not write (notes.md, thesis)"
    if case == "regular file":
        (tmp / "mine.txt").write_text("not a folder")
        return corpus, str(tmp / "mine.txt"), "is a file"
    if case == "symlink":
        (tmp / "target").mkdir()
        (tmp / "target" / "keep.txt").write_text("keep")
        (tmp / "link").symlink_to(tmp / "target")
        return corpus, str(tmp / "link"), "is a symbolic link"
    if case == "the corpus folder":
        (tmp / "books").mkdir()
        (tmp / "books" / "a.txt").write_text(text)
        return str(tmp / "books"), str(tmp / "books"), "is the corpus"
    if case == "inside the corpus folder":
        (tmp / "books").mkdir()
        (tmp / "books" / "a.txt").write_text(text)
        return str(tmp / "books"), str(tmp / "books" / "prep"), "sits inside the corpus"
    if case == "folder holding the corpus":
        return corpus, str(tmp), "contains the corpus"
    if case == "the runs folder":
        (tmp / "runs" / "earlier" / "checkpoints").mkdir(parents=True)
        (tmp / "runs" / "earlier" / "metrics.jsonl").write_text("{}\n")
        return corpus, str(tmp / "runs"), "contains the run folder"
    if case == "inside the run folder":
        (tmp / "runs" / "tiny").mkdir(parents=True)
        (tmp / "runs" / "tiny" / "metrics.jsonl").write_text("{}\n")
        return corpus, str(tmp / "runs" / "tiny" / "data"), "sits inside the run folder"
    if case == "tinylm folder with a user file":
        prepare(DataConfig(corpus=corpus, dir=str(tmp / "prep")), progress=False, log=lambda *a: None)
        (tmp / "prep" / "README.md").write_text("what these shards are")
        return corpus, str(tmp / "prep"), "holds files tinylm did not write (README.md)"
    if case == "foreign meta.json":
        (tmp / "other").mkdir()
        (tmp / "other" / "meta.json").write_text('{"format": "something-else"}')
        return corpus, str(tmp / "other"), 'was not written by `tinylm prepare`'
    raise AssertionError(case)


CASES = ["user folder", "regular file", "symlink", "the corpus folder", "inside the corpus folder",
         "folder holding the corpus", "the runs folder", "inside the run folder", "foreign meta.json"]


# without --force a prepared folder with these settings is used as it is: only --force would replace it
@pytest.mark.parametrize("case, force", [(c, f) for c in CASES for f in (False, True)]
                         + [("tinylm folder with a user file", True)])
def test_prepare_refuses_what_it_did_not_make(case, force, tmp_path, capsys):
    corpus, data_dir, words = _setup_case(case, tmp_path)
    before = _tree(tmp_path)
    argv = ["prepare", "--data.corpus", corpus, "--data.dir", data_dir, "--run.dir", str(tmp_path / "runs"),
            "--run.name", "tiny"]
    code, err = _cli(capsys, *argv, *(["--force"] if force else []))
    assert code == 2 and words in err and data_dir in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--data.dir" in err
    assert _tree(tmp_path) == before  # nothing deleted, renamed, written or overwritten


def test_train_refuses_a_user_folder_as_data_dir(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    before = _tree(tmp_path)
    code, err = _cli(capsys, "train", *cli_args(cfg))
    assert code == 2 and "holds files tinylm did not write (photo.jpg)" in err and "Traceback" not in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("spec", [".", "X/..", "/"])
def test_dot_dotdot_and_root_are_refused(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X").mkdir()
    (tmp_path / "corpus.txt").write_text("hello world\n" * 50)
    before = _tree(tmp_path)
    code, err = _cli(capsys, "prepare", "--data.corpus", "corpus.txt", "--data.dir", spec, "--force")
    assert code == 2 and f"--data.dir {spec!r} does not name a folder of its own" in err
    assert "Traceback" not in err and _tree(tmp_path) == before


def test_an_empty_existing_folder_is_used(tmp_path):
    (tmp_path / "prep").mkdir()
    cfg = _prepared(tmp_path, "to be or not to be\n" * 50)
    assert load_meta(cfg.dir)["total_tokens"] == 19 * 50


def test_a_prepared_folder_is_replaced_with_force_or_same_settings(tmp_path):
    cfg = _prepared(tmp_path, "to be or not to be\n" * 50)
    quiet = {"progress": False, "log": lambda *a: None}
    prepare(cfg, **quiet)  # same settings: rebuilt in place
    cfg.val_fraction = 0.5
    with pytest.raises(TinyLMError, match="pass --force to `tinylm prepare`"):
        prepare(cfg, **quiet)
    prepare(cfg, force=True, **quiet)
    assert load_meta(cfg.dir)["data"]["val_fraction"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "prep"]  # no scratch folders left


def test_a_bpe_folder_with_its_vocab_listing_is_replaced_with_force(tmp_path):
    cfg = _prepared(tmp_path, "to be or not to be, that is the question\n" * 50, tokenizer="bpe", vocab_size=270)
    assert (Path(cfg.dir) / "tokenizer.vocab.txt").is_file()
    cfg.vocab_size = 275
    meta = prepare(cfg, force=True, progress=False, log=lambda *a: None)
    assert meta["vocab_size"] == 275 and load_meta(cfg.dir)["data"]["vocab_size"] == 275


def test_corrupt_meta_json_is_one_line_and_force_rebuilds(tmp_path, capsys):
    cfg = _prepared(tmp_path, "to be or not to be\n" * 50)
    meta = Path(cfg.dir) / "meta.json"
    meta.write_text(meta.read_text()[:40])  # cut short, as by a full disk in an editor
    argv = ["prepare", "--data.corpus", cfg.corpus, "--data.dir", cfg.dir, "--data.tokenizer", "char"]
    before = _tree(tmp_path)
    code, err = _cli(capsys, *argv)
    assert code == 2 and f"{meta} is corrupt" in err and "re-run `tinylm prepare --force`" in err
    assert "Traceback" not in err and _tree(tmp_path) == before
    code, _ = _cli(capsys, *argv, "--force")
    assert code == 0 and load_meta(cfg.dir)["total_tokens"] == 19 * 50


def test_scratch_folders_of_killed_prepares_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for name in (f".prep.tmp-{dead.pid}", f".prep.old-{dead.pid}", f".prep.tmp-{alive.pid}"):
            (tmp_path / name).mkdir()
            claim_folder(tmp_path / name)  # as prepare marks the folders it makes (one of yours stays: test_faults)
            (tmp_path / name / "all.tokens").write_bytes(b"\0" * 100)
        (tmp_path / f".prep.tmp-{dead.pid}.txt").write_text("not ours: another name")
        (tmp_path / f".other.tmp-{dead.pid}").mkdir()  # another data folder's, and not ours to judge
        logs = []
        _prepared(tmp_path, "to be or not to be\n" * 50)
        prepare(DataConfig(corpus=str(tmp_path / "corpus.txt"), dir=str(tmp_path / "prep"), tokenizer="char"),
                progress=False, log=logs.append)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["corpus.txt", "prep", f".prep.tmp-{alive.pid}", f".prep.tmp-{dead.pid}.txt",
                               f".other.tmp-{dead.pid}"])
        assert (tmp_path / f".prep.tmp-{alive.pid}" / "all.tokens").read_bytes() == b"\0" * 100
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------- unreadable and textless corpora

@pytest.mark.parametrize("how", ["chmod", "patch"])
@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_unreadable_corpus_is_one_line_naming_it(tmp_path, text_200k, capsys, monkeypatch, how, what):
    from conftest import make_unreadable
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(text_200k.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    corpus = folder / "a.txt" if what == "file" else folder
    make_unreadable(how, monkeypatch, corpus)
    assert main(["prepare", "--data.corpus", str(corpus), "--data.dir", str(tmp_path / "data"),
                 "--data.tokenizer", "char"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(corpus) in err[0] and "Permission denied" in err[0], err
    assert "holds no text files" not in err[0]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("text", ["\n\n   \n\t\n", "<|endoftext|>\n<|endoftext|>\n"])
def test_a_corpus_of_only_whitespace_or_separators_names_its_files(tmp_path, text):
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(text, encoding="utf-8")
    for corpus, files in ((folder / "a.txt", "a.txt"), (folder, "a.txt, " + str(folder / "b.txt"))):
        cfg = DataConfig(corpus=str(corpus), dir=str(tmp_path / "data"), tokenizer="char")
        with pytest.raises(TinyLMError, match=r"holds no text, only whitespace and document separators") as e:
            prepare(cfg, progress=False, log=lambda *a: None)
        assert files in str(e.value)
