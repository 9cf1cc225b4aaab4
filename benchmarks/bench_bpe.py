"""Byte-level BPE, side by side with its peers, in one run.

    .venv/bin/python benchmarks/bench_bpe.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_bpe.py --repeat 5 --json out.json

Measures
1. training on the 4.2 MB TinyStories train sample to vocab 4096 (one special token): tinylm
   (incremental, pure Python; all cores and one core) vs Hugging Face ``tokenizers`` BpeTrainer
   (Rust) with the same pre-tokenization (the GPT-2 split regex, then bytes) and vocab size;
2. the textbook full-recount trainer vs the incremental one on a small slice (same merges);
3. training on ~130 KB of English to vocab 500 with one special token;
4. encoding throughput with GPT-2's ranks: our fast path vs tiktoken, and our pure-Python
   reference encoder (cold cache);
5. peak memory (max RSS) of a process that trains on the 4.2 MB sample.
Data: ../shared/data (or $TINYLM_SHARED_DATA); GPT-2 files: $TIKTOKEN_CACHE_DIR (default
../shared/tiktoken_cache). Times are wall-clock medians of --repeat runs (min in brackets).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from common import SHARED, Meter, machine, machine_line, time_call

from tinylm.data.documents import iter_chunks
from tinylm.tokenizer.bpe import BPETokenizer
from tinylm.tokenizer.bpe_train import merge_incremental, merge_naive
from tinylm.tokenizer.pretokenize import count_pretokens

DATA = Path(os.environ.get("TINYLM_SHARED_DATA", SHARED / "data"))
EOT = "<|endoftext|>"
STORIES = DATA / "tinystories" / "train-head-lowercase.txt"


def hf_train(path: Path, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from tinylm.tokenizer.pretokenize import GPT2_PATTERN
    tok = Tokenizer(models.BPE())
    # the same pre-tokenization as ours: GPT-2's regex, then bytes as GPT-2's printable chars
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(path)], trainer)
    return tok


def memory_child(path: str, workers: int) -> None:
    """Run in a subprocess: train, then print max RSS of this process and of its workers."""
    trained = time_call(lambda: BPETokenizer.train(iter_chunks(path), 4096, workers=workers))
    me = _vm_hwm_mb()
    # a forked worker's max RSS counts the pages it shares with the main process
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"main_mb": me, "worker_mb": kids, "seconds": trained.wall, "vocab": trained.result.vocab_size}))


def _vm_hwm_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec, unlike
    ru_maxrss, which a subprocess inherits from the (large) benchmark process that forked it."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--memory-child", nargs=2, metavar=("PATH", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    if not STORIES.is_file():
        sys.exit(f"{STORIES} not found: set TINYLM_SHARED_DATA to the shared data folder")
    r = args.repeat
    res: dict = {"machine": machine("tokenizers", "tiktoken"),
                 "command": " ".join([Path(sys.executable).name, *sys.argv]), "repeat": r}
    rows: list[tuple[str, str, str]] = []

    # 1. 4.2 MB to vocab 4096: ours vs HF (interleaved so load changes hit all alike)
    ours2, ours1, hf, hf1 = Meter(), Meter(), Meter(), Meter()
    hft = None
    for _ in range(r):
        tok = ours2(lambda: BPETokenizer.train(iter_chunks(STORIES), 4096))
        tok1 = ours1(lambda: BPETokenizer.train(iter_chunks(STORIES), 4096, workers=1))
        try:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
            hft = hf(lambda: hf_train(STORIES, 4096))
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # HF on one thread
            hf1(lambda: hf_train(STORIES, 4096))
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        except ImportError:
            pass
    assert tok.merges == tok1.merges  # the worker count never changes the result
    mb = STORIES.stat().st_size / 1e6
    what = f"train {mb:.1f} MB TinyStories -> 4096"
    rows.append((f"{what}, tinylm (all {os.cpu_count()} cores)", ours2.cell(), ""))
    rows.append((f"{what}, tinylm (1 core)", ours1.cell(), ""))
    res["train_4096"] = {"tinylm_all_cores": vars(ours2), "tinylm_1_core": vars(ours1),
                         "hf": vars(hf), "hf_1_thread": vars(hf1)}
    if hft is not None:
        ratio, ratio1 = ours2.median / hf.median, ours1.median / hf1.median
        ours_tokens = set(tok.vocab)
        hf_tokens = {bytes(_hf_byte(c) for c in s) for s in hft.get_vocab() if s != EOT}
        overlap = len(ours_tokens & hf_tokens) / len(ours_tokens)
        rows.append((f"{what}, HF tokenizers BpeTrainer (Rust)", hf.cell(),
                     f"tinylm / HF time = {ratio:.2f} (goal <= 2); {overlap:.1%} of tinylm's tokens are in HF's vocab"))
        rows.append((f"{what}, HF with TOKENIZERS_PARALLELISM=false", hf1.cell(),
                     f"tinylm 1 core / HF 1 thread = {ratio1:.2f}"))
        res["train_4096"].update(ratio=ratio, ratio_1_core=ratio1, vocab_overlap=overlap)

    # 2. naive vs incremental on a slice (identical merges)
    text = STORIES.read_text(encoding="utf-8")[:100_000]
    words = {w.encode(): n for w, n in count_pretokens([text], workers=1).items()}
    mn, mi = Meter(), Meter()
    naive = mn(lambda: merge_naive(words, 512 - 256))  # once: it is slow
    for _ in range(r):
        inc = mi(lambda: merge_incremental(words, 512 - 256))
    assert naive == inc
    rows.append(("merges only, 100 KB slice -> 512: naive full recount", mn.cell(),
                 f"{mn.median / mi.median:.0f}x the incremental time"))
    rows.append(("merges only, 100 KB slice -> 512: incremental", mi.cell(), "identical merges"))
    res["naive_vs_incremental_100kb_512"] = {"naive": vars(mn), "incremental": vars(mi)}

    # 3. ~130 KB English to vocab 500 with one special token (goal < 0.5 s)
    small = (DATA / "tinystories" / "valid-head.txt").read_text(encoding="utf-8")[:130_000]
    m = Meter()
    for _ in range(max(r, 5)):
        m(lambda: BPETokenizer.train([small], 500, special_tokens=(EOT,)))
    rows.append(("train 130 KB TinyStories -> 500 (+1 special)", m.cell(), "goal < 0.5 s"))
    res["train_130kb_500"] = vars(m)

    # 4. encoding throughput with GPT-2's ranks
    try:
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")
        gpt2 = BPETokenizer.from_tiktoken(enc)
        sample = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8") + \
            (DATA / "tinystories" / "valid-head.txt").read_text(encoding="utf-8")
        smb = len(sample.encode()) / 1e6
        gpt2.encode_ordinary(sample[:1000]), enc.encode_ordinary(sample[:1000])  # warm up
        calls = {  # the same call on both sides
            "encode_ordinary(text)": (lambda: gpt2.encode_ordinary(sample), lambda: enc.encode_ordinary(sample)),
        }
        res["encode_mb_s"] = {}
        for name, (ours_fn, theirs_fn) in calls.items():
            ours, theirs = Meter(), Meter()
            for _ in range(max(r, 5)):  # interleaved
                a, b = ours(ours_fn), theirs(theirs_fn)
                assert a == b
            rows.append((f"encode {smb:.1f} MB with GPT-2 ranks, {name}: tinylm fast path / tiktoken",
                         f"{smb / ours.median:.1f} / {smb / theirs.median:.1f} MB/s",
                         f"tinylm / tiktoken time = {ours.median / theirs.median:.2f} (goal <= 1.10)"))
            res["encode_mb_s"][name] = {"tinylm": smb / ours.median, "tiktoken": smb / theirs.median}
        fresh = BPETokenizer.from_tiktoken(enc)
        reference = time_call(lambda: fresh.encode_reference(sample))  # cold cache: the first call
        tr = reference.wall
        assert reference.result == b
        rows.append((f"encode {smb:.1f} MB with GPT-2 ranks: tinylm pure-Python reference", f"{smb / tr:.2f} MB/s",
                     "cold cache, identical ids"))
        res["encode_mb_s"]["reference"] = smb / tr
    except Exception as e:  # report and carry on
        rows.append(("encode with GPT-2 ranks", "skipped", f"{type(e).__name__}: {e}"))

    # 5. peak memory of a training process (fresh interpreter)
    for w in (os.cpu_count() or 1, 1):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(STORIES), str(w)],
                             capture_output=True, text=True, check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        note = "goal < 1 GB"
        if w > 1:
            note += f"; workers' max RSS {m['worker_mb']:.0f} MB each (shared pages included)"
        rows.append((f"peak memory training {mb:.1f} MB -> 4096, {w} worker(s)", f"{m['main_mb']:.0f} MB", note))
        res[f"peak_rss_mb_{w}_workers"] = m

    print(f"## BPE benchmarks ({res['machine']['date']})\n")
    print(f"machine: {machine_line(res['machine'])}")
    print(f"command: {res['command']}\n")
    width = max(len(x[0]) for x in rows)
    print(f"| {'what'.ljust(width)} | time / rate | note |")
    print(f"|{'-' * (width + 2)}|-------------|------|")
    for what, val, note in rows:
        print(f"| {what.ljust(width)} | {val} | {note} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


def _hf_byte(c: str) -> int:
    from tinylm.tokenizer.gpt2_files import bytes_to_unicode
    if not _HF_BYTES:
        _HF_BYTES.update({v: k for k, v in bytes_to_unicode().items()})
    return _HF_BYTES[c]


_HF_BYTES: dict[str, int] = {}


if __name__ == "__main__":
    main()
