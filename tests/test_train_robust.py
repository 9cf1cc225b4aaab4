"""Production-loop behaviour: checkpoint policies, non-finite guard, time budget, precision,
activation checkpointing, accounting, tracking sinks, export, and crash safety under SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.diagnostics.crash import crash_harness
from tinylm.errors import TinyLMError
from tinylm.model.gpt import GPT
from tinylm.training import checkpoint as ckpt
from tinylm.training import runtime
from tinylm.training.runtime import autocast_context
from tinylm.training.tracking import logged_losses
from tinylm.training.trainer import Trainer, train

from conftest import cli_args, one_line_error, tiny_config


def quiet(*a, **k):
    pass


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_save_interval_and_keep_last(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 20, "train.eval_interval": 0,
                                              "train.save_interval": 4, "train.keep_last": 2})
    train(cfg, log=quiet)
    root = cfg.run_dir / "checkpoints"
    steps = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert steps == ["step_000016", "step_000020"]
    assert os.readlink(root / "last") == "step_000020" and os.readlink(root / "best") == "step_000020"
    assert ckpt.read_meta(root / "step_000020")["val_loss"] is not None
    assert ckpt.read_meta(root / "step_000016")["val_loss"] is None  # saved between evaluations


def _poison_at(trainer: Trainer, steps: set[int]):
    """Make the model's output NaN while the trainer computes the given (1-based) steps."""
    def hook(module, args, output):
        if trainer.state.step + 1 in steps and module.training:
            return output[0] * float("nan"), output[1] * float("nan")
        return output
    trainer.raw_model.register_forward_hook(hook)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_nonfinite_skip_drops_the_update_and_continues(tmp_path, text_200k, optimizer):
    # log_interval 4: the flags are read at steps 4, 8, 12 only, yet step 5 is the one skipped and logged
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 12, "train.log_interval": 4,
                                              "optim.name": optimizer, "optim.embed_lr": 3e-3})
    trainer = Trainer(cfg, log=quiet)
    # fused AdamW skips on the device (no host read per step); Muon reads the flag on the host
    assert trainer.skip_on_device == (optimizer == "adamw")
    settles = []
    settle = trainer._settle
    trainer._settle = lambda: (settles.append(trainer.state.step), settle())[1]
    _poison_at(trainer, {5})
    weights = {}  # (1-based) step -> the weights as that step starts

    def snapshot(module, args):
        if module.training and trainer.state.step + 1 in (5, 6) and trainer.state.step + 1 not in weights:
            weights[trainer.state.step + 1] = [p.detach().clone() for p in trainer.raw_model.parameters()]
    trainer.raw_model.register_forward_pre_hook(snapshot)
    result = trainer.run()
    assert result.step == 12
    events = [r for r in records(cfg.run_dir) if r.get("event") == "nonfinite_skip"]
    assert [e["step"] for e in events] == [5]
    assert settles == [4, 8, 12]  # the host waited for the device at log steps only
    # the poisoned step changed nothing: the weights after step 5 are those before it
    assert all(torch.equal(a, b) for a, b in zip(weights[5], weights[6], strict=True))
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_nonfinite_skip_stops_after_max_skips(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 30, "train.max_skips": 3})
    trainer = Trainer(cfg, log=quiet)
    _poison_at(trainer, set(range(6, 31)))
    with pytest.raises(TinyLMError, match="3 non-finite steps in a row"):
        trainer.run()


def test_nonfinite_halt_writes_a_diagnostic_bundle(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 30, "train.nonfinite": "halt"})
    trainer = Trainer(cfg, log=quiet)
    _poison_at(trainer, {3})
    with pytest.raises(TinyLMError, match="non-finite loss/gradient at step 3"):
        trainer.run()
    bundle = cfg.run_dir / "nonfinite_step_000003"
    report = json.loads((bundle / "report.json").read_text())
    assert report["step"] == 3 and report["nonfinite_grads_in_order"][0].startswith(("wte", "lm_head", "blocks"))
    batch = torch.load(bundle / "batch.pt", weights_only=True)
    assert batch["x"].shape == (8, 32)


