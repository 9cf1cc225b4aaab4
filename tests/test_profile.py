"""tinylm profile: time per labelled component of the real model and loop, FLOP shares, files."""
import json
import math

import pytest
import torch

from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.diagnostics.profiling import FORWARD, profile
from tinylm.model import gpt as model_module
from tinylm.model.gpt import GPT

from conftest import cli_args, tiny_config


def test_profile_times_every_component(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.threads": 1})
    r = profile(cfg, steps=2, out=tmp_path / "prof", log=lambda *a: None)
    rows = {row["label"]: row for row in r["rows"]}
    assert set(FORWARD) | {"backward", "optimizer", "data", "forward-rest", "other"} == set(rows)
    for key in ("attn.qkv", "attn.kernel", "attn.proj", "mlp", "norm", "head+loss", "backward", "optimizer"):
        assert rows[key]["ms_per_step"] > 0, key
    assert sum(row["share_of_step"] for row in r["rows"]) == pytest.approx(1.0, abs=0.01)
    assert sum(row["flop_share"] for row in r["rows"] if row["flop_share"] is not None) == pytest.approx(1.0)
    assert r["peak_memory_mb"] > 0
    saved = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert saved["rows"] == r["rows"]
    assert "| attention: kernel |" in (tmp_path / "prof" / "profile.md").read_text()
    assert not cfg.run_dir.exists()  # a scratch folder, not the run's
    assert not model_module._labels  # the labels are off again


def test_cli_profile(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.threads": 1})
    assert main(["profile", *cli_args(cfg), "--steps", "1", "--out", str(tmp_path / "p")]) == 0
    assert "| MLP |" in capsys.readouterr().out
    assert (tmp_path / "p" / "profile.md").is_file()
    assert main(["profile", *cli_args(cfg), "--steps", "0"]) == 2
    assert "--steps >= 1" in capsys.readouterr().err


def test_labels_record_only_while_profiling():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=16))
    x = torch.randint(0, 50, (2, 16))
    with torch.profiler.profile() as prof:
        plain = model(x, x)[1]
    assert "mlp" not in {e.key for e in prof.key_averages()}
    with model_module.profile_labels(), torch.profiler.profile() as prof:
        labelled = model(x, x)[1]
    assert {"mlp", "attn.kernel", "embedding"} <= {e.key for e in prof.key_averages()}
    assert torch.equal(plain, labelled)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_flops_by_component_add_up_to_flops_per_token(mlp):
    model = GPT(ModelConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=256, mlp=mlp))
    parts = model.flops_by_component()
    norm_weights = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert sum(parts.values()) == model.flops_per_token() - 6 * norm_weights
    assert parts["attn.kernel"] == 12 * 4 * 128 * 256 and parts["head+loss"] == 6 * 65 * 128
    assert math.isclose(parts["mlp"] / parts["attn.proj"], 8.0, rel_tol=0.01)  # 2 x 4C^2 vs C^2 (swiglu: equal)


def test_cuda_device_time_goes_to_the_range_open_when_each_kernel_was_launched():
    """Synthetic CUDA profiler events (µs): kernels queued inside the MLP's range count for the MLP, whatever
    the device ran meanwhile; backward's kernels, launched by autograd's thread while the main thread waits
    in "backward", count for backward (the H200's table showed backward 0.00 ms reading host ranges)."""
    from types import SimpleNamespace as E

    from torch.autograd import DeviceType

    from tinylm.diagnostics.profiling import _device_times, _label_times

    def ev(name, start, end, *kernel_us, device=DeviceType.CPU):
        return E(name=name, time_range=E(start=start, end=end), kernels=[E(duration=d) for d in kernel_us],
                 device_type=device)

    events = [ev("forward", 0, 100), ev("mlp", 10, 40), ev("attn.kernel", 40, 60), ev("backward", 100, 300),
              ev("cudaLaunchKernel", 20, 21, 500), ev("cudaLaunchKernel", 45, 46, 300),  # mlp, attention
              ev("cudaLaunchKernel", 70, 71, 50),  # forward, in none of its parts
              ev("cudaLaunchKernel", 150, 151, 900, 100),  # autograd's thread: no range of its own
              ev("cudaLaunchKernel", 310, 311, 25),  # after every range
              ev("head+loss", 140, 400, device=DeviceType.CUDA)]  # a range's copy on the GPU's timeline: not a range
    assert _device_times(E(events=lambda: events)) == pytest.approx(
        {"mlp": 500e-6, "attn.kernel": 300e-6, "forward": 50e-6, "backward": 1000e-6, "other": 25e-6})
    # the host's time per range: host-side ranges only (on the H200 the per-name averages said 0.00 ms)
    assert _label_times(E(events=lambda: events)) == pytest.approx(
        {"forward": 100e-6, "mlp": 30e-6, "attn.kernel": 20e-6, "backward": 200e-6})


def test_the_cuda_table_shows_gpu_and_host_time_and_idle_time():
    """On a GPU the table's time column is device time, beside the host's, and the GPU's idle time is a row:
    a launch-bound model shows as one (here: 40 ms of wall per step, 25 of them with kernels running)."""
    from tinylm.diagnostics.profiling import component_rows, format_table
    flops = {k: 1.0 for k in FORWARD}
    on_gpu = {"embedding": 0.001, "norm": 0.001, "attn.qkv": 0.002, "attn.kernel": 0.002, "attn.proj": 0.001,
              "mlp": 0.004, "head+loss": 0.002, "forward": 0.001, "backward": 0.008, "optimizer": 0.002,
              "other": 0.001}
    host = {"forward": 0.020, "mlp": 0.005, "norm": 0.004, "backward": 0.012, "optimizer": 0.004, "data": 0.001}
    rows = {row["label"]: row for row in component_rows(host, on_gpu, wall=0.080, steps=2, flops=flops)}
    assert rows["mlp"]["ms_per_step"] == pytest.approx(2.0) and rows["mlp"]["host_ms_per_step"] == pytest.approx(2.5)
    assert rows["backward"]["ms_per_step"] == pytest.approx(4.0)
    assert rows["forward-rest"]["ms_per_step"] == pytest.approx(0.5)  # launched in forward, in none of its parts
    assert rows["forward-rest"]["host_ms_per_step"] == pytest.approx(5.5)  # 20 - 5 - 4 ms, over 2 steps
    assert rows["mlp"]["share_of_forward"] == pytest.approx(4 / 14)
    assert rows["idle"]["ms_per_step"] == pytest.approx(40 - 12.5)
    assert sum(row["share_of_step"] for row in rows.values()) == pytest.approx(1.0)
    table = format_table({"rows": list(rows.values()), "model": "m", "batch": "8 x 1", "device": "cuda:0",
                          "precision": "bf16", "threads": 1, "steps": 2, "step_ms": 40.0, "tokens_per_step": 8,
                          "peak_memory_mb": 1.0})
    assert "| component | GPU ms / step |" in table and "host ms / step |" in table
    assert "| GPU idle (waiting for launches: host-bound where large) | 27.50 | 68.8% |" in table
