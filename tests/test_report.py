"""`tinylm report` and the report `tinylm train` writes: summary, curves, curve-health rules, last sample."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from tinylm.analysis import health
from tinylm.analysis.report import load_run, model_counts, write_report
from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.fileio import made_file
from tinylm.model.gpt import GPT
from tinylm.training.tracking import read_metrics
from tinylm.training.trainer import train

from conftest import tiny_config


def steps(losses, **extra) -> list[dict]:
    return [{"step": 10 * (i + 1), "loss": v, **extra} for i, v in enumerate(losses)]


# ----------------------------------------------------------------------------- the rules

def test_a_converged_curve_is_a_plateau_and_nothing_else():
    records = steps([4 - 2 * (1 - math.exp(-i / 3)) for i in range(40)], grad_norm=0.5)
    records += [{"step": 400, "val_loss": 2.05}]
    findings = health.verdict(records, grad_clip=1.0)
    assert health.summary(findings) == "plateau"  # converged: 40 logs, flat at the end
    assert [f.rule for f in findings] == list(health.RULES)


def test_diverging_and_nonfinite():
    assert health.diverging(steps([3, 2.5, 2, 1.8, 1.7, 1.6, 1.6, 2.5, 3.0, 3.5])).fired
    assert health.diverging(steps([3, 2, None, 2])).fired  # a NaN is logged as null
    assert not health.diverging(steps([3, 2.5, 2, 1.8, 1.7, 1.6, 1.6])).fired


def test_spikes_name_their_steps():
    records = [*steps([3, 2, 1]), *({"step": s, "event": "loss_spike", "message": "x"} for s in (20, 30))]
    f = health.loss_spikes(records)
    assert f.fired and f.detail == "at steps 20, 30"


def test_still_falling_versus_plateau():
    falling = steps([4 - 0.1 * i for i in range(20)])
    flat = steps([2.0] * 20)
    assert health.still_falling(falling).fired and not health.plateau(falling).fired
    assert health.plateau(flat).fired and not health.still_falling(flat).fired
    assert "too few" in health.plateau(steps([3, 2])).detail


def test_overfitting_by_gap_and_by_rising_val():
    train_ = steps([1.0] * 10)
    assert health.overfitting([*train_, {"step": 100, "val_loss": 1.3}]).fired  # gap 0.3 nats, 30%
    assert not health.overfitting([*train_, {"step": 100, "val_loss": 1.04}]).fired
    rising = [{"step": 50, "val_loss": 1.0}, {"step": 100, "val_loss": 1.05}]
    assert health.overfitting(steps([1.04] * 10) + rising).fired  # 5% above its best


def test_still_falling_and_overfitting_together_read_as_overfitting():
    """Train still falling while val rises is overfitting: the verdict does not also ask for more tokens."""
    records = [*steps([4 - 0.1 * i for i in range(20)]), {"step": 100, "val_loss": 2.5},
               {"step": 200, "val_loss": 2.8}]
    findings = health.verdict(records, grad_clip=1.0)
    fired = {f.rule: f for f in findings if f.fired}
    assert set(fired) == {"still falling", "overfitting"}
    assert "val loss rose (overfitting)" in fired["still falling"].detail
    assert "more passes over it would not help" in fired["still falling"].detail
    assert health.summary(findings) == health.OVERFITTING_WHILE_FALLING
    assert "still falling" not in health.summary(findings)
    alone = health.verdict(steps([4 - 0.1 * i for i in range(20)]), grad_clip=1.0)
    assert health.summary(alone) == "still falling" and "overfitting" not in alone[3].detail


def test_lr_at_the_edge_when_grad_norm_sits_at_the_clip():
    pinned = steps([2.0] * 10, grad_norm=1.0)
    assert health.lr_at_edge(pinned, 1.0).fired
    assert not health.lr_at_edge(steps([2.0] * 10, grad_norm=0.3), 1.0).fired
    assert not health.lr_at_edge(pinned, 0.0).fired  # no clipping: nothing to be pinned at


# ----------------------------------------------------------------------------- reports of real runs

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_200k):
    """One tiny run, trained with the end-of-run report on."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = tiny_config(tmp, text_200k, **{"run.report": True, "train.max_steps": 20})
    train(cfg, log=lambda *a: None)
    return cfg.run_dir


def test_train_writes_the_report_at_the_end(run_dir):
    text = (run_dir / "report.md").read_text()
    assert made_file(run_dir / "report.md") and (run_dir / "report.png").stat().st_size > 10_000
    records = read_metrics(run_dir)
    best = min(r["val_loss"] for r in records if "val_loss" in r)
    model = GPT(load_run(run_dir).cfg.model)
    assert f"| best val loss (perplexity) | {best:.4f} ({math.exp(best):.2f}) |" in text
    assert model_counts(load_run(run_dir).cfg) == (model.num_params(), model.num_params(non_embedding=True),
                                                   model.flops_per_token())
    device = load_run(run_dir).meta["device"]  # cpu, or cuda:0 (its name) on a GPU machine
    assert f"| device / precision | {device} / fp32 |" in text
    assert "**Verdict:" in text and "From step 20 (val loss" in text  # the verdict and the last sample
    first_step = next(r for r in records if "loss" in r)  # after the step-0 initial_loss event
    assert all(f"lr_{g}" in first_step for g in ("matrices", "embeddings", "scalars"))  # LR per group


