"""Documents: separators become end-of-text ids (never text), the max_bytes cap, the split at a
document start, meta.json's counts, and training windows aligned to documents."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.config import DataConfig
from tinylm.config_check import parse_bytes
from tinylm.data import documents
from tinylm.data.corpora import Corpus
from tinylm.data.documents import iter_documents
from tinylm.data.loader import BatchLoader, TokenWindows
from tinylm.data.prepare import prepare
from tinylm.data.shards import load_data_tokenizer, load_meta, read_shard
from tinylm.errors import TinyLMError
from tinylm.tokenizer import ENDOFTEXT
from tinylm.tokenizer.bpe import BPETokenizer

STORY_WORDS = ["once", "upon", "a", "time", "there", "was", "a", "little", "dog", "named", "max", "who", "liked",
               "to", "run", "in", "the", "park", "with", "his", "red", "ball"]


def stories(n: int, seed: int = 0) -> list[str]:
    """n short distinct stories of two paragraphs, like TinyStories'."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(STORY_WORDS, size=int(rng.integers(8, 30)))
        out.append(f"Story {i}: {' '.join(words)}.\n\nThe end, said {words[0]}.")
    return out


def tinystories_text(docs: list[str]) -> str:
    """TinyStories' layout: each story, then its marker on a line of its own."""
    return "".join(f"{d}\n{ENDOFTEXT}\n" for d in docs)


