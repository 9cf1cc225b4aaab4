"""Evaluation that compares: a fixed window set, bits per byte, `tinylm eval`, and the healthy-curve checks."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.cli import main
from tinylm.config import build_config, from_dict
from tinylm.data.shards import load_data_tokenizer, load_meta, read_shard
from tinylm.errors import TinyLMError
from tinylm.model.gpt import GPT
from tinylm.tokenizer import BPETokenizer, CharTokenizer
from tinylm.training.checkpoint import resolve_checkpoint
from tinylm.training.curve_checks import UNIGRAM_DEADLINE, CurveChecks
from tinylm.training.evaluate import Evaluator, batch_windows, eval_windows
from tinylm.training.tracking import read_metrics
from tinylm.training.trainer import train

from conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_200k):
    """A tiny run trained 20 steps, with two evaluations."""
    tmp = tmp_path_factory.mktemp("eval")
    cfg = tiny_config(tmp, text_200k, **{"train.max_steps": 20, "train.threads": 1})
    train(cfg, log=lambda *a: None)
    return cfg


def _split(cfg, name="val") -> list[np.ndarray]:
    return [read_shard(Path(cfg.data.dir) / n) for n in load_meta(cfg.data.dir)[name]["shards"]]


# --------------------------------------------------------------------------- the window set

def test_eval_windows_score_every_target_once():
    assert eval_windows([10], 4) == [(0, 0, 4), (0, 4, 4), (0, 8, 1)]
    assert eval_windows([10, 6], 4, max_tokens=6) == [(0, 0, 4), (0, 4, 2)]
    assert eval_windows([10, 6], 4) == [(0, 0, 4), (0, 4, 4), (0, 8, 1), (1, 0, 4), (1, 4, 1)]
    assert eval_windows([1, 0], 4) == []  # no target at all
    assert batch_windows(eval_windows([10], 4), 8) == [[(0, 0, 4), (0, 4, 4)], [(0, 8, 1)]]


def test_eval_set_is_identical_for_micro_batch_16_and_4_and_world_size_1_and_2(trained):
    """The issue's defect: the val set was the first eval_batches x micro-batch x processes windows."""
    cfg, tok = trained, load_data_tokenizer(trained.data.dir)
    segments, T, table = _split(cfg), cfg.model.block_size, tok.token_byte_lengths()
    one = Evaluator(segments, T, 16, table, max_tokens=5000)
    assert one.tokens == 5000
    for micro, world in ((4, 1), (16, 2), (4, 2), (3, 3)):
        shares = [Evaluator(segments, T, micro, table, max_tokens=5000, rank=r, world_size=world) for r in range(world)]
        scored = sorted(w for ev in shares for batch in ev.mine for w in batch)
        assert scored == one.windows, (micro, world)
        assert len({ev.passes for ev in shares}) == 1  # every process runs the same number of forward passes
    # and the numbers: micro-batch 16 and 4 give the same loss and bits per byte, up to fp32 rounding
    torch.manual_seed(0)
    model = GPT(cfg.model)
    a = one.run(model, torch.device("cpu"))
    b = Evaluator(segments, T, 4, table, max_tokens=5000).run(model, torch.device("cpu"))
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes) == (5000, 5000)
    assert abs(a.loss - b.loss) < 1e-6 and abs(a.bpb - b.bpb) < 1e-6


def test_validation_loss_does_not_depend_on_accumulation(tmp_path, text_200k):
    """Batch 8 in one pass and 4 micro-steps of 2 log the same val loss (they trained alike)."""
    opts = {"train.max_steps": 10, "train.eval_interval": 5, "train.eval_tokens": 2000}
    runs = [tiny_config(tmp_path / name, text_200k, **opts, **extra)
            for name, extra in (("one", {}), ("acc", {"train.micro_batch_size": 2}))]
    vals = []
    for cfg in runs:
        train(cfg, log=lambda *a: None)
        vals.append({r["step"]: r["val_loss"] for r in read_metrics(cfg.run_dir) if "val_loss" in r})
    assert sorted(vals[0]) == sorted(vals[1]) == [5, 10]
    assert max(abs(vals[0][s] - vals[1][s]) for s in (5, 10)) < 1e-4  # conftest's fp32 equivalence bound


