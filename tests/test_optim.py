"""Optimizers (AdamW, Muon, Lion), parameter groups, schedules and the LR range finder."""
import itertools
import json
import math

import pytest
import torch

from tinylm.cli import main
from tinylm.config import Config, ModelConfig, OptimConfig, validate
from tinylm.errors import TinyLMError
from tinylm.model.gpt import GPT
from tinylm.training.lr_find import diverged, lr_find_result
from tinylm.training.optim import (
    Lion,
    Muon,
    build_optimizer,
    lr_scale,
    momentum_at,
    orthogonalize,
    param_groups,
)
from tinylm.training.trainer import train

from conftest import tiny_config


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))


def test_param_groups_by_role():
    model = tiny_gpt(tie_embeddings=False, bias=True)
    cfg = OptimConfig(lr=1e-3, embed_lr=5e-3, scalar_lr=2e-3, weight_decay=0.1, embed_weight_decay=0.01,
                      beta1=0.9, beta2=0.95, embed_beta1=0.8, embed_beta2=0.99)
    groups = {g["role"]: g for g in param_groups(model, cfg)}
    ids = {role: {id(p) for p in g["params"]} for role, g in groups.items()}
    assert ids["embeddings"] == {id(model.wte.weight), id(model.wpe.weight), id(model.lm_head.weight)}
    assert all(p.dim() == 2 for p in groups["matrices"]["params"])
    assert all(p.dim() == 1 for p in groups["scalars"]["params"])
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))  # every parameter exactly once
    assert [(groups[r]["peak_lr"], groups[r]["weight_decay"]) for r in ("matrices", "embeddings", "scalars")] == \
        [(1e-3, 0.1), (5e-3, 0.01), (2e-3, 0.0)]
    betas = [groups[r]["betas"] for r in ("matrices", "embeddings", "scalars")]
    assert betas == [(0.9, 0.95), (0.8, 0.99), (0.8, 0.99)]
    opt = build_optimizer(model, cfg, "cpu")  # torch's AdamW keeps each group's own betas
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95), (0.8, 0.99), (0.8, 0.99)]
    tied = {g["role"]: g for g in param_groups(tiny_gpt(), OptimConfig(lr=1e-3))}
    assert [id(p) for p in tied["embeddings"]["params"]].count(id(tied["embeddings"]["params"][0])) == 1
    assert tied["embeddings"]["peak_lr"] == tied["scalars"]["peak_lr"] == 1e-3  # 0 = inherit lr


def run_steps(model: GPT, opt: torch.optim.Optimizer, n: int = 3) -> None:
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()


def test_muon_adamw_part_matches_torch_adamw():
    a, b = tiny_gpt(), tiny_gpt()
    cfg = OptimConfig(lr=3e-3, weight_decay=0.1)
    groups = param_groups(b, cfg)
    for g in groups:
        g["muon"] = False
    run_steps(a, torch.optim.AdamW(param_groups(a, cfg), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8))
    run_steps(b, Muon(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_orthogonalize_pushes_singular_values_near_one(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 5
    g[:, 0] *= 30  # badly conditioned, as gradients are
    s_in, s = torch.linalg.svdvals(g), torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert s_in.max() / s_in.min() > 50  # the input was far from orthogonal
    # 5 steps lift every singular value above ~1e-3 of the largest; a random square matrix has a
    # few below that, which stay small (the quintic iteration trades them for speed, as Muon intends)
    k = int((s_in > 3e-3 * s_in.max()).sum())
    assert k >= min(shape) - 3
    assert s[:k].min() > 0.55 and s.max() < 1.3, s
    assert orthogonalize(g, dtype=torch.bfloat16).dtype == g.dtype


def test_muon_step_is_scaled_orthogonal_update():
    w = torch.nn.Parameter(torch.zeros(64, 16))
    w.grad = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    Muon([{"params": [w], "muon": True}], lr=0.1, momentum=0.0, nesterov=False).step()
    update = -w.detach() / (0.1 * (64 / 16) ** 0.5)
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.55 and s.max() < 1.3
    assert (update * w.grad).sum() > 0  # a descent direction


def test_muon_misuse_is_a_clear_error():
    with pytest.raises(TinyLMError, match=r"2-D weight matrices.*shape \(8,\)"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(8))], "muon": True}], lr=0.02)
    model = tiny_gpt()
    with pytest.raises(TinyLMError, match="'embeddings' group"):
        Muon([{"params": [model.wte.weight], "muon": True, "role": "embeddings"}], lr=0.02)
    cfg = Config()
    cfg.optim.name = "muon"
    with pytest.raises(TinyLMError, match=r"--optim\.embed_lr"):
        validate(cfg)


