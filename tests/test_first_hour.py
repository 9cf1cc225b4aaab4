"""A newcomer's first hour: folders named after the corpus, a finished run that says so, honest
progress and final lines, a failed download that leaves nothing behind, and the small things
(`tinylm info`, config.toml, `--help`, lr-find, tracker locations)."""
from __future__ import annotations

import io
import json
import math

import pytest
from test_checkpoint import quiet, snapshot
from test_corpora import server  # noqa: F401 - the local HTTP server fixture
from test_train_robust import StepClock

from tinylm.cli import build_parser, main
from tinylm.config import Config, build_config, default_name, load_toml, to_toml
from tinylm.data import corpora
from tinylm.data import download as download_module
from tinylm.errors import TinyLMError
from tinylm.training import checkpoint as ckpt
from tinylm.training.tracking import ConsoleSink, read_metrics
from tinylm.training.trainer import Trainer, train

from conftest import REPO, cli_args, tiny_config

DEMO = str(REPO / "configs" / "shakespeare-char.toml")


# --------------------------------------------------------------------------- data.dir and run.name from the corpus

@pytest.mark.parametrize("corpus, tokenizer, name", [
    ("notes.txt", "char", "notes-char"), ("shakespeare", "char", "shakespeare-char"),
    ("tinystories", "bpe", "tinystories-bpe4096"), ("~/books/", "gpt2", "books-gpt2"),
    ("logs/**/*.log", "char", "logs-char"), ("my notes (2).md", "char", "my-notes-2-char"),
    ("*.txt", "char", "corpus-char"),
])
def test_default_name_is_corpus_and_tokenizer(corpus, tokenizer, name):
    cfg = Config()
    cfg.data.corpus, cfg.data.tokenizer = corpus, tokenizer
    assert default_name(cfg.data) == name


def test_data_dir_and_run_name_not_given_are_derived_and_given_ones_kept(tmp_path):
    own = build_config(DEMO, ["--data.corpus", "notes.txt"])
    assert (own.data.dir, own.run.name) == ("data/notes-char", "notes-char")
    bpe = build_config(DEMO, ["--data.corpus", "notes.txt", "--data.tokenizer", "bpe", "--data.vocab_size", "1024"])
    assert (bpe.data.dir, bpe.run.name) == ("data/notes-bpe1024", "notes-bpe1024")
    demo = build_config(DEMO)
    assert (demo.data.dir, demo.run.name) == ("data/shakespeare-char", "shakespeare-char")
    given = build_config(DEMO, ["--data.corpus", "notes.txt", "--data.dir", "d/x", "--run.name", "r"])
    assert (given.data.dir, given.run.name) == ("d/x", "r")
    preset = tmp_path / "p.toml"
    preset.write_text('[data]\ncorpus = "notes.txt"\ndir = "data/mine"\n[run]\nname = "mine"\n')
    from_preset = build_config(preset, ["--data.tokenizer", "bpe"])
    assert (from_preset.data.dir, from_preset.run.name) == ("data/mine", "mine")


def test_training_on_your_own_text_does_not_touch_the_demos_folders(tmp_path, text_200k, monkeypatch):
    """The API derives the names too; a second corpus gets folders of its own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text(text_200k.read_text()[:50_000])
    demo = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0})
    demo.data.dir = demo.run.name = ""
    train(demo, log=quiet)
    assert (demo.data.dir, demo.run.name) == ("data/text-char", "text-char")
    before = snapshot(tmp_path / "data") | snapshot(tmp_path / "runs")
    own = tiny_config(tmp_path, "notes.txt", **{"train.max_steps": 2, "train.eval_interval": 0})
    own.data.dir = own.run.name = ""
    train(own, log=quiet)
    assert own.run_dir == tmp_path / "runs" / "notes-char" and (tmp_path / "data" / "notes-char").is_dir()
    after = snapshot(tmp_path / "data") | snapshot(tmp_path / "runs")
    assert {k: v for k, v in after.items() if k in before} == before


def test_resume_with_other_data_is_refused_before_the_data_is_prepared(tmp_path, text_200k, capsys):
    """A run folder that cannot be continued is refused before a tokenizer is trained or data prepared."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0})
    train(cfg, log=quiet)
    other = tmp_path / "notes.txt"
    other.write_text("some other text\n" * 100)
    before = snapshot(tmp_path)
    args = [*cli_args(cfg), "--data.corpus", str(other), "--data.tokenizer", "bpe", "--data.vocab_size", "300",
            "--data.dir", str(tmp_path / "data-notes")]
    assert main(["train", *args, "--resume"]) == 2
    err = capsys.readouterr().err  # one line per differing setting
    assert err.startswith("tinylm: error: checkpoint") and "Traceback" not in err
    assert "--data.tokenizer: checkpoint 'char', this run 'bpe'" in err
    assert not (tmp_path / "data-notes").exists() and snapshot(tmp_path) == before


