"""What a machine with a GPU does differently, checked on the CPU: the process count against the GPU count,
the peak FLOP/s that MFU divides by (TF32 included), the device's recorded name."""
import pytest
import torch

from tinylm.cli import main
from tinylm.training import accounting, runtime

from conftest import cli_args, tiny_config


def test_device_choice_more_processes_than_gpus_is_one_line_before_cuda_is_touched(
        tmp_path, text_200k, monkeypatch, capsys):
    """`torchrun --nproc_per_node 2` on a one-GPU machine: every process refuses, naming both fixes, before
    set_device (faked: this CPU reports one GPU; any real CUDA call would fail here and show as a traceback)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: pytest.fail("set_device was reached"))
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        cfg = tiny_config(tmp_path, text_200k, **{"train.device": "auto"})
        assert main(["train", *cli_args(cfg)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert "2 processes on this machine but 1 GPU(s)" in err
        assert "--nproc_per_node 1" in err and "--train.device cpu" in err
    assert not cfg.run_dir.exists()


def test_processes_up_to_the_gpu_count_pass_the_check():
    runtime.check_gpu_count(2, 2)
    runtime.check_gpu_count(1, 8)
    with pytest.raises(runtime.TinyLMError, match="3 processes on this machine but 2 GPU"):
        runtime.check_gpu_count(3, 2)


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "tf32", 495e12), ("NVIDIA H200", "tf32", 495e12),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
    ("NVIDIA H100 PCIe", "tf32", 378e12), ("NVIDIA H200", "fp16", 989e12), ("NVIDIA H200", "fp32", 67e12),
    ("Tesla V100-SXM2-16GB", "tf32", 15.7e12),  # no TF32 on Volta: fp32 matmuls run at the fp32 figure
])
def test_the_peak_table_has_a_tf32_column(name, precision, peak):
    assert accounting.gpu_peak_flops(name, precision) == peak


@pytest.fixture
def fake_h200(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    before = torch.get_float32_matmul_precision()
    yield torch.device("cuda", 0)
    torch.set_float32_matmul_precision(before)


def test_fp32_on_cuda_divides_by_the_tf32_peak_while_tf32_is_on(fake_h200):
    """The H200 logged MFU 172% in fp32: TF32 tensor cores ran the matmuls while MFU divided by plain fp32's peak."""
    torch.set_float32_matmul_precision("high")  # what runtime.enable_tf32 sets on CUDA
    assert accounting.matmul_precision(fake_h200, "fp32") == "tf32"
    assert accounting.peak_flops(fake_h200, "fp32") == 495e12
    assert accounting.peak_flops(fake_h200, "bf16") == accounting.peak_flops(fake_h200, "fp16") == 989e12
    assert "495 TFLOP/s (NVIDIA H200, tf32 dense, datasheet)" in accounting.describe_peak(
        fake_h200, "fp32", 495e12)
    torch.set_float32_matmul_precision("highest")  # TF32 off: plain fp32
    assert accounting.matmul_precision(fake_h200, "fp32") == "fp32"
    assert accounting.peak_flops(fake_h200, "fp32") == 67e12
    # the CPU never has TF32, whatever the process-wide setting says
    torch.set_float32_matmul_precision("high")
    assert accounting.matmul_precision(torch.device("cpu"), "fp32") == "fp32"


def test_a_run_says_which_peak_its_mfu_uses(tmp_path, text_200k, monkeypatch):
    from tinylm.training.trainer import train
    monkeypatch.setattr(accounting, "cpu_peak_flops", lambda dtype: 123e9)
    lines = []
    train(tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0}), log=lines.append)
    setup = next(line for line in lines if line.startswith("model:"))
    assert "MFU against 123 GFLOP/s (this CPU, fp32 matmul probe, measured)" in setup


def test_the_recorded_cuda_device_always_has_its_index(monkeypatch):
    """One format for meta["device"]: ``cuda:<index> (<name>)``, whether the run asked for cuda, cuda:0 or auto."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    for asked in ("cuda", "cuda:0", "auto"):
        device = runtime.resolve_device(asked)
        assert device == torch.device("cuda", 0)
        assert runtime.device_name(device) == "cuda:0 (NVIDIA H200)"
    assert runtime.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert runtime.device_name(torch.device("cpu")) == "cpu"