def test_report_without_matplotlib_is_text_only(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    md = write_report([run_dir], tmp_path / "out")
    assert "matplotlib is not installed" in md.read_text() and not (tmp_path / "out" / "report.png").exists()
    assert "## Summary" in md.read_text()


def test_several_runs_overlaid_and_compared(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report.*", ".lock"))
    assert main(["report", str(run_dir), str(other), "--out", str(tmp_path / "cmp"), "--log"]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Comparison" in text and f"| {run_dir.name} |" in text and "| other |" in text
    assert (tmp_path / "cmp" / "report.png").is_file()
    with pytest.raises(TinyLMError, match="needs --out"):
        write_report([run_dir, other])


def figure_of(runs, tmp_path, monkeypatch):
    """The report figure of ``runs``, caught before it is saved."""
    from tinylm.analysis import report
    caught = []
    monkeypatch.setattr(report, "save_figure", lambda plt, fig, path, **kw: caught.append(fig) or True)
    write_report(runs, tmp_path / "fig")
    return {ax.get_title(): ax for ax in caught[0].axes}


def test_every_axis_of_the_report_figure_says_what_and_in_which_unit(run_dir, tmp_path, monkeypatch):
    axes = figure_of([run_dir], tmp_path, monkeypatch)
    assert len(axes) == 8  # no two panels share a title (there were two called "loss")
    for title, ax in axes.items():
        assert ax.get_xlabel() and ax.get_ylabel(), title
    assert axes["train (-) and val (o--) loss by step"].get_ylabel() == "loss (nats/token)"
    assert axes["train (-) and val (o--) loss by tokens seen"].get_xlabel() == "tokens seen"
    # AdamW's groups share one LR: each is still told apart, and the legend says which coincide
    lr = axes["learning rate per parameter group"]
    lines = [line for line in lr.get_lines() if not line.get_label().startswith("_")]
    labels = [line.get_label() for line in lines]
    assert labels == ["embeddings", "matrices (= embeddings)", "scalars (= embeddings)"]
    assert len({(line.get_linestyle(), line.get_marker(), line.get_linewidth()) for line in lines}) == 3


def other_tokenizer(run_dir, dest):
    """A copy of the run that says it used a 300-id BPE tokenizer, with bits per byte unlike its loss."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report.*", ".lock"))
    config = (dest / "config.toml").read_text()
    (dest / "config.toml").write_text(config.replace('tokenizer = "char"', 'tokenizer = "bpe"', 1))
    rows = [json.loads(line) for line in (dest / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "val_bpb" in r:
            r["val_loss"], r["val_bpb"] = r["val_loss"] + 2.0, r["val_bpb"] / 2  # worse per token, better per byte
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def test_runs_with_different_tokenizers_are_compared_by_bits_per_byte(run_dir, tmp_path, monkeypatch):
    bpe = other_tokenizer(run_dir, tmp_path / "bpe")
    text = write_report([run_dir, bpe], tmp_path / "cmp").read_text()
    assert "The runs' tokenizers differ" in text and "bits per byte are" in text
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert header.index("best val bits/byte") < header.index("best val loss (nats/token)")
    row = next(line for line in text.splitlines() if line.startswith("| bpe |"))
    bpb = min(r["val_bpb"] for r in read_metrics(bpe) if "val_bpb" in r)
    assert "| bpe (" in row and f"| {bpb:.4f} |" in row
    axes = figure_of([run_dir, bpe], tmp_path, monkeypatch)
    first = axes["val bits per byte: compares across tokenizers"]
    assert first.get_ylabel() == "bits/byte"
    assert "loss per token by tokens seen: not comparable across tokenizers" in axes
    same = write_report([run_dir, run_dir], tmp_path / "same").read_text()  # one tokenizer: losses lead
    assert "tokenizers differ" not in same and "| run | params (non-emb) | tokens | best val |" in same


def test_report_refuses_a_folder_that_is_not_a_run_and_a_foreign_report(run_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinylm", "report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"tinylm: error: {tmp_path} is not a tinylm run folder (no config.toml and "
                                f"metrics.jsonl); give the folder `tinylm train` wrote, e.g. runs/<name>")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    with pytest.raises(TinyLMError, match="not written by tinylm"):
        write_report([run_dir], out)
    assert (out / "report.md").read_text() == "my notes\n"


def test_metrics_of_a_resumed_run_keep_the_later_value(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                    [{"step": 10, "loss": 3.0}, {"step": 10, "loss": 2.0}]))
    assert health._series(read_metrics(tmp_path), "loss") == [(10, 2.0)]


BAD_LINES = ['[1, 2]', '{"loss": 3.0}', '{"step": "x", "loss": 1.0}', 'null', '{"step": 3, "loss": "abc"}',
             '{"step": 30, "val_loss": "x"}', '{"step": 1e400}', '{"step": 7, "loss": 2.', 'garbage']


def test_report_skips_lines_that_are_not_records_and_counts_them(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report.*", ".lock"))
    good = read_metrics(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("".join(line + "\n" for line in BAD_LINES))
    assert read_metrics(run) == good
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr()
    assert f"tinylm: {run / 'metrics.jsonl'}: skipped {len(BAD_LINES)} line(s) that are not records" in out.err
    assert "Traceback" not in out.err
    assert f"| metrics.jsonl lines skipped (not records: cut short by a crash, or damaged) | {len(BAD_LINES)} |" \
           in (run / "report.md").read_text()


def test_a_run_with_no_metrics_or_few_logs_is_not_called_healthy(run_dir, tmp_path, capsys):
    assert health.summary(health.verdict([], grad_clip=1.0)) == "too few logs"
    assert health.summary(health.verdict(steps([3.0, 2.9, 2.8]), grad_clip=1.0)) == "too few logs"
    assert health.summary(health.verdict(steps([2.0] * 7 + [1.99]), grad_clip=1.0)) == "plateau"  # 8: judged
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report.*", ".lock"))
    (run / "metrics.jsonl").write_text("")
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "**Verdict: too few logs.**" in text and "healthy" not in text
