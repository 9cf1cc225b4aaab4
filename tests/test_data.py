import json

import numpy as np
import pytest
import torch

from tinylm.config import DataConfig
from tinylm.data import (BatchLoader, TokenWindows, ensure_prepared, eval_batches, load_data_tokenizer,
                         load_meta, prepare, read_shard, write_shard)
from tinylm.errors import TinyLMError


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
    cfg = DataConfig(corpus=str(corpus), tokenizer="char", dir=str(tmp_path / "prep"), **kw)
    prepare(cfg, progress=False, log=lambda *a: None)
    return cfg


def test_prepare_char_split_is_the_tail_fraction(tmp_path, text_200k):
    text = text_200k.read_text(encoding="utf-8")
    cfg = _prepared(tmp_path, text)
    meta = load_meta(cfg.dir)
    tok = load_data_tokenizer(cfg.dir)
    n = len(text)
    assert meta["total_tokens"] == n and meta["vocab_size"] == len(set(text))
    assert meta["train"]["tokens"] == int(n * 0.9)  # nanoGPT's split for char-level
    train = read_shard(tmp_path / "prep" / meta["train"]["shards"][0])
    val = read_shard(tmp_path / "prep" / meta["val"]["shards"][0])
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text
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
    with pytest.raises(TinyLMError, match="too few for one window of --model.block_size 64"):
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
    with pytest.raises(TinyLMError, match="--data.sampling"):
        BatchLoader(windows, 8, mode="random", seed=5).load_state_dict(BatchLoader(windows, 8).state_dict())


def test_ranks_split_the_global_batch(windows):
    single = BatchLoader(windows, 8, seed=9)
    ranks = [BatchLoader(windows, 4, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = single.next_batch()[0]
        parts = [r.next_batch()[0] for r in ranks]
        assert torch.equal(torch.cat(parts), whole)


def test_eval_batches_are_fixed(windows):
    a = [x for x, _ in eval_batches(windows, 4, 3)]
    b = [x for x, _ in eval_batches(windows, 4, 3)]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b))