def test_loss_spike_is_logged(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 30, "train.log_interval": 1})
    trainer = Trainer(cfg, log=quiet)

    def hook(module, args, output):
        if trainer.state.step + 1 == 26 and module.training:
            return output[0], output[1] * 10
        return output
    trainer.raw_model.register_forward_hook(hook)
    trainer.run()
    spikes = [r for r in records(cfg.run_dir) if r.get("event") == "loss_spike"]
    assert [s["step"] for s in spikes] == [26]


class StepClock:
    """A fake clock for the trainer that advances only when a training step runs: time-driven
    logic is then tested without depending on how fast this machine is."""

    def __init__(self, trainer: Trainer, seconds_per_step: float):
        self.now = 0.0
        step = trainer.train_step

        def timed_step(*args, **kwargs):
            self.now += seconds_per_step
            return step(*args, **kwargs)
        trainer.train_step = timed_step
        trainer.clock = lambda: self.now


def test_time_budget_ends_decayed(tmp_path, text_200k):
    """A 4 s budget at 0.25 s a step: 16 steps, the LR decayed to its floor by the last one."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.time_budget": "4s",
                                              "train.eval_interval": 0, "train.log_interval": 1})
    trainer = Trainer(cfg, log=quiet)
    StepClock(trainer, 0.25)
    result = trainer.run()
    assert result.step == 16 and result.train_seconds == 4.0
    steps = [r for r in records(cfg.run_dir) if "lr" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert steps[-1]["lr"] < 0.2 * cfg.optim.lr  # reached (nearly) the floor of 0.1 * lr
    assert steps[-1]["elapsed_s"] == 4.0 and steps[7]["elapsed_s"] == 2.0
    assert ckpt.read_meta(ckpt.resolve_checkpoint(cfg.run_dir))["step"] == result.step


def test_a_time_budget_reads_the_clock_once_per_step(tmp_path, text_200k, monkeypatch):
    """Under DDP each read of the budget's clock is an all-reduce with rank 0 (a host sync): one per step serves the
    step's LR and the stop checks (time budget, signal)."""
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.time_budget": "3s",
                                              "train.eval_interval": 4, "train.log_interval": 1})
    trainer = Trainer(cfg, log=quiet)
    StepClock(trainer, 0.25)
    reads = []
    monkeypatch.setattr(runtime, "main_clock_and_any_stop", lambda x, stop, d: (reads.append(x) or x, stop))
    result = trainer.run()
    assert result.step == 12 and len(reads) == 12 + 1  # one before the first step, then one after each
    assert [r["lr"] for r in records(cfg.run_dir) if "lr" in r][-1] < 0.2 * cfg.optim.lr  # decayed by the clock


def test_bf16_autocast_runs_attention_and_mlp_matmuls_in_bf16():
    model = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32))
    seen = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, (a[0].dtype, out.dtype)))
    with autocast_context("bf16", torch.device("cpu")):
        _, loss = model(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    for name in ("blocks.0.attn.qkv", "blocks.0.mlp.up", "blocks.0.mlp.down", "lm_head"):
        assert seen[name][1] == torch.bfloat16, name
    # attn.proj's input is the output of scaled_dot_product_attention: bf16 means attention ran in bf16
    assert seen["blocks.0.attn.proj"][0] == torch.bfloat16
    assert loss.dtype == torch.float32  # the loss itself is computed in fp32
    assert model.wte.weight.dtype == torch.float32  # master weights stay fp32


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    grads = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad()
        torch.manual_seed(1)
        model(x, y)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_metrics_have_accounting_fields(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10})
    train(cfg, log=quiet)
    row = [r for r in records(cfg.run_dir) if "loss" in r][-1]
    assert 0 < row["mfu"] < 1 and row["peak_mem_mb"] > 10 and row["eta_s"] >= 0
    assert row["tokens_seen"] == 10 * 8 * 32


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 PCIe", "fp32", 51e12),
    ("NVIDIA H100 NVL", "bf16", 835e12), ("NVIDIA H200", "bf16", 989e12), ("NVIDIA B200", "bf16", 2250e12),
    ("NVIDIA L4", "bf16", 121e12), ("NVIDIA L40", "bf16", 181e12), ("NVIDIA L40S", "bf16", 362e12),
    ("NVIDIA A10", "bf16", 125e12), ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A100 80GB PCIe", "fp32", 19.5e12),
    ("NVIDIA GeForce RTX 4090", "fp16", 165e12), ("Tesla T4", "fp16", 65e12), ("NVIDIA GeForce GTX 1080", "bf16", None),
])
def test_gpu_peak_table_takes_the_most_specific_whole_name(name, precision, peak):
    from tinylm.training.accounting import gpu_peak_flops
    assert gpu_peak_flops(name, precision) == peak


