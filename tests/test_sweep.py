"""`tinylm sweep`: grids, the runner (skip, resume, failures), statistics against scipy, the report."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from tinylm.analysis import stats
from tinylm.analysis.sweep import DONE, Runner, read_grid, run_sweep
from tinylm.cli import main
from tinylm.config import to_toml
from tinylm.errors import TinyLMError

from conftest import cli_args, tiny_config


def write(path, text: str):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- grids

def test_product_grid_with_named_variants(tmp_path):
    grid = write(tmp_path / "g.toml", '[axes]\n"optim.lr" = [1e-3, 2e-3]\n[axes.mlp]\n'
                                      'gelu = { "model.mlp" = "gelu" }\n'
                                      'swiglu = { "model.mlp" = "swiglu", "model.mlp_ratio" = 3.0 }\n')
    points = read_grid(grid)
    assert [p.name for p in points] == ["lr=0.001,mlp=gelu", "lr=0.001,mlp=swiglu", "lr=0.002,mlp=gelu",
                                        "lr=0.002,mlp=swiglu"]
    assert points[3].overrides == {"optim.lr": 2e-3, "model.mlp": "swiglu", "model.mlp_ratio": 3.0}


def test_one_at_a_time_changes_one_axis_from_the_baseline():
    points = read_grid("configs/ablations/architecture.toml")
    assert [p.name for p in points] == ["baseline", "norm=rmsnorm", "pos=rope", "mlp=swiglu", "mlp=relu2",
                                        "qk_norm=true", "tie_embeddings=false"]
    base = points[0].overrides
    for p in points[1:]:  # exactly one key differs from the baseline
        assert sum(p.overrides[k] != v for k, v in base.items()) == 1


def test_bad_grids_are_refused(tmp_path):
    with pytest.raises(TinyLMError, match="needs an \\[axes\\] table"):
        read_grid(write(tmp_path / "a.toml", 'mode = "random"\n[axes]\n"optim.lr" = [1]\n'))
    with pytest.raises(TinyLMError, match="non-empty list"):
        read_grid(write(tmp_path / "b.toml", '[axes]\n"optim.lr" = []\n'))


# ----------------------------------------------------------------------------- statistics

def test_welch_agrees_with_scipy():
    a, b = [1.52, 1.49, 1.55], [1.60, 1.58, 1.66, 1.61]
    c = stats.welch(a, b)
    direct = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = direct.confidence_interval(0.95)
    assert c.p == pytest.approx(direct.pvalue, rel=1e-12)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert c.diff == pytest.approx(sum(a) / 3 - sum(b) / 4)
    assert c.significant == (direct.pvalue < 0.05)
    assert stats.welch([1.0], b) is None  # one seed: no test


# ----------------------------------------------------------------------------- the runner

@pytest.fixture
def base(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "train.eval_interval": 2,
                                              "train.log_interval": 2, "train.eval_tokens": 256})
    return write(tmp_path / "base.toml", to_toml(cfg))


def in_process(calls: list, fail: str = ""):
    """A stand-in for the training process: `tinylm train` in this process (fast), or a failure for the
    run whose folder contains ``fail``."""
    def launch(cmd, env):
        calls.append(cmd)
        if fail and fail in cmd[cmd.index("--run.dir") + 1] + "/" + cmd[cmd.index("--run.name") + 1]:
            return subprocess.CompletedProcess(cmd, 2, "", "Traceback...\ntinylm: error: out of memory\n")
        return subprocess.CompletedProcess(cmd, main(cmd[cmd.index("train"):]), "", "")
    return launch


def test_a_failed_run_does_not_stop_the_sweep_and_a_rerun_skips_finished_runs(base, tmp_path, monkeypatch):
    grid = write(tmp_path / "grid.toml", '[axes]\n"optim.lr" = [1e-2, 3e-3]\n')
    out = tmp_path / "sweep"
    calls: list = []
    monkeypatch.setattr(Runner, "launch", staticmethod(in_process(calls, fail="lr=0.003/seed1")))
    sweep = run_sweep(base, grid, out, seeds=2, jobs=1, log=lambda *a: None)
    assert len(calls) == 4
    status = {(r.point, r.seed): r.status for r in sweep.results}
    assert status == {("lr=0.01", 0): "ok", ("lr=0.01", 1): "ok", ("lr=0.003", 0): "ok", ("lr=0.003", 1): "failed"}
    failed = next(r for r in sweep.results if r.status == "failed")
    assert failed.error == "tinylm: error: out of memory"
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "out of memory" in report
    assert "| lr=0.003 | 1 |" in report and "needs ≥ 2 seeds" in report
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and json.loads((out / "results.json").read_text())[0]["point"] == "lr=0.01"
    # the seeds differ: train.seed + 0 and + 1
    seeds = [c[c.index("--train.seed") + 1] for c in calls]
    assert seeds[0] != seeds[1]

    # again: the three finished runs are skipped, the failed one runs (its folder is new: no --resume)
    calls.clear()
    monkeypatch.setattr(Runner, "launch", staticmethod(in_process(calls)))
    sweep = run_sweep(base, grid, out, seeds=2, jobs=1, log=lambda *a: None)
    assert len(calls) == 1 and "--resume" not in calls[0]
    assert all(r.status == "ok" for r in sweep.results)
    assert "| lr=0.003 | 2 |" in (out / "report.md").read_text()


def test_an_unfinished_run_is_resumed(base, tmp_path, monkeypatch):
    grid = write(tmp_path / "grid.toml", '[axes]\n"optim.lr" = [1e-2]\n')
    out = tmp_path / "sweep"
    calls: list = []
    monkeypatch.setattr(Runner, "launch", staticmethod(in_process(calls)))
    run_sweep(base, grid, out, seeds=1, log=lambda *a: None)
    run = out / "runs" / "lr=0.01" / "seed0"
    first = json.loads((run / DONE).read_text())
    (run / DONE).unlink()  # as if the sweep had stopped before the run finished
    calls.clear()
    sweep = run_sweep(base, grid, out, seeds=1, log=lambda *a: None)
    assert len(calls) == 1 and "--resume" in calls[0]
    assert sweep.results[0].final_val_loss == pytest.approx(first["final_val_loss"])


def test_a_grid_compares_bits_per_byte_when_its_metric_says_so(base, tmp_path, monkeypatch):
    """metric = "val_bpb": the report's means and differences are of each run's last val_bpb (points with different
    tokenizers compare only so); a metric it does not know is refused."""
    from tinylm.training.tracking import read_metrics
    grid = write(tmp_path / "grid.toml", 'metric = "val_bpb"\n[axes]\n"optim.lr" = [1e-2, 3e-3]\n')
    out = tmp_path / "sweep"
    monkeypatch.setattr(Runner, "launch", staticmethod(in_process([])))
    sweep = run_sweep(base, grid, out, seeds=2, jobs=1, log=lambda *a: None)
    for r in sweep.results:
        bpbs = [m["val_bpb"] for m in read_metrics(r.run_dir) if m.get("val_bpb") is not None]
        assert r.final_val_bpb == bpbs[-1] and r.final_val_bpb != r.final_val_loss
    report = (out / "report.md").read_text()
    assert "| point | seeds | final val bits per byte (mean ± std) |" in report
    mean = stats.mean_std(sweep.by_point("final_val_bpb")["lr=0.003"])[0]
    assert f"| lr=0.003 | 2 | {mean:.4f} ± " in report
    with pytest.raises(TinyLMError, match="metric = 'bpb' is not one of val_loss, val_bpb"):
        read_grid(write(tmp_path / "bad.toml", 'metric = "bpb"\n[axes]\n"optim.lr" = [1]\n'))


@pytest.mark.slow
def test_cli_sweep_runs_real_processes_in_parallel(tmp_path, text_200k):
    """2 points x 2 seeds as real `tinylm train` processes, 2 at a time."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "train.eval_interval": 0,
                                              "train.log_interval": 2, "train.eval_tokens": 256})
    grid = write(tmp_path / "grid.toml", 'mode = "one_at_a_time"\n[axes]\n"model.norm" = ["layernorm", "rmsnorm"]\n')
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "tinylm", "sweep", "--grid", str(grid), "--seeds", "2", "--jobs", "2",
                        "--out", str(out), *cli_args(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(row["point"], row["status"]) for row in rows] == [("baseline", "ok")] * 2 + [("norm=rmsnorm", "ok")] * 2
    report = (out / "report.md").read_text()
    assert "| baseline | 2 |" in report and "| norm=rmsnorm | 2 |" in report
    assert (out / "sweep.png").is_file()