def write(tmp_path, text: str, name: str = "corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def docs_of(path, **kw) -> list[str]:
    return ["".join(d) for d in iter_documents(Corpus("t", (path,)), **kw)]


def prepared(tmp_path, text: str, **kw) -> DataConfig:
    cfg = DataConfig(corpus=str(write(tmp_path, text)), dir=str(tmp_path / "prep"), **{"tokenizer": "char", **kw})
    prepare(cfg, progress=False, log=lambda *a: None)
    return cfg


def split_ids(cfg: DataConfig, split: str) -> list[int]:
    meta = load_meta(cfg.dir)
    return [t for name in meta[split]["shards"] for t in read_shard(Path(cfg.dir) / name).tolist()]


# --------------------------------------------------------------------------- where documents end


@pytest.mark.parametrize("chunk_chars", [1, 2, 5, 13, 64, 1 << 20])
def test_markers_end_documents_even_across_chunk_boundaries(tmp_path, chunk_chars):
    docs = stories(6)
    text = f"{ENDOFTEXT}\n" + tinystories_text(docs[:3]) + f"\n{ENDOFTEXT}{ENDOFTEXT}\n" + tinystories_text(docs[3:])
    assert docs_of(write(tmp_path, text), chunk_chars=chunk_chars) == docs  # empty documents skipped


def test_document_pieces_encode_like_the_whole_document(tmp_path, text_200k):
    """Pieces are cut only where iter_chunks cuts: encoding them one by one gives the whole document's ids."""
    text = text_200k.read_text(encoding="utf-8")[:30_000]
    tok = BPETokenizer.train([text], 400)
    path = write(tmp_path, text.replace("\n\n", f"\n{ENDOFTEXT}\n", 40))
    whole = [tok.encode_ordinary(d) for d in docs_of(path)]
    for chunk_chars in (50, 997):
        pieces = [[t for p in d for t in tok.encode_ordinary(p)] for d in iter_documents(Corpus("t", (path,)),
                                                                               chunk_chars=chunk_chars)]
        assert pieces == whole


def test_blank_line_and_file_separators(tmp_path):
    text = "\n\nfirst para\nstill first\n \n\nsecond\r\n\r\nthird  \n"
    path = write(tmp_path, text)
    assert docs_of(path, doc_separator="blank", chunk_chars=3) == ["first para\nstill first", "second", "third"]
    assert docs_of(path, doc_separator="file") == [text.strip()]
    assert docs_of(path, doc_separator="eot") == [text.strip()]  # no markers: the file is one document
    lines = write(tmp_path, "story one.\n\nits second paragraph.\nstory two.\nstory three.\n", "lines.txt")
    assert docs_of(lines, doc_separator="line", chunk_chars=4) == [
        "story one.\n\nits second paragraph.", "story two.", "story three."]
    with pytest.raises(TinyLMError, match="doc_separator 'page' is not one of"):
        docs_of(path, doc_separator="page")


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_each_marker_becomes_one_end_of_text_id_and_never_text(tmp_path, tokenizer):
    docs = stories(40)
    cfg = prepared(tmp_path, tinystories_text(docs), tokenizer=tokenizer, vocab_size=300)
    tok = load_data_tokenizer(cfg.dir)
    ids = split_ids(cfg, "train") + split_ids(cfg, "val")
    assert ids.count(tok.eot_token) == len(docs)  # one per marker: each story ends with one
    assert tok.decode(ids) == "".join(d + ENDOFTEXT for d in docs)
    text = tok.decode([t for t in ids if t != tok.eot_token])
    assert "endoftext" not in text and "|" not in text
    if tokenizer == "char":
        assert "|" not in tok.chars and "<" not in tok.chars
    else:  # the trainer never saw the marker as text: no merge spells any of it
        assert not any(b"|" in tok.decode_bytes([t]) for t in range(256, tok.vocab_size) if t != tok.eot_token)
    meta = load_meta(cfg.dir)
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(docs)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_special_token_text_inside_a_document_is_encoded_as_text(tmp_path, tokenizer):
    """Documents are encoded with encode_ordinary: with blank-line separators a literal
    "<|endoftext|>" is part of a document, so it becomes text tokens, never the separator's id."""
    docs = [f"story {i} says {ENDOFTEXT} aloud" for i in range(30)]
    cfg = prepared(tmp_path, "\n\n".join(docs) + "\n", tokenizer=tokenizer, vocab_size=300, doc_separator="blank")
    tok = load_data_tokenizer(cfg.dir)
    ids = split_ids(cfg, "train") + split_ids(cfg, "val")
    assert ids.count(tok.eot_token) == len(docs)  # one after each document, none inside
    assert tok.decode(ids) == "".join(d + ENDOFTEXT for d in docs)


def test_val_split_starts_at_a_document_start(tmp_path):
    docs = stories(50)
    cfg = prepared(tmp_path, tinystories_text(docs), val_fraction=0.2)
    tok = load_data_tokenizer(cfg.dir)
    train, val = split_ids(cfg, "train"), split_ids(cfg, "val")
    assert train[-1] == tok.eot_token and tok.decode(val).startswith("Story ")
    n = len(train) + len(val)
    assert abs(len(val) - 0.2 * n) <= 0.02 * n  # moved back by less than a tenth of the split


def test_meta_counts_documents_bytes_and_unigram_entropy(tmp_path):
    docs = [*stories(30), "Ünïcödé ✓ story."]
    cfg = prepared(tmp_path, tinystories_text(docs), val_fraction=0.3)
    meta = load_meta(cfg.dir)
    tok = load_data_tokenizer(cfg.dir)
    total = sum(meta[s]["bytes"] for s in ("train", "val"))
    assert total == sum(len(d.encode("utf-8")) for d in docs)  # the text's bytes; end-of-text ids are none
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(docs)
    train = np.array(split_ids(cfg, "train"))
    p = np.bincount(train) / len(train)
    want = -sum(q * math.log(q) for q in p if q > 0)
    assert meta["unigram_entropy"] == pytest.approx(want, rel=1e-9)
    assert meta["train"]["bytes"] == sum(len(tok.decode_bytes([t])) for t in train if t != tok.eot_token)


def test_prepare_prints_entropy_and_documents(tmp_path):
    lines = []
    cfg = DataConfig(corpus=str(write(tmp_path, tinystories_text(stories(20)))), dir=str(tmp_path / "p"),
                     tokenizer="char")
    prepare(cfg, progress=False, log=lines.append)
    assert "unigram entropy" in lines[-1] and "documents" in lines[-1] and "nats/token" in lines[-1]


# --------------------------------------------------------------------------- max_bytes


def test_parse_bytes():
    assert parse_bytes("200MB") == 200_000_000 and parse_bytes("4KiB") == 4096 and parse_bytes("1_000") == 1000
    assert parse_bytes("") is None and parse_bytes("1.5 kb") == 1500
    for bad in ("12XB", "-3MB", "0", "MB", "0.1"):
        with pytest.raises(TinyLMError, match=f"--data.max_bytes {bad!r} is not a positive size"):
            parse_bytes(bad)


@pytest.mark.parametrize("separator", ["eot", "blank", "line"])
def test_max_bytes_cuts_at_a_document_end(tmp_path, separator):
    docs = [d.replace("\n\n", " ") for d in stories(30)]
    joiner = {"eot": f"\n{ENDOFTEXT}\n", "blank": "\n\n", "line": "\n"}[separator]
    text = joiner.join(docs) + joiner
    path = write(tmp_path, text)
    for cap in (len(joiner.join(docs[:7])) + 3, len(joiner.join(docs[:7])) + len(joiner), 2000):
        kept = docs_of(path, doc_separator=separator, max_bytes=cap)
        assert kept == docs[:len(kept)] and 0 < len(joiner.join(kept)) <= cap
        assert len(joiner.join(docs[:len(kept) + 1])) > cap - len(joiner)  # the next one would not fit
    assert docs_of(path, doc_separator=separator, max_bytes=10**9) == docs


def test_max_bytes_spans_files_and_refuses_a_cap_below_the_first_document(tmp_path):
    a = write(tmp_path, "aaaa\n", "a.txt")
    b = write(tmp_path, f"bb{ENDOFTEXT}ccc{ENDOFTEXT}dddd", "b.txt")
    corpus = Corpus("two", (a, b))
    assert documents.byte_limits(corpus, 5 + 20, "eot") == [5, 18]  # a whole, b up to its second marker
    assert ["".join(d) for d in iter_documents(corpus, max_bytes=25)] == ["aaaa", "bb", "ccc"]
    assert documents.byte_limits(corpus, 7, "file") == [5, 0]
    with pytest.raises(TinyLMError, match=r"--data\.max_bytes 3 holds no whole document"):
        documents.byte_limits(corpus, 3, "eot")


def test_max_bytes_is_a_prepare_setting(tmp_path):
    docs = stories(40)
    cfg = prepared(tmp_path, tinystories_text(docs), max_bytes="2KB", val_fraction=0.2)
    tok = load_data_tokenizer(cfg.dir)
    text = tok.decode(split_ids(cfg, "train") + split_ids(cfg, "val"))
    kept = text.split(ENDOFTEXT)[:-1]
    assert kept == docs[:len(kept)]
    assert len(tinystories_text(kept)) <= 2000 < len(tinystories_text(docs[:len(kept) + 1]))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "prep").iterdir())
    cfg.max_bytes = "3KB"
    with pytest.raises(TinyLMError, match=r"--data\.max_bytes was '2KB', now '3KB'"):
        prepare(cfg, progress=False, log=lambda *a: None)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "prep").iterdir()) == before