def test_the_cpu_peak_probe_leaves_the_random_state_alone():
    """The probe runs once per machine, inside whichever run comes first: had it drawn from the
    global stream, that run's dropout masks would differ from an identical later run's."""
    from tinylm.training.accounting import measure_cpu_peak
    before = torch.get_rng_state()
    assert measure_cpu_peak(torch.float32, trials=1, seconds=0.01, n=64) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_mfu_divides_global_throughput_by_every_device():
    from tinylm.training.accounting import mfu
    assert mfu(1000, 6e6, 1e10) == pytest.approx(0.6)
    assert mfu(1000, 6e6, 1e10, world_size=2) == pytest.approx(0.3)  # 2 devices did those tokens
    assert mfu(1000, 6e6, None) is None


def test_throughput_leaves_out_evaluation_and_saving(tmp_path, text_200k, monkeypatch):
    """On a clock the test controls (a step takes 1 s, a save 50 s, an evaluation 100 s), every logged
    tokens/s, MFU and ETA is that of the steps alone, though evaluations fall between log lines."""
    monkeypatch.setattr(sys.modules["tinylm.training.trainer"], "peak_flops", lambda device, precision: 1e12)
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 12, "train.log_interval": 5,
                                              "train.eval_interval": 3, "train.save_interval": 2})
    trainer = Trainer(cfg, log=quiet)
    now = [0.0]

    def taking(seconds, fn):
        def timed(*a, **k):
            now[0] += seconds
            return fn(*a, **k)
        return timed

    trainer.clock = lambda: now[0]
    trainer.train_step = taking(1.0, trainer.train_step)
    trainer.save = taking(50.0, trainer.save)
    trainer._eval_point = taking(100.0, trainer._eval_point)
    trainer.run()
    rows = [r for r in records(cfg.run_dir) if "tokens_per_s" in r]
    assert [r["step"] for r in rows] == [5, 10, 12]
    tokens_per_step, flops = 8 * 32, trainer.raw_model.flops_per_token()
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(tokens_per_step)
        assert r["mfu"] == pytest.approx(tokens_per_step * flops / 1e12)
        assert r["eta_s"] == pytest.approx(12 - r["step"])