def test_config_toml_marks_bpe_settings_a_char_run_never_used():
    char = to_toml(build_config(DEMO))
    assert '# vocab_size = 4096  (unused: data.tokenizer is "char")' in char.splitlines()
    bpe = to_toml(build_config(DEMO, ["--data.tokenizer", "bpe"]))
    assert "vocab_size = 4096" in bpe.splitlines() and "unused" not in bpe


def test_a_written_config_toml_reads_back_as_the_same_config(tmp_path):
    cfg = build_config(DEMO, ["--data.corpus", "notes.txt"])
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    assert load_toml(tmp_path / "config.toml") == cfg


# --------------------------------------------------------------------------- a finished run, resumed

def test_resume_of_a_run_that_spent_its_time_budget_says_complete_and_writes_nothing(tmp_path, text_200k, capsys):
    """`make demo` a second time: the demo ends by its time budget, so this is the path it takes."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.time_budget": "3s",
                                              "train.eval_interval": 4, "train.log_interval": 5})
    trainer = Trainer(cfg, log=quiet)
    StepClock(trainer, 0.5)
    first = trainer.run()
    assert first.step == 6 and first.train_seconds == 3.0
    rows = read_metrics(cfg.run_dir)
    # the last step is logged (the final train loss), evaluated once, and its end is an event
    assert [r["step"] for r in rows if "loss" in r] == [5, 6]
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 6]
    assert [r["step"] for r in rows if r.get("event") == "time_budget"] == [6]
    samples = (cfg.run_dir / "samples.md").read_text()
    assert samples.count("## step") == 2
    before = snapshot(cfg.run_dir)
    capsys.readouterr()
    assert main(["train", *cli_args(cfg), "--train.time_budget", "3s", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "is complete: already at step 6 (--train.time_budget 3s used: 3s of training)" in out
    assert "--train.time_budget 6s" in out and "nan" not in out and "tok/s" not in out
    assert snapshot(cfg.run_dir) == before


def test_the_resume_hint_writes_durations_as_the_readme_does(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.time_budget": "3m",
                                              "train.eval_interval": 0})
    trainer = Trainer(cfg, log=quiet)
    StepClock(trainer, 60.0)
    assert trainer.run().step == 3
    capsys.readouterr()
    assert main(["train", *cli_args(cfg), "--train.time_budget", "3m", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "(--train.time_budget 3m used: 3m of training)" in out and "e.g. --train.time_budget 6m" in out


def test_a_resumed_run_knows_the_best_val_loss_of_its_last_evaluation(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 6, "train.eval_interval": 3})
    result = train(cfg, log=quiet)
    assert main(["train", *cli_args(cfg), "--resume"]) == 0
    assert f"best val loss {result.best_val_loss:.4f}" in capsys.readouterr().out
    trainer = Trainer(cfg, resume=True, log=quiet)
    trainer.close()
    assert trainer.state.best_val == result.best_val_loss


def test_the_final_line_states_the_final_losses(tmp_path, text_200k):
    lines = []
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 7, "train.log_interval": 5})
    result = train(cfg, log=lines.append)
    assert lines[-1].startswith(f"done at step 7: final train loss {result.train_loss:.4f}, final val loss "
                                f"{result.val_loss:.4f} (best {result.best_val_loss:.4f})")
    assert not math.isnan(result.train_loss)
    assert [r["loss"] for r in read_metrics(cfg.run_dir) if r.get("step") == 7 and "loss" in r] == [result.train_loss]


# --------------------------------------------------------------------------- the progress bar

class FakeBar:
    def __init__(self):
        self.shown, self.n = [], 0

    def set_postfix_str(self, text, refresh=True):
        self.shown.append(text)


def test_the_progress_bar_says_when_it_evaluates_then_shows_the_fresh_val_loss():
    sink = ConsoleSink(10, 0, progress=False)
    sink.bar = FakeBar()
    sink.log({"step": 5, "loss": 2.5, "tokens_per_s": 1000.0})
    sink.log({"step": 5, "val_loss": 2.75})
    sink.log({"step": 10, "loss": 2.0, "tokens_per_s": 1000.0})
    sink.status("step 10: evaluating")
    sink.log({"step": 10, "val_loss": 2.25})
    assert sink.bar.shown[-2:] == ["step 10: evaluating | loss 2.0000 val 2.7500 1,000 tok/s",
                                   "loss 2.0000 val 2.2500 1,000 tok/s"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_the_loops_eta_not_one_counted_to_max_steps():
    term = Terminal()
    sink = ConsoleSink(100_000, 0, progress=True, file=term)  # a time-budgeted run: max_steps far beyond its end
    sink.log({"step": 10, "loss": 2.0, "tokens_per_s": 1000.0, "eta_s": 90.0})
    sink.close()
    bar = term.getvalue()
    assert "eta 01:30" in bar
    assert "<" not in bar and "it/s" not in bar and "step/s" not in bar  # tqdm's own remaining time and rate


def test_a_budgeted_runs_bar_counts_to_the_step_the_budget_ends_it_at():
    """Not 14%| 277/2000 at the end of every budgeted run: the total follows the budget when it ends the run first."""
    term = Terminal()
    sink = ConsoleSink(2000, 0, progress=True, time_budget=100.0, file=term)
    sink.log({"step": 100, "loss": 2.0, "elapsed_s": 36.0})
    assert (sink.bar.n, sink.bar.total) == (100, 278)  # 36% of the budget spent: about 278 steps at this pace
    sink.log({"step": 277, "loss": 1.9, "elapsed_s": 100.0})
    assert (sink.bar.n, sink.bar.total) == (277, 277)
    sink.close()
    assert "100%" in term.getvalue() and "277/277" in term.getvalue()
    steps = ConsoleSink(50, 0, progress=True, time_budget=100.0, file=Terminal())  # the steps end it first
    steps.log({"step": 40, "loss": 2.0, "elapsed_s": 10.0})
    assert (steps.bar.n, steps.bar.total) == (40, 50)


def test_what_the_run_is_doing_shows_on_an_80_column_terminal():
    sink = ConsoleSink(2000, 0, progress=True, file=Terminal())
    sink.log({"step": 250, "loss": 2.1234, "val_loss": 2.3456, "tokens_per_s": 12345.0, "eta_s": 312.0})
    sink.status("step 250: evaluating")
    line = sink.bar.format_meter(**{**sink.bar.format_dict, "ncols": 80})
    assert len(line) <= 80 and "step 250: evaluating" in line


def test_without_a_terminal_there_is_no_bar_but_one_plain_line_per_log(capsys):
    piped = io.StringIO()  # a pipe, a file, a job scheduler's log
    sink = ConsoleSink(100, 0, progress=True, time_budget=10.0, file=piped)
    assert sink.bar is None
    for step in (10, 20, 30):
        sink.log({"step": step, "loss": 2.0, "tokens_per_s": 1000.0, "elapsed_s": step / 10})
    sink.status("step 30: evaluating")
    sink.log({"step": 30, "val_loss": 2.5})
    sink.close()
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err + piped.getvalue()
    assert out.out.splitlines() == ["step 10 (10%): loss 2.0000 val - 1,000 tok/s",
                                    "step 20 (20%): loss 2.0000 val - 1,000 tok/s",
                                    "step 30 (30%): loss 2.0000 val - 1,000 tok/s",
                                    "step 30: evaluating",
                                    "step 30 (30%): loss 2.0000 val 2.5000 1,000 tok/s"]


def test_the_trainer_says_what_it_does_at_each_evaluation_and_at_the_end(tmp_path, text_200k, monkeypatch):
    seen = []
    monkeypatch.setattr(ConsoleSink, "status", lambda self, message: seen.append(message))
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 6, "train.eval_interval": 3, "run.report": True})
    lines = []
    train(cfg, log=lines.append)
    at = ["saving", "evaluating", "sampling"]
    assert seen == [*(f"step 3: {a}" for a in at), *(f"step 6: {a}" for a in at), "step 6: writing the report"]
    assert lines[-2].startswith("done at step 6") and lines[-1] == f"report: {cfg.run_dir / 'report.md'}"


# --------------------------------------------------------------------------- a failed download

@pytest.fixture
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download_module, "_RETRY_DELAYS_S", (0.0, 0.0, 0.0))


@pytest.mark.parametrize("path", ["/404", "/500"])
def test_a_failed_corpus_download_leaves_no_empty_cache_folder(server, tmp_path, monkeypatch, no_retry_wait,  # noqa: F811
                                                               path):
    entry = corpora.NamedCorpus("tinyshakespeare/input.txt", server.url(path), "0" * 64, "test")
    monkeypatch.setitem(corpora.CORPORA, "tinyshakespeare", entry)
    root = tmp_path / "cache" / "data"
    with pytest.raises(TinyLMError, match=f"HTTP {path[1:]}"):
        corpora.get_corpus("tinyshakespeare", root=root, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither data/tinyshakespeare/ nor data/ nor cache/


def test_a_refused_connection_leaves_no_folder_and_keeps_existing_ones(tmp_path, no_retry_wait):
    import socket
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/input.txt"
        (tmp_path / "data").mkdir()
        with pytest.raises(TinyLMError, match="failed after 4 attempts"):
            download_module.download(url, tmp_path / "data" / "new" / "input.txt", progress=False)
    assert [p.name for p in tmp_path.rglob("*")] == ["data"]  # the folder that was there stays


# --------------------------------------------------------------------------- the small things

def test_info_shows_precision_and_training_time(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 0})
    result = train(cfg, log=quiet)
    capsys.readouterr()
    assert main(["info", str(cfg.run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    s = round(result.train_seconds)
    assert info["precision"] == "fp32" and info["training_time"] == f"{s // 60}m{s % 60:02d}s ({s} s)"
    assert main(["info", str(cfg.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "precision: fp32" in out and "training_time: " in out


def test_info_rounds_its_numbers_for_people(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 3})
    train(cfg, log=quiet)
    capsys.readouterr()
    assert main(["info", str(cfg.run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert main(["info", str(cfg.run_dir)]) == 0
    lines = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["val_loss"] == f"{info['val_loss']:.4f}" != str(info["val_loss"])
    n = info["parameters"]
    assert n >= 10_000 and lines["parameters"] == f"{n:,} ({n / 1e3:.3g}K)"


def test_version(capsys):
    from tinylm import __version__
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"tinylm {__version__}\n"


def test_info_on_an_older_checkpoint_says_what_was_not_recorded(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 0})
    train(cfg, log=quiet)
    path = ckpt.resolve_checkpoint(cfg.run_dir)
    meta = ckpt.read_meta(path)
    del meta["precision"], meta["train_seconds"]
    (path / ckpt.META).write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["info", str(cfg.run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "not recorded (configured: fp32)" and info["training_time"] == "not recorded"


def test_help_of_commands_with_config_overrides_reads_as_sentences():
    parser = build_parser()
    for name in ("prepare", "train", "lr-find", "config"):
        text = " ".join(parser._subparsers._group_actions[0].choices[name].description.split())
        assert ". then" not in text and ".." not in text
        assert text.endswith("Any config setting can follow as --section.key value (every key: "
                             "`tinylm config --keys`).")


def test_lr_find_says_when_it_replaces_an_earlier_result(tmp_path, text_200k):
    from tinylm.training.lr_find import lr_find
    cfg = tiny_config(tmp_path, text_200k)
    for expected in (False, True):
        lines = []
        lr_find(cfg, steps=10, start=1e-4, end=1e-2, log=lines.append)
        assert ("replacing the earlier result" in lines[-1]) is expected


def test_tensorboard_and_wandb_say_where_their_files_go(tmp_path, text_200k, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0,
                                              "run.tensorboard": True, "run.wandb": True})
    lines = []
    train(cfg, log=lines.append)
    tb = next(line for line in lines if line.startswith("TensorBoard:"))
    assert f"events in {cfg.run_dir / 'tb'}" in tb and f"tensorboard --logdir {cfg.run_dir.parent}" in tb
    wb = next(line for line in lines if line.startswith("W&B:"))
    (offline_run,) = (cfg.run_dir / "wandb").glob("offline-run-*")
    assert f"offline run in {offline_run}" in wb and f"wandb sync {offline_run}" in wb
