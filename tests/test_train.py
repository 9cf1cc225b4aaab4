"""End to end: prepare -> train -> checkpoint -> resume -> sample, on a real text slice."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.training import checkpoint as ckpt
from tinylm.training.run_folder import LOCK
from tinylm.training.runtime import resolve_precision
from tinylm.training.tracking import logged_losses
from tinylm.training.trainer import Trainer, build_model, train

from conftest import EQUIVALENCE_BOUND, cli_args, max_loss_difference, tiny_config


def test_train_resume_sample(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 60})
    result = train(cfg, log=lambda *a: None)
    vocab = cfg.model.vocab_size
    assert result.step == 60
    assert result.val_loss < math.log(vocab) - 1.0, "the model did not learn"
    run = cfg.run_dir
    assert (run / "config.toml").is_file() and (run / "samples.md").read_text().count("## step") == 6
    last = ckpt.resolve_checkpoint(run)
    assert last.name == "step_000060"
    assert ckpt.read_meta(last)["config"]["model"]["vocab_size"] == vocab
    m = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["event"] == "initial_loss" and m[0]["step"] == 0  # the first line: the healthy-start check
    m = [r for r in m if "event" not in r]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "data_ms", "compute_ms"} <= set(m[0])

    # resume: continue the same run to 80 steps
    cfg.train.max_steps = 80
    resumed = train(cfg, resume=True, log=lambda *a: None)
    assert resumed.step == 80 and resumed.tokens_seen == 80 * 8 * 32

    assert main(["sample", str(run), "--max-new-tokens", "30", "--prompt", "the "]) == 0
    out = capsys.readouterr().out
    assert "--- sample 1 (step_000080) ---" in out and "the " in out
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 80 and info["parameters"] > 0


@pytest.mark.parametrize("optimizer", [
    {"optim.name": "adamw"},
    {"optim.name": "muon", "optim.embed_lr": 1e-2, "optim.momentum_warmup_steps": 30},
    {"optim.name": "lion", "optim.lr": 1e-3}], ids=["adamw", "muon", "lion"])
def test_resume_is_bit_exact(tmp_path, text_200k, optimizer):
    """Stopping at step 20 and resuming gives the same loss at every later step, bit for bit.

    (A constant schedule, because here the stop is a shorter max_steps, which would change a cosine.)
    """
    opts = {"train.eval_interval": 20, "train.log_interval": 1, "model.dropout": 0.1,
            "optim.schedule": "constant", "data.sampling": "random", **optimizer}
    full = tiny_config(tmp_path / "a", text_200k, **{"train.max_steps": 40, **opts})
    train(full, log=lambda *a: None)
    part = tiny_config(tmp_path / "b", text_200k, **{"train.max_steps": 20, **opts})
    train(part, log=lambda *a: None)
    part.train.max_steps = 40
    train(part, resume=True, log=lambda *a: None)
    a, b = logged_losses(full.run_dir), logged_losses(part.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    assert max(abs(a[s] - b[s]) for s in a) == 0.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_accumulation_matches_full_batch(tmp_path, text_200k, precision):
    opts = {"train.max_steps": 10, "train.log_interval": 1, "train.precision": precision}
    one = tiny_config(tmp_path / "a", text_200k, **opts)
    acc = tiny_config(tmp_path / "b", text_200k, **opts, **{"train.micro_batch_size": 2})
    train(one, log=lambda *a: None)
    train(acc, log=lambda *a: None)
    a, b = logged_losses(one.run_dir), logged_losses(acc.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert max_loss_difference(a, b, precision) < EQUIVALENCE_BOUND[precision]


def test_existing_run_folder_is_refused(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0})
    train(cfg, log=lambda *a: None)
    with pytest.raises(TinyLMError, match="already exists; pass --resume"):
        train(cfg, log=lambda *a: None)


def test_resume_with_other_architecture_names_the_field(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0})
    train(cfg, log=lambda *a: None)
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "model.n_layer": 3})
    with pytest.raises(TinyLMError, match=r"--model.n_layer: checkpoint 2, this run 3"):
        train(cfg, resume=True, log=lambda *a: None)
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "optim.name": "lion"})
    with pytest.raises(TinyLMError, match=r"--optim.name: checkpoint 'adamw', this run 'lion'"):
        train(cfg, resume=True, log=lambda *a: None)


def test_resume_takes_hyperparameters_from_the_config(tmp_path, text_200k):
    """Resuming with another peak LR uses it; the optimizer's moments still come from the checkpoint."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 3, "train.eval_interval": 0})
    train(cfg, log=lambda *a: None)
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 6, "optim.lr": 2e-3})
    trainer = Trainer(cfg, resume=True, log=lambda *a: None)
    assert trainer.state.step == 3
    assert {g["peak_lr"] for g in trainer.optimizer.param_groups} == {2e-3}
    assert all(s["step"] == 3 for s in trainer.optimizer.state_dict()["state"].values())