def test_build_optimizer_puts_only_hidden_matrices_in_muon():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=0.02, embed_lr=3e-3), "cpu")
    muon = [p for g in opt.param_groups if g["muon"] for p in g["params"]]
    assert muon and all(p.dim() == 2 for p in muon) and id(model.wte.weight) not in {id(p) for p in muon}
    run_steps(model, opt)
    state = opt.state_dict()
    fresh = build_optimizer(model, OptimConfig(name="muon", lr=0.02, embed_lr=3e-3), "cpu")
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"].keys() == state["state"].keys()


def test_lion_moves_every_coordinate_by_lr():
    w = torch.nn.Parameter(torch.ones(10))
    w.grad = torch.linspace(-1, 1, 10) + 0.05
    Lion([w], lr=0.01, betas=(0.9, 0.99)).step()
    torch.testing.assert_close(w.detach(), 1 - 0.01 * torch.sign(w.grad))


def test_each_optimizer_trains(tmp_path, text_200k):
    losses = {}
    for name, extra in (("adamw", {}), ("muon", {"optim.lr": 0.02, "optim.embed_lr": 1e-2}),
                        ("lion", {"optim.lr": 3e-3})):
        cfg = tiny_config(tmp_path / name, text_200k, **{"optim.name": name, "train.max_steps": 40, **extra})
        losses[name] = train(cfg, log=lambda *a: None).val_loss
    vocab = cfg.model.vocab_size
    assert all(v < math.log(vocab) - 0.7 for v in losses.values()), losses  # 40 steps from ln(vocab)


# ----------------------------------------------------------------------------- schedules

def sched(**kw) -> OptimConfig:
    return OptimConfig(**{"warmup_steps": 10, "min_lr_ratio": 0.1, "decay_frac": 0.2, **kw})


@pytest.mark.parametrize("name", ["constant", "cosine", "wsd", "cosine_warmdown"])
def test_schedules_warm_up_then_never_rise(name):
    cfg = sched(schedule=name)
    xs = [lr_scale(s, cfg, 110) for s in range(110)]
    assert xs[:10] == [(s + 1) / 10 for s in range(10)] and xs[9] == 1.0
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(xs[10:]))
    floor = {"constant": 1.0, "cosine": 0.1, "wsd": 0.1, "cosine_warmdown": 0.0}[name]
    assert xs[-1] == pytest.approx(floor, abs=1e-12)


