"""tinylm profile: time per labelled component of the real model and loop, FLOP shares, files."""
import json
import math

import pytest
import torch

from tinylm import model as model_module
from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.model import GPT
from tinylm.profiling import FORWARD, profile

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
