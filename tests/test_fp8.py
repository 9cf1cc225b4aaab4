"""--train.precision fp8: refused in one line where it cannot run (no GPU, a GPU without FP8, no torchao), and,
where torchao can be imported, the layers it converts."""
import importlib.util

import pytest
import torch

from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model import fp8
from tinylm.model.gpt import GPT

from conftest import cli_args, tiny_config


def test_fp8_on_a_cpu_is_a_one_line_error_before_the_run_folder_opens(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.precision": "fp8", "train.max_steps": 2})
    assert main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "--train.precision fp8 needs a CUDA GPU" in err and "bf16" in err
    assert not cfg.run_dir.exists()


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of a chosen compute capability, as far as the fp8 check can tell."""
    def make(capability: tuple[int, int], name: str) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        return torch.device("cuda", 0)
    return make


def test_fp8_on_a_gpu_without_fp8_tensor_cores_names_the_gpu(fake_gpu):
    with pytest.raises(TinyLMError, match=r"NVIDIA A100-SXM4-80GB is 8\.0: use --train.precision bf16"):
        fp8.check_fp8(fake_gpu((8, 0), "NVIDIA A100-SXM4-80GB"))


def test_fp8_without_torchao_says_to_install_it(fake_gpu, monkeypatch):
    device = fake_gpu((9, 0), "NVIDIA H100 80GB HBM3")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(TinyLMError, match="torchao is not installed: pip install torchao"):
        fp8.check_fp8(device)


def test_fp8_on_an_fp8_gpu_with_torchao_passes_the_check(fake_gpu, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    fp8.check_fp8(fake_gpu((8, 9), "NVIDIA L4"))
    fp8.check_fp8(fake_gpu((9, 0), "NVIDIA H200"))


def test_the_layers_chosen_for_fp8_are_the_blocks_linears_only():
    model = GPT(ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False))
    chosen = [fqn for fqn, m in model.named_modules() if fp8.in_fp8(fqn, m)]
    assert chosen == [f"blocks.{i}.{name}" for i in range(2)
                      for name in ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")]
    odd = GPT(ModelConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=40))  # 40 % 16 != 0
    assert [fqn for fqn, m in odd.named_modules() if fp8.in_fp8(fqn, m)] == []


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (optional)")
def test_conversion_swaps_those_layers_and_keeps_the_checkpoint_layout():
    from torchao.float8.float8_linear import Float8Linear
    model = GPT(ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32))
    before = {k: v.shape for k, v in model.state_dict().items()}
    assert fp8.convert_to_fp8(model) == 8
    assert [n for n, m in model.named_modules() if isinstance(m, Float8Linear)] == \
        [f"blocks.{i}.{name}" for i in range(2) for name in ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")]
    assert not isinstance(model.lm_head, Float8Linear) and model.lm_head.weight is model.wte.weight
    assert {k: v.shape for k, v in model.state_dict().items()} == before


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (optional)")
def test_an_fp8_run_trains_resumes_and_evaluates_through_the_trainer(tmp_path, text_200k, monkeypatch, capsys):
    """The whole path on the CPU: torchao's emulated float8 (the same scaling, casts instead of FP8 matmuls) in
    place of the GPU check; the loss follows a bf16 run's, and the checkpoint evaluates without torchao's layers."""
    import torchao.float8
    from torchao.float8 import Float8LinearConfig

    from tinylm.training.tracking import logged_losses
    from tinylm.training.trainer import train
    real = torchao.float8.convert_to_float8_training
    monkeypatch.setattr(torchao.float8, "convert_to_float8_training",
                        lambda model, **kw: real(model, **kw, config=Float8LinearConfig(emulate=True)))
    monkeypatch.setattr("tinylm.training.runtime.check_fp8", lambda device: None)
    opts = {"train.max_steps": 20, "train.log_interval": 1, "train.eval_interval": 10}
    bf16 = tiny_config(tmp_path / "a", text_200k, **{**opts, "train.precision": "bf16"})
    train(bf16, log=lambda *a: None)
    run = tiny_config(tmp_path / "b", text_200k, **{**opts, "train.precision": "fp8", "train.max_steps": 10})
    train(run, log=lambda *a: None)
    run.train.max_steps = 20
    train(run, resume=True, log=lambda *a: None)
    a, b = logged_losses(bf16.run_dir), logged_losses(run.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert b[20] < b[1] - 0.5  # it learns
    # FP8 rounding of the block matmuls only: measured <= 1e-3 over the first 5 steps; later the two runs drift
    # apart at the tests' high LR as two bf16 runs do (conftest.EQUIVALENCE_STEPS), ~0.1 by step 12, then close in
    assert max(abs(a[s] - b[s]) for s in range(1, 6)) < 5e-3
    assert abs(a[20] - b[20]) < 0.1
    capsys.readouterr()
    assert main(["eval", str(run.run_dir)]) == 0


def test_a_non_finite_bundle_of_an_fp8_run_replays_on_a_cpu(tmp_path, text_200k, capsys):
    """The replay rebuilds a plain model (no FP8 layers): an fp8 run's bundle replays in bf16 anywhere."""
    import json

    from tinylm.training.trainer import Trainer
    cfg = tiny_config(tmp_path, text_200k, **{"train.nonfinite": "halt"})
    trainer = Trainer(cfg, log=lambda *a: None)
    with torch.no_grad():
        trainer.raw_model.blocks[0].mlp.up.weight[3, 5] = float("inf")
    with pytest.raises(TinyLMError, match="non-finite loss/gradient at step 1"):
        trainer.run()
    report = cfg.run_dir / "nonfinite_step_000001" / "report.json"
    doc = json.loads(report.read_text())
    doc["config"]["train"]["precision"] = "fp8"  # as an fp8 run on a GPU would have written it
    report.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["doctor", "--nan", str(report.parent), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "bf16" and out["first_nonfinite"]["module"] == "blocks.0.mlp.up"


def test_mfu_of_an_fp8_run_is_counted_against_the_bf16_peak_and_says_so(monkeypatch):
    from tinylm.training.accounting import describe_peak, gpu_peak_flops, matmul_precision
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    gpu = torch.device("cuda", 0)
    assert matmul_precision(gpu, "fp8") == "bf16"
    peak = gpu_peak_flops("NVIDIA H200", matmul_precision(gpu, "fp8"))
    assert peak == gpu_peak_flops("NVIDIA H200", "bf16")
    assert describe_peak(gpu, "fp8", peak) == "MFU against 989 TFLOP/s (NVIDIA H200, bf16 dense, datasheet)"