def test_wsd_is_stable_then_decays_with_its_shape():
    # 110 steps, warmup 10: p = (step - 10) / 99; the decay starts at p = 0.8
    for shape, mid in (("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))):
        cfg = sched(schedule="wsd", decay_shape=shape)
        assert lr_scale(10, cfg, 110) == lr_scale(89, cfg, 110) == 1.0
        half = 10 + 0.9 * 99  # halfway through the decay
        assert lr_scale(half, cfg, 110) == pytest.approx(0.1 + 0.9 * mid)
    assert lr_scale(100, sched(schedule="wsd", min_lr_ratio=0.0), 110) == pytest.approx(1 - (90 / 99 - 0.8) / 0.2)


def test_cosine_warmdown_follows_cosine_until_the_warmdown():
    cw, c = sched(schedule="cosine_warmdown"), sched(schedule="cosine")
    assert lr_scale(50, cw, 110) == lr_scale(50, c, 110)
    assert lr_scale(100, cw, 110) < 0.5 * lr_scale(100, c, 110)


def test_time_fraction_drives_the_decay():
    cfg = sched(schedule="wsd")
    assert lr_scale(20, cfg, 10**6, time_frac=1.0) == pytest.approx(0.1)
    assert lr_scale(20, cfg, 10**6, time_frac=0.5) == 1.0


def test_momentum_warmup():
    cfg = OptimConfig(momentum=0.95, momentum_warmup_steps=100, momentum_warmup_start=0.85)
    assert momentum_at(0, cfg) == 0.85 and momentum_at(50, cfg) == pytest.approx(0.90)
    assert momentum_at(100, cfg) == momentum_at(10**6, cfg) == 0.95
    assert momentum_at(0, OptimConfig(momentum=0.9)) == 0.9


# ----------------------------------------------------------------------------- LR range finder

def test_lr_find_result_on_a_known_curve():
    lrs = [1e-5 * 10 ** (i / 40) for i in range(241)]  # 1e-5 .. 1
    losses = [4.0 - 1.5 * math.exp(-((math.log10(lr) + 2) ** 2) / 2) for lr in lrs]  # lowest at 1e-2
    r = lr_find_result(lrs, losses, divisor=5)
    assert 1e-2 <= r["divergence_lr"] < 2e-2  # the smoothing lags a little behind the true minimum
    assert r["suggested_lr"] == pytest.approx(r["divergence_lr"] / 5) and r["diverged"]
    cut = lr_find_result(lrs[:50], [*losses[:49], math.nan])
    assert cut["diverged"] and len(cut["smoothed"]) == 49
    assert not diverged([4.0, 3.99, 4.01])  # noise before any progress is not divergence
    assert diverged([4.0, 3.0, 2.0, 2.6]) and not diverged([4.0, 3.0, 2.0, 2.4])


def test_lr_find_cli_writes_results_and_leaves_the_run_alone(tmp_path, text_200k, capsys):
    cfg = tiny_config(tmp_path, text_200k)
    args = ["lr-find", "--steps", "40", "--start", "1e-4", "--end", "10"]
    for key in ("data.corpus", "data.dir", "run.dir", "run.name", "model.n_layer", "model.n_head", "model.n_embd",
                "model.block_size", "train.batch_size", "run.progress", "train.device"):
        sec, name = key.split(".")
        args += [f"--{key}", str(getattr(getattr(cfg, sec), name))]
    assert main(args) == 0
    out = tmp_path / "runs" / "tiny-lr-find"
    r = json.loads((out / "lr_find.json").read_text())
    assert r["diverged"] and len(r["losses"]) <= 40 and 1e-4 < r["suggested_lr"] < 10
    assert (out / "lr_find.png").stat().st_size > 1000
    assert not cfg.run_dir.exists()  # the run's own folder is never made or touched
    assert "suggested --optim.lr" in capsys.readouterr().out
    assert main(["lr-find", "--steps", "5"]) != 0
    assert "needs at least 10 steps" in capsys.readouterr().err


@pytest.mark.parametrize("divisor", ["0", "-2", "nan"])
def test_lr_find_refuses_a_divisor_that_is_not_positive(tmp_path, text_200k, capsys, divisor):
    cfg = tiny_config(tmp_path, text_200k)
    code = main(["lr-find", "--divisor", divisor, "--data.corpus", str(text_200k), "--data.dir", str(tmp_path / "data"),
                 "--run.dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"--divisor > 0 (got {float(divisor)})" in err
    assert not (tmp_path / "data").exists() and not cfg.run_dir.parent.exists()  # refused before any work


def test_orthogonalize_a_batch_equals_one_by_one():
    gs = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(orthogonalize(gs), torch.stack([orthogonalize(g) for g in gs]), rtol=1e-4, atol=1e-5)


def test_lr_find_refuses_torchrun(tmp_path, text_200k, monkeypatch):
    from tinylm.training.lr_find import lr_find
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TinyLMError, match="not under torchrun"):
        lr_find(tiny_config(tmp_path, text_200k), steps=20)