def test_tensorboard_and_wandb_offline(tmp_path, text_200k, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10, "run.tensorboard": True, "run.wandb": True})
    train(cfg, log=quiet)
    assert list((cfg.run_dir / "tb").glob("events.out.tfevents.*"))
    assert list((cfg.run_dir / "wandb").glob("offline-run-*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(cfg.run_dir / "tb"))
    acc.Reload()
    assert {"loss", "val_loss", "lr", "tokens_per_s"} <= set(acc.Tags()["scalars"])


def test_wandb_sessions_of_one_run_share_one_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tinylm.training.tracking import WandbSink
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for step in (1, 2):  # a run, then its --resume
        sink = WandbSink("tinylm", "tiny", {}, tmp_path)
        sink.log({"step": step, "loss": 1.0})
        sink.close()
        ids.append(sink.run.id)
    assert ids[0] == ids[1] == (tmp_path / "wandb_id").read_text().strip()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(ids[0] in r.name for r in runs)  # offline-run-<time>-<id>[-1]


def test_export_safetensors(tmp_path, text_200k, capsys):
    from safetensors.torch import load_file
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 4, "train.eval_interval": 0})
    train(cfg, log=quiet)
    out = tmp_path / "model.safetensors"
    assert main(["export", str(cfg.run_dir), "--out", str(out)]) == 0
    weights = load_file(out)
    model = GPT(cfg.model)
    model.load_state_dict(weights, strict=False)  # lm_head is tied to wte
    saved = ckpt.load_part(ckpt.resolve_checkpoint(cfg.run_dir), "model")
    torch.testing.assert_close(model.state_dict()["lm_head.weight"], saved["wte.weight"])
    assert set(weights) == set(saved) - {"lm_head.weight"}
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as every file tinylm writes, not safetensors' 0600


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_at_most_one_save_interval(tmp_path, text_200k):
    opts = {"train.max_steps": 60, "train.log_interval": 1, "train.eval_interval": 0,
            "train.save_interval": 3, "train.threads": 1}
    ref = tiny_config(tmp_path / "ref", text_200k, **opts)
    train(ref, log=quiet)
    cfg = tiny_config(tmp_path / "crash", text_200k, **opts)
    report = crash_harness(cfg, min_kills=3, seed=0)
    assert report.kills == 3 and report.returncode == 0
    assert report.unreadable_checkpoints == 0  # (a) every checkpoint is readable
    assert max(report.lost_steps) <= 3 + 1  # (b) at most one save interval (+ the step in flight)
    a, b = logged_losses(ref.run_dir), logged_losses(cfg.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 61))
    assert max(abs(a[s] - b[s]) for s in a) == 0.0  # (c) the same curve, bit for bit


def test_crash_harness_kills_a_round_past_its_timeout(tmp_path, text_200k, monkeypatch):
    children = []

    class Recorded(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            children.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**9, "train.eval_interval": 0})  # never ends
    with pytest.raises(TinyLMError, match="ran past 2 s and was killed"):
        crash_harness(cfg, min_kills=0, round_timeout=2)
    assert len(children) == 1 and children[0].returncode == -signal.SIGKILL


@pytest.mark.slow
def test_crash_harness_drains_a_chatty_child(tmp_path, text_200k, monkeypatch):
    """A child writing far more to stderr than a pipe holds (here Python's import trace, ~0.5 MB
    for torch alone) runs to its end: the harness never leaves it blocked on a full pipe."""
    monkeypatch.setenv("PYTHONVERBOSE", "1")
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 12, "train.log_interval": 1, "train.eval_interval": 0,
                                              "train.save_interval": 3, "train.threads": 1})
    report = crash_harness(cfg, min_kills=1, round_timeout=300)
    assert report.kills == 1 and report.returncode == 0