# --------------------------------------------------------------------------- windows aligned to documents


def test_aligned_windows_start_at_documents(tmp_path):
    docs = stories(60)
    cfg = prepared(tmp_path, tinystories_text(docs), val_fraction=0.1)
    tok = load_data_tokenizer(cfg.dir)
    ids = split_ids(cfg, "train")
    w = TokenWindows(cfg.dir, "train", 32)
    starts = w.doc_starts().tolist()
    ends = [i for i, t in enumerate(ids) if t == tok.eot_token]
    assert starts == [0] + [e for e in ends if e <= len(ids) - 33]  # the end-of-text id before each document
    epoch = len(starts)
    loader = BatchLoader(w, 4, mode="epoch", seed=3, align="doc")
    for _ in range(epoch // 4):
        x, _ = loader.next_batch()
        assert all(t in (tok.eot_token, ids[0]) for t in x[:, 0].tolist())  # the first document has none before it
    # each document start once per epoch: the starts drawn are a permutation of them
    loader2 = BatchLoader(w, 1, mode="epoch", seed=3, align="doc")
    drawn = [int(loader2._next_global_starts()[0]) for _ in range(epoch)]
    assert sorted(drawn) == starts


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_aligned_loader_resumes_exactly_and_refuses_another_align(tmp_path, mode):
    cfg = prepared(tmp_path, tinystories_text(stories(60)))
    w = TokenWindows(cfg.dir, "train", 16)
    a = BatchLoader(w, 3, mode=mode, seed=1, align="doc")
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    b = BatchLoader(w, 3, mode=mode, seed=1, align="doc")
    b.load_state_dict(state)
    for _ in range(20):
        assert all(torch.equal(p, q) for p, q in zip(a.next_batch(), b.next_batch(), strict=True))
    starts = set(w.doc_starts().tolist())
    assert all(int(s) in starts for s in a._next_global_starts())
    with pytest.raises(TinyLMError, match=r"--data\.align doc"):
        BatchLoader(w, 3, mode=mode, seed=1).load_state_dict(state)
