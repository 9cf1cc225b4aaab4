"""The benchmark scripts import, and importing them runs nothing; their shared helpers (benchmarks/common.py)."""
from __future__ import annotations

import importlib
import math
import os
import sys
from functools import partial
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = {"common", "peer_gpt"}  # shared helpers and bench_gpu's plain PyTorch peer: imported, not run
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in MODULES)


@pytest.fixture
def benchmarks(monkeypatch):
    """Imports from benchmarks/ as ``python benchmarks/<script>.py`` sees them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_every_script_is_found():
    assert {"bench_bpe", "bench_generate", "bench_loop", "bench_shakespeare", "bench_train",
            "exp_optim"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_importing_a_script_runs_nothing(benchmarks, script):
    before = dict(os.environ)
    module = benchmarks(script)
    assert callable(module.main)
    assert dict(os.environ) == before  # the shared-data defaults are set by main, not by the import


def test_machine_description(benchmarks):
    common = benchmarks("common")
    info = common.machine("pytest", "no_such_package")
    assert info["cores"] == os.cpu_count()
    assert info["packages"] == {"pytest": pytest.__version__, "no_such_package": "not installed"}
    line = common.machine_line(info)
    assert info["cpu"] in line and f"pytest {pytest.__version__}" in line and "\n" not in line


def test_timers_and_cpu_sampling(benchmarks):
    common = benchmarks("common")
    timing = common.time_call(lambda: 42)
    assert timing.result == 42 and timing.wall >= 0 and timing.cpu >= 0
    meter = common.Meter()
    assert [meter(partial(abs, -i)) for i in range(3)] == [0, 1, 2]
    assert len(meter.wall) == len(meter.cpu) == 3 and meter.median == sorted(meter.wall)[1]
    assert common.median_min([3.0, 1.0, 2.0]) == "2.00 s [1.00]"
    assert common.median_min([2.0]) == "2.00 s"
    if sys.platform == "linux":
        assert 0 <= common.cpu_idle_pct(0.01) <= 100
        assert 0 <= common.busy_elsewhere(0.01) <= 1
    assert math.isnan(common.wait_for_quiet(0))  # 0: don't wait, don't measure


def test_bench_gpu_without_cuda_says_so_in_one_line(benchmarks, monkeypatch):
    bench_gpu = benchmarks("bench_gpu")
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        bench_gpu.main(["--steps", "1"])
    message = str(stop.value.code)
    assert "no CUDA device" in message and "make bench-gpu" in message and "\n" not in message


def test_bench_gpu_smoke_runs_every_contender_on_the_cpu(benchmarks, tmp_path, capsys):
    """`--smoke`: the whole GPU benchmark at a tiny shape on the CPU: the first GPU session must not find its bugs."""
    pytest.importorskip("transformers")
    bench_gpu = benchmarks("bench_gpu")
    out = tmp_path / "smoke.json"
    assert bench_gpu.main(["--smoke", "--steps", "2", "--warmup", "1", "--batch", "2", "--contenders", "eager,hf",
                           "--json", str(out)]) == 0
    import json
    report = json.loads(out.read_text())
    assert report["smoke"] and [r["contender"] for r in report["results"]] == ["tinylm eager fp32", "HF GPT-2 fp32"]
    for r in report["results"]:
        assert r["tokens_per_s"] > 0 and 0 < r["final_loss"] < 10 and r["params"] > 0
    assert report["results"][0]["params"] == report["results"][1]["params"]  # the same model, both sides
    assert "MFU against" in report["peak"]
    assert "| tinylm eager fp32 |" in capsys.readouterr().out


def test_bench_gpu_variants_are_named_overrides(benchmarks):
    bench_gpu = benchmarks("bench_gpu")
    assert bench_gpu.parse_variant("pad=model.n_layer:3,train.threads:1") == (
        "pad", {"model.n_layer": "3", "train.threads": "1"})
    for bad in ("pad", "=model.n_layer:3", "pad=model.n_layer"):
        with pytest.raises(ValueError, match="NAME=KEY:VALUE"):
            bench_gpu.parse_variant(bad)


def test_bench_gpu_goals_compare_tinylm_with_the_plain_peer(benchmarks):
    bench_gpu = benchmarks("bench_gpu")
    R = bench_gpu.Result
    results = [R("tinylm eager bf16", "", 1, 1.0, 50.0, 3e5, 0.31, 10.0, 0.5, 5.0),
               R("tinylm compiled bf16", "", 1, 20.0, 30.0, 5e5, 0.45, 9.0, 0.5, 5.0),
               R("plain PyTorch GPT compiled bf16", "", 1, 20.0, 32.0, 4.8e5, 0.43, 8.5, 0.1, 5.0)]
    met = {g["goal"]: g["met"] for g in bench_gpu.goals(results, "bf16")}
    assert met == {"tinylm compiled MFU >= 50%": False, "tinylm compiled data wait < 1% of the step": True,
                   "tinylm eager MFU >= 30%": True, "tinylm compiled ahead of the plain PyTorch GPT (tokens/s)": True,
                   "tinylm compiled peak memory <= the plain PyTorch GPT's": False}
    assert bench_gpu.goals(results, "fp32") == []  # the goals are bf16's


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_stage_on_the_cpu(benchmarks, tmp_path):
    """`make gpu-check --smoke`: every stage on the CPU at tiny shapes, one report and one JSON, so the first minutes
    of a GPU are not spent on a crash in the script (the figures mean nothing here)."""
    pytest.importorskip("transformers")
    gpu_check = benchmarks("gpu_check")
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    import json
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["bench16", "cuda-tests", "precision", "profile", "preset", "fp8-curve", "suite", "bench32"]
    assert all("error" not in s for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    assert stages["cuda-tests"]["figures"]["counts"].get("skipped", 0) > 0  # no GPU: skipped, with the reason
    assert stages["suite"]["figures"]["counts"]["passed"] > 0 and stages["suite"]["figures"]["failed"] == []
    assert stages["profile"]["figures"]["step_ms"] > 0 and stages["preset"]["figures"]["steps"] > 0
    assert set(stages["fp8-curve"]["figures"]["mean_loss_last"]) == {"bf16", "fp32"}  # fp32 stands in for fp8
    md = (tmp_path / "gpu-check.md").read_text()
    assert "## Goals" in md and "| tinylm eager fp32 |" in md and "smoke test on the CPU" in md


def test_gpu_check_reads_pytest_summaries_and_refuses_unknown_stages(benchmarks, capsys):
    gpu_check = benchmarks("gpu_check")
    assert gpu_check.pytest_counts("..F\n= 2 failed, 598 passed, 5 skipped in 30.1s =") == {
        "failed": 2, "passed": 598, "skipped": 5}
    assert gpu_check.pytest_counts("1 error in 0.5s") == {"error": 1}
    assert gpu_check.pytest_counts("no summary") == {}
    with pytest.raises(SystemExit):
        gpu_check.main(["--smoke", "--only", "bench99"])
    assert "unknown stage(s) bench99" in capsys.readouterr().err