def test_sigterm_saves_and_exits(tmp_path, text_200k):
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 10**6, "train.eval_interval": 0})
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "train", *cli_args(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ((cfg.run_dir / "metrics.jsonl").exists() and logged_losses(cfg.run_dir)):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped by signal" in out
    assert ckpt.read_meta(ckpt.resolve_checkpoint(cfg.run_dir))["step"] >= 5


@pytest.mark.slow
def test_torch_compile_matches_eager_and_reports_compile_time(tmp_path, text_200k):
    opts = {"train.max_steps": 6, "train.log_interval": 1, "train.eval_interval": 0}
    eager = tiny_config(tmp_path / "eager", text_200k, **opts)
    compiled = tiny_config(tmp_path / "compiled", text_200k, **{**opts, "train.compile": True})
    train(eager, log=quiet)
    train(compiled, log=quiet)
    a, b = logged_losses(eager.run_dir), logged_losses(compiled.run_dir)
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    events = [r for r in records(compiled.run_dir) if r.get("event") == "compiled"]
    assert len(events) == 1 and events[0]["compile_s"] > 0
    compiled.train.max_steps = 8  # a resumed session compiles again at its first step: reported apart as well
    train(compiled, resume=True, log=quiet)
    events = [r for r in records(compiled.run_dir) if r.get("event") == "compiled"]
    assert [e["step"] for e in events] == [1, 7] and events[1]["compile_s"] > 0


# --------------------------------------------------------------------------- damaged data: one line, exit 2

def _prepared(tmp_path, text_200k, **overrides):
    from tinylm.data.prepare import ensure_prepared
    cfg = tiny_config(tmp_path, text_200k, **{"train.max_steps": 2, "train.eval_interval": 0, **overrides})
    ensure_prepared(cfg.data, progress=False, log=quiet)
    return cfg


def test_a_token_id_beyond_the_vocabulary_is_one_line(tmp_path, text_200k, capsys):
    import numpy as np

    from tinylm.data.shards import load_meta, read_shard, write_shard
    from tinylm.tokenizer import load_tokenizer
    from tinylm.training.evaluate import Evaluator
    cfg = _prepared(tmp_path, text_200k)
    data, vocab = cfg.data.dir, load_meta(cfg.data.dir)["vocab_size"]

    def damage(split: str) -> None:  # every 8th id out of range: the first batch meets one
        tokens = np.array(read_shard(tmp_path / "data" / f"{split}_000000.bin"))
        tokens[::8] = vocab + 7
        write_shard(tmp_path / "data" / f"{split}_000000.bin", tokens)
    damage("train")
    assert main(["train", *cli_args(cfg)]) == 2
    assert one_line_error(capsys) == (f"tinylm: error: the train split of {data} holds token id {vocab + 7}, beyond "
                                      f"the vocabulary's {vocab} ids: the shards are damaged or were made with another "
                                      f"tokenizer; re-run `tinylm prepare --force` on them\n")
    damage("val")
    ev = Evaluator.for_split(data, "val", 32, 4, load_tokenizer(f"{data}/tokenizer.txt"))
    with pytest.raises(TinyLMError, match=f"the val split of {data} holds token id {vocab + 7}"):
        ev.run(GPT(ModelConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, block_size=32)), torch.device("cpu"))


def test_a_pickled_document_index_is_refused_in_one_line(tmp_path, text_200k, capsys):
    import numpy as np
    cfg = _prepared(tmp_path, text_200k, **{"data.align": "doc"})
    np.save(tmp_path / "data" / "train_docs.npy", np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    assert main(["train", *cli_args(cfg)]) == 2
    one_line_error(capsys, f"tinylm: error: {tmp_path / 'data' / 'train_docs.npy'} is not a plain array of document "
                           f"starts (")


def test_a_model_too_large_for_the_memory_is_refused_with_the_estimate_before_allocating(tmp_path, text_200k,
                                                                                         capsys):
    from tinylm.training import runtime
    cfg = tiny_config(tmp_path, text_200k, **{"model.n_embd": 1_000_000, "model.n_head": 1})
    assert main(["train", *cli_args(cfg)]) == 2  # 24e12 parameters: 12 TB of weights alone
    have = runtime.device_memory(torch.device("cpu")) / 2**30
    err = one_line_error(capsys, "--model.n_layer 2 x --model.n_embd 1000000 (vocab ",
                         f"GiB for their weights, gradients and adamw state (16 bytes each, activations on top), more "
                         f"than the {have:,.1f} GiB of this cpu; choose a smaller model")
    params = int(err.split(" is ")[1].split(" parameters")[0].replace(",", ""))
    assert f"at least {params * 16 / 2**30:,.1f} GiB" in err
    assert not cfg.run_dir.exists()  # refused before the run folder is kept