# --------------------------------------------------------------------------- bits per byte

class Uniform(torch.nn.Module):
    """Equal logits for every id: ln(V) nats per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab), None


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_per_byte(kind):
    text = "Ünïcode — façade, naïve café; 東京 and plain ASCII too. " * 30
    tok = CharTokenizer.train([text], ["<|endoftext|>"]) if kind == "char" else \
        BPETokenizer.train([text], 300, progress=False)
    ids = np.array(tok.encode(text), dtype=np.uint32)
    r = Evaluator([ids], 16, 4, tok.token_byte_lengths()).run(Uniform(tok.vocab_size), torch.device("cpu"))
    targets_bytes = len(text.encode()) - len(tok.decode_bytes(ids[:1].tolist()))  # every token but the first
    assert r.tokens == len(ids) - 1 and r.bytes == targets_bytes and r.bytes > r.tokens
    assert r.loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert r.bpb == pytest.approx(math.log2(tok.vocab_size) * r.tokens / r.bytes, rel=1e-6)
    # an end-of-text id counts in the loss, but has no bytes and is left out of bits per byte (as nanochat does)
    eot = tok.eot_token
    with_eot = np.concatenate([ids, [eot], ids]).astype(np.uint32)
    r2 = Evaluator([with_eot], 16, 4, tok.token_byte_lengths()).run(Uniform(tok.vocab_size), torch.device("cpu"))
    assert r2.tokens == 2 * len(ids) and r2.bytes == 2 * r.bytes + len(tok.decode_bytes(ids[:1].tolist()))
    assert r2.bpb == pytest.approx(math.log2(tok.vocab_size) * (r2.tokens - 1) / r2.bytes, rel=1e-6)


def test_token_byte_lengths():
    char = CharTokenizer.train(["aé東"], ["<|endoftext|>"])
    assert char.token_byte_lengths() == [1, 2, 3, 0]
    bpe = BPETokenizer.train(["hello hello héllo"], 262, progress=False)
    lengths = bpe.token_byte_lengths()
    assert lengths[:256] == [1] * 256 and lengths[bpe.eot_token] == 0
    ids = bpe.encode("héllo hello")
    assert sum(lengths[i] for i in ids) == len("héllo hello".encode())


# --------------------------------------------------------------------------- tinylm eval

def _eval_json(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_text_matches_the_same_text_prepared_as_a_split(trained, tmp_path, capsys):
    tok = load_data_tokenizer(trained.data.dir)
    val = np.concatenate(_split(trained))
    text = tmp_path / "val.txt"
    text.write_text(tok.decode(val.tolist()), encoding="utf-8")
    on_split = _eval_json(capsys, trained.run_dir, "--tokens", "all")
    on_text = _eval_json(capsys, trained.run_dir, "--text", text)
    assert on_split.pop("on") != on_text.pop("on")
    assert on_split == on_text and on_text["tokens"] == len(val) - 1
    # the default is the run's own eval set: the val loss it logged at its last evaluation
    logged = [r["val_loss"] for r in read_metrics(trained.run_dir) if "val_loss" in r][-1]
    default = _eval_json(capsys, trained.run_dir)
    assert default["tokens"] == trained.train.eval_tokens and default["loss"] == pytest.approx(logged, abs=1e-6)
    assert default["perplexity"] == pytest.approx(math.exp(default["loss"]))
    # best and last, another batch size, the train split, a token count
    assert _eval_json(capsys, trained.run_dir, "--checkpoint", "best", "--batch-size", "3")["loss"] == \
        pytest.approx(default["loss"], abs=1e-6)
    assert _eval_json(capsys, trained.run_dir, "--split", "train", "--tokens", "100")["tokens"] == 100
    # a shorter context scores every target too, each from fewer tokens before it
    assert on_text["context"] == trained.model.block_size
    short = _eval_json(capsys, trained.run_dir, "--text", text, "--context", "4")
    assert short["context"] == 4 and short["tokens"] == on_text["tokens"] and short["loss"] != on_text["loss"]
    assert main(["eval", str(trained.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "(step 20) on the val split of" in out and "perplexity" in out and "bits per byte" in out


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nowhere"], "does not exist; give a run folder"),
    (["{tmp}"], "no checkpoint found in"),
    (["{run}", "--text", "{tmp}/empty.txt"], "empty.txt is empty: evaluation needs at least 2 tokens"),
    (["{run}", "--text", "{tmp}/one.txt"], "one.txt holds 0 token(s) with the run's tokenizer"),
    (["{run}", "--text", "{tmp}/missing.txt"], "missing.txt is not a file"),
    (["{run}", "--text", "{tmp}/odd.txt"], "odd.txt: characters ['東'] are not in this character vocabulary"),
    (["{run}", "--text", "{tmp}/one.txt", "--split", "val"], "give --split or --text, not both"),
    (["{run}", "--tokens", "0"], "--tokens expects a positive whole number or all, got '0'"),
    (["{run}", "--batch-size", "0"], "--batch-size 0 must be positive"),
    (["{run}", "--context", "0"], "--context 0: give 1 to 32, the model's context"),
    (["{run}", "--context", "33"], "--context 33: give 1 to 32, the model's context"),
])
def test_eval_refusals_are_one_line_and_touch_nothing(trained, tmp_path, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text(" \n \n")  # whitespace: no document
    (tmp_path / "odd.txt").write_text("a 東 b")
    before = sorted((p, p.stat().st_mtime_ns) for p in [*tmp_path.rglob("*"), *trained.run_dir.rglob("*")])
    argv = [a.format(tmp=tmp_path, run=trained.run_dir) for a in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted((p, p.stat().st_mtime_ns) for p in [*tmp_path.rglob("*"), *trained.run_dir.rglob("*")]) == before


def test_eval_refuses_a_data_folder_prepared_again_with_another_tokenizer(trained, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("only a few letters: abc cab " * 200)
    assert main(["prepare", "--data.corpus", str(other), "--data.dir", str(tmp_path / "data"),
                 "--run.progress", "false"]) == 0
    copy = tmp_path / "step"  # the run's checkpoint, its data folder now holding another character set
    shutil.copytree(resolve_checkpoint(trained.run_dir), copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["config"]["data"]["dir"] = str(tmp_path / "data")
    (copy / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(copy)]) == 2
    assert "was prepared again with another tokenizer" in capsys.readouterr().err
    assert main(["eval", str(copy), "--text", str(other)]) == 0  # a text goes through the checkpoint's own


# --------------------------------------------------------------------------- config

def test_eval_batches_is_refused_naming_its_replacement(tmp_path):
    preset = tmp_path / "old.toml"
    preset.write_text("[train]\neval_batches = 20\n")
    with pytest.raises(TinyLMError, match=r"old.toml: --train.eval_batches was replaced by --train.eval_tokens") as e:
        build_config(preset)
    assert "\n" not in str(e.value)
    with pytest.raises(TinyLMError, match=r"was replaced by --train\.eval_tokens"):
        build_config(None, ["--train.eval_batches", "3"])
    # a checkpoint saved before the change still loads: its config keeps the new default
    old = build_config().to_dict()
    del old["train"]["eval_tokens"]
    old["train"]["eval_batches"] = 20
    assert from_dict(old).train.eval_tokens == build_config().train.eval_tokens
    with pytest.raises(TinyLMError, match=r"--train\.eval_tokens must be >= 0"):
        build_config(None, ["--train.eval_tokens", "-1"])


# --------------------------------------------------------------------------- healthy-curve checks

def test_curve_checks():
    checks = CurveChecks(100, unigram_entropy=3.0, spike_factor=3.0)
    [init] = checks.initial(4.5)
    assert init["event"] == "initial_loss" and init["ok"] and "within 10% of ln(vocab) = 4.6052" in init["message"]
    assert not checks.initial(5.1)[0]["ok"]  # 5.1 > 1.1 x ln(100) = 5.066
    assert not checks.initial(4.1)[0]["ok"]  # 4.1 < 0.9 x ln(100) = 4.145
    assert checks.val(100, 3.5) == []  # above 1.1 x 3.0, but still early
    [late] = checks.val(UNIGRAM_DEADLINE, 3.5)
    assert late["event"] == "unigram_entropy" and not late["ok"] and "still above 1.1 x the unigram" in late["message"]
    assert checks.val(UNIGRAM_DEADLINE + 100, 2.0) == []  # said once
    reached = CurveChecks(100, 3.0, 3.0).val(200, 3.3)
    assert reached[0]["ok"] and "at or below 1.1 x the unigram entropy 3.0000" in reached[0]["message"]
    assert CurveChecks(100, None, 3.0).val(1000, 9.0) == []  # prepare did not measure it: no check
    spikes = CurveChecks(100, None, 3.0)
    assert all(spikes.train(1.0) == [] for _ in range(20))
    assert spikes.train(3.5)[0]["event"] == "loss_spike"


def test_overfitting_is_said_once_when_val_rises_while_train_falls():
    checks = CurveChecks(100, None, spike_factor=0)
    for loss in (3.0, 2.9, 2.8, 2.7, 2.6):
        checks.train(loss)
    assert checks.val(100, 2.70) == []  # the best so far
    for loss in (2.5, 2.4, 2.3, 2.2, 2.1):
        checks.train(loss)
    assert checks.val(200, 2.72) == []  # 0.7% above the best: noise, not a trend
    for loss in (2.0, 1.9, 1.8, 1.7, 1.6):
        checks.train(loss)
    [event] = checks.val(300, 2.80)  # 3.7% above the best while the train loss (median of 5) fell 2.8 -> 1.8
    assert event["event"] == "overfitting" and not event["ok"] and event["best_step"] == 100
    assert "val loss 2.8000 is 3.7% above its best 2.7000 (step 100) while the train loss fell 2.8000 -> 1.8000" \
        in event["message"]
    for fix in ("more data", "--model.dropout", "--checkpoint best"):
        assert fix in event["message"]
    assert checks.val(400, 2.90) == []  # said once
    flat = CurveChecks(100, None, spike_factor=0)  # val rises but train does not fall: not overfitting
    for loss in (2.0,) * 5:
        flat.train(loss)
    flat.val(100, 2.5)
    for loss in (2.1,) * 5:
        flat.train(loss)
    assert flat.val(200, 2.7) == []


def test_a_resumed_run_does_not_repeat_the_checks_it_already_said(tmp_path, text_200k, monkeypatch):
    import tinylm.training.curve_checks
    monkeypatch.setattr(tinylm.training.curve_checks, "UNIGRAM_DEADLINE", 3)  # the tiny model is late at step 3
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 3})
    from tinylm.data.prepare import ensure_prepared
    meta = ensure_prepared(cfg.data, progress=False, log=lambda *a: None)
    meta["unigram_entropy"] = 0.5  # out of the tiny model's reach
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))
    train(cfg, log=lambda *a: None)
    cfg.train.max_steps = 6
    train(cfg, resume=True, log=lambda *a: None)
    records = read_metrics(cfg.run_dir)
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert [r["step"] for r in records if r.get("event") == "unigram_entropy"] == [3]


def test_training_logs_the_checks_and_the_val_figures(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10})
    from tinylm.data.prepare import ensure_prepared
    meta = ensure_prepared(cfg.data, progress=False, log=lambda *a: None)
    meta["unigram_entropy"] = 5.0  # what prepare measures (another change): reached at the first evaluation
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))
    train(cfg, log=lambda *a: None)
    records = read_metrics(cfg.run_dir)
    events = {r["event"]: r for r in records if "event" in r}
    assert events["initial_loss"]["step"] == 0 and events["initial_loss"]["ok"]
    assert events["initial_loss"]["initial_loss"] == pytest.approx(math.log(cfg.model.vocab_size), rel=0.1)
    assert events["unigram_entropy"]["step"] == 10 and events["unigram_entropy"]["ok"]
    [val] = [r for r in records if "val_loss" in r]  # one evaluation, and no event repeats its numbers
    assert val["val_ppl"] == pytest.approx(math.exp(val["val_loss"]))
    assert val["val_bpb"] == pytest.approx(val["val_loss"] / math.log(2))  # ASCII, one char per token and byte