def test_fp16_on_cpu_is_refused():
    with pytest.raises(TinyLMError, match="fp16 needs CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_auto_precision_follows_the_cpu_detection(monkeypatch):
    """auto = bf16 only where the CPU has native bf16; TINYLM_CPU_BF16 forces the detection."""
    monkeypatch.setenv("TINYLM_CPU_BF16", "1")
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setenv("TINYLM_CPU_BF16", "0")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setenv("TINYLM_CPU_BF16", "yes")
    with pytest.raises(TinyLMError, match="TINYLM_CPU_BF16='yes': use 1"):
        resolve_precision("auto", torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", ["1", "0"])
def test_auto_precision_trains_with_either_detection(tmp_path, text_200k, native_bf16):
    """A whole `tinylm train` under auto, as on a CPU with (1) and without (0) native bf16."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 6, "train.eval_interval": 3,
                                              "train.precision": "auto"})
    proc = subprocess.run([sys.executable, "-m", "tinylm", "train", *cli_args(cfg)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TINYLM_CPU_BF16": native_bf16})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"precision {'bf16' if native_bf16 == '1' else 'fp32'}," in proc.stdout
    losses = logged_losses(cfg.run_dir)
    assert sorted(losses) == [5, 6] and all(math.isfinite(v) for v in losses.values())


def test_bf16_autocast_trains(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 20, "train.precision": "bf16"})
    result = train(cfg, log=lambda *a: None)
    assert math.isfinite(result.val_loss) and result.val_loss < math.log(cfg.model.vocab_size)


def test_cli_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["train", "--model.n_layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key --model.n_layers" in err and "Traceback" not in err
    assert main(["train", "--data.corpus", str(tmp_path / "missing.txt"), "--data.dir", str(tmp_path / "d"),
                 "--run.dir", str(tmp_path / "r"), "--train.device", "cpu"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _tree(root):
    """Every file under root with its bytes, to show a refusal changed nothing (but the run lock's
    line naming its latest holder)."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK}


def test_unencodable_sample_prompt_is_refused_before_step_1(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "train.eval_interval": 0})
    bad = ["--sample.prompt", "ROMEO Ω→"]  # a character vocabulary of English text has neither
    assert main(["train", *cli_args(cfg), *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--sample.prompt 'ROMEO Ω→' has characters ['Ω', '→']" in err and "--data.tokenizer bpe" in err
    assert not cfg.run_dir.exists()  # refused before step 1, and before anything was left behind
    # a run trained with a good prompt, resumed with the bad one: refused the same way, nothing touched
    assert main(["train", *cli_args(cfg)]) == 0
    capsys.readouterr()
    before = _tree(cfg.run_dir)
    assert main(["train", *cli_args(cfg), "--train.max_steps", "8", "--resume", *bad]) == 2
    assert "--sample.prompt 'ROMEO Ω→' has characters" in capsys.readouterr().err
    assert _tree(cfg.run_dir) == before


def test_compile_without_a_cpu_compiler_is_refused_before_step_1(tmp_path, text_200k, capsys):
    from torch._inductor import config as inductor_config
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "train.compile": True})
    with inductor_config.patch({"cpp.cxx": (str(tmp_path / "no-such-g++"),)}):  # inductor's compiler search list
        assert main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--train.compile true needs a C++ compiler" in err and "--train.compile false" in err
    assert not cfg.run_dir.exists()  # refused before the run folder, not at the first step


def test_every_process_initializes_alike_and_draws_its_own_dropout(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"model.vocab_size": 50, "model.dropout": 0.5})
    masks, weights = [], []
    for rank in (0, 1, 0):
        model = build_model(cfg, rank, torch.device("cpu"))
        weights.append(model.state_dict())
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    for a, b in zip(weights[0].values(), weights[1].values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(masks[0], masks[1])  # rank 1 drops other units than rank 0
    assert torch.equal(masks[0], masks[2])  # and each rank's stream is reproducible


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 100000, "train.eval_interval": 0})
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "train", *cli_args(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (cfg.run_dir / "metrics.jsonl").exists() or not logged_losses(cfg.run_dir):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "stopped by signal" in out and "Traceback" not in out
    last = ckpt.resolve_checkpoint(cfg.run_dir)
    assert ckpt.read_meta(last)["step"] >= 5
