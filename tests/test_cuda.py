"""The GPU path on a real GPU: bf16 autocast, fp16 with GradScaler, fused AdamW, TF32, pinned non-blocking copies and
the prefetching loader, torch.compile, DDP over nccl and FSDP2 (each in a process group of one), KV-cache decoding.

Every test here is skipped without CUDA (the reason is printed); ``make test-gpu`` runs just these (marker ``cuda``).
tests/test_prefetch.py checks on the CPU what does not need a GPU.
"""
import copy
import datetime
import math
import socket

import pytest
import torch
import torch.distributed as dist

from tinylm.config import ModelConfig, OptimConfig, SampleConfig
from tinylm.data.loader import BatchLoader, PrefetchLoader
from tinylm.generation.generate import generate
from tinylm.model.gpt import GPT
from tinylm.training import checkpoint as ckpt
from tinylm.training import runtime
from tinylm.training.optim import build_optimizer, param_groups, set_schedule
from tinylm.training.tracking import logged_losses, read_metrics
from tinylm.training.trainer import Trainer, train

from conftest import EQUIVALENCE_BOUND, max_loss_difference, same_position, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason=f"needs a CUDA GPU: this torch ({torch.__version__}) sees none")]

CUDA = torch.device("cuda", 0)
V = 61  # vocabulary of the hand-built models


def quiet(*a, **k) -> None:
    pass


@pytest.fixture(autouse=True)
def keep_matmul_precision():
    """A Trainer on CUDA turns TF32 on for the whole process: each test starts and ends with the setting it found."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def exact_fp32():
    """Full fp32 matmuls: TF32 rounds a matmul's inputs to 10 bits, so a difference of one ulp in an input can
    become 1e-3 in the output, and two computations that should agree exactly could not be compared tightly."""
    torch.set_float32_matmul_precision("highest")


def cuda_config(tmp_path, text, **overrides):
    return tiny_config(tmp_path, text, **{"train.device": "cuda", **overrides})


def tiny_gpt(seed: int = 0, block: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=V, block_size=block, n_layer=2, n_head=2, n_embd=32)).to(CUDA)


def random_batches(n: int, batch: int = 4, block: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        buf = torch.randint(0, V, (batch, block + 1), generator=g).to(CUDA)
        out.append((buf[:, :-1].contiguous(), buf[:, 1:].contiguous()))
    return out


# --------------------------------------------------------------------------- the Trainer on CUDA

def test_bf16_autocast_training(tmp_path, text_200k):
    """The real loop in bf16 on the GPU: the matmuls run in bf16, the weights stay fp32, the model learns, and the
    checkpoint records the precision and the GPU."""
    cfg = cuda_config(tmp_path, text_200k, **{"train.precision": "bf16", "train.max_steps": 30,
                                               "train.log_interval": 1})
    trainer = Trainer(cfg, log=quiet)
    assert trainer.precision == "bf16" and trainer.device.type == "cuda"
    seen = []
    hook = trainer.raw_model.blocks[0].mlp.up.register_forward_hook(
        lambda module, inputs, out: seen.append(out.dtype))
    trainer.train_step(1.0)
    hook.remove()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())
    trainer.close()
    result = train(cuda_config(tmp_path / "run", text_200k, **{"train.precision": "bf16", "train.max_steps": 30,
                                                                "train.log_interval": 1}), log=quiet)
    losses = logged_losses(result.run_dir)
    assert sorted(losses) == list(range(1, 31))
    assert result.val_loss < math.log(trainer.cfg.model.vocab_size) - 0.5, "the model did not learn"
    meta = ckpt.read_meta(ckpt.resolve_checkpoint(result.run_dir))
    assert meta["precision"] == "bf16" and meta["device"].startswith("cuda:0 (")


def test_fp16_grad_scaler_skips_an_overflowing_step(tmp_path, text_200k):
    """fp16: a step whose scaled loss overflows changes no weight and no optimizer step count, and lowers the scale;
    the next step at a sane scale trains again."""
    trainer = Trainer(cuda_config(tmp_path, text_200k, **{"train.precision": "fp16"}), log=quiet)
    try:
        assert trainer.scaler.is_enabled()
        trainer.train_step(1.0)  # sets the scaler up
        weights = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
        steps = [float(s["step"]) for s in trainer.optimizer.state.values()]
        trainer.scaler.update(new_scale=2.0 ** 127)  # the loss (~4) x 2^127 is beyond fp32: every gradient inf/nan
        trainer.train_step(1.0)
        assert trainer.scaler.get_scale() == 2.0 ** 126  # backed off by half
        assert all(torch.equal(v, weights[k]) for k, v in trainer.raw_model.state_dict().items())
        assert [float(s["step"]) for s in trainer.optimizer.state.values()] == steps
        trainer.scaler.update(new_scale=2.0 ** 10)
        trainer.train_step(1.0)
        assert not all(torch.equal(v, weights[k]) for k, v in trainer.raw_model.state_dict().items())
    finally:
        trainer.close()


def test_a_nonfinite_step_is_skipped_on_the_device(tmp_path, text_200k):
    """bf16: a NaN gradient makes the fused AdamW kernel skip the update on the GPU (found_inf), with no host read;
    the step reports it, and the next step trains again."""
    trainer = Trainer(cuda_config(tmp_path, text_200k, **{"train.precision": "bf16"}), log=quiet)
    try:
        assert trainer.skip_on_device
        trainer.train_step(1.0)
        weights = [p.detach().clone() for p in trainer.raw_model.parameters()]
        poison = trainer.raw_model.wte.weight.register_hook(lambda g: g * float("nan"))
        stats = trainer.train_step(1.0)
        poison.remove()
        assert not bool(stats["finite"])
        assert all(torch.equal(p, w) for p, w in zip(trainer.raw_model.parameters(), weights, strict=True))
        assert bool(trainer.train_step(1.0)["finite"])
        assert not all(torch.equal(p, w) for p, w in zip(trainer.raw_model.parameters(), weights, strict=True))
    finally:
        trainer.close()


def test_fused_adamw_tf32_and_prefetch_are_on(tmp_path, text_200k):
    """What a run on CUDA gets without asking: the fused AdamW kernel (the same update as foreach AdamW), TF32 for
    fp32 matmuls, and the prefetching loader."""
    torch.set_float32_matmul_precision("highest")
    trainer = Trainer(cuda_config(tmp_path, text_200k), log=quiet)
    try:
        assert torch.get_float32_matmul_precision() == "high"
        assert isinstance(trainer.loader, PrefetchLoader)
        opt = trainer.optimizer
        assert opt.defaults["fused"] is True and all(g["fused"] for g in opt.param_groups)
    finally:
        trainer.close()
    torch.set_float32_matmul_precision("highest")  # compare the two optimizers' arithmetic, not TF32's rounding
    cfg = OptimConfig(lr=1e-2)
    fused_model, foreach_model = tiny_gpt(), tiny_gpt()
    fused = build_optimizer(fused_model, cfg, "cuda")
    foreach = torch.optim.AdamW(param_groups(foreach_model, cfg), lr=cfg.lr, eps=cfg.eps, foreach=True)
    set_schedule(fused, 1.0)
    set_schedule(foreach, 1.0)
    for x, y in random_batches(3):
        fused_model(x, y)[1].backward()
        for p, q in zip(fused_model.parameters(), foreach_model.parameters(), strict=True):
            q.grad = p.grad.clone()  # the same gradients: only the optimizers' arithmetic differs
        for opt in (fused, foreach):
            opt.step()
            opt.zero_grad(set_to_none=True)
    for p, q in zip(fused_model.parameters(), foreach_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert all(s["exp_avg"].is_cuda for s in fused.state.values())


def test_compiled_training_matches_eager(tmp_path, text_200k):
    """torch.compile'd training steps give eager's losses within bf16 rounding (the compiled kernels fuse and round
    differently; a wrong compiled step is off by far more), and the first step is reported apart."""
    opts = {"train.precision": "bf16", "train.max_steps": 5, "train.log_interval": 1, "train.eval_interval": 0}
    eager = cuda_config(tmp_path / "eager", text_200k, **opts)
    compiled = cuda_config(tmp_path / "compiled", text_200k, **opts, **{"train.compile": True})
    train(eager, log=quiet)
    train(compiled, log=quiet)
    a, b = logged_losses(eager.run_dir), logged_losses(compiled.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 6))
    assert max_loss_difference(a, b, "bf16") < 5 * EQUIVALENCE_BOUND["bf16"]
    assert any(r.get("event") == "compiled" for r in read_metrics(compiled.run_dir))


# --------------------------------------------------------------------------- batches to the GPU

def test_batches_reach_the_gpu_by_pinned_non_blocking_copies(small_windows, monkeypatch):
    copies = []  # (from pinned memory, non_blocking) of every host -> GPU copy
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda":
            copies.append((self.is_pinned(), kwargs.get("non_blocking", False)))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    on_gpu, on_cpu = BatchLoader(small_windows, 4, seed=2, device=CUDA), BatchLoader(small_windows, 4, seed=2)
    for _ in range(3):
        for g, c in zip(on_gpu.next_batch(), on_cpu.next_batch(), strict=True):
            assert g.is_cuda and torch.equal(g.cpu(), c)
    assert len(copies) == 6 and all(pinned and non_blocking for pinned, non_blocking in copies)


def test_prefetching_on_cuda_gives_the_same_batches_and_positions(small_windows):
    """Built ahead on a copy stream, used on the default stream: the CPU loader's batches, in order, across an epoch;
    the position is the batches used, so a resume continues exactly."""
    ahead = PrefetchLoader(BatchLoader(small_windows, 4, seed=5, device=CUDA))
    on_cpu = BatchLoader(small_windows, 4, seed=5)
    for _ in range(len(on_cpu._epoch_starts()) // 4 + 5):
        x, y = ahead.next_batch()
        assert x.is_cuda and y.is_cuda
        x2 = x * 1  # a kernel on the default stream, as a step would queue, then read back
        cx, cy = on_cpu.next_batch()
        assert torch.equal(x2.cpu(), cx) and torch.equal(y.cpu(), cy)
        assert same_position(ahead.state_dict(), on_cpu.state_dict())
    assert on_cpu.epoch == 1
    resumed = PrefetchLoader(BatchLoader(small_windows, 4, seed=5, device=CUDA))
    resumed.load_state_dict(ahead.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(resumed.next_batch(), ahead.next_batch(), strict=True))
    ahead.close()
    resumed.close()


# --------------------------------------------------------------------------- DDP and FSDP2 over nccl

@pytest.fixture
def nccl_group_of_one():
    """This process as rank 0 of a one-process nccl group (tcp on 127.0.0.1, a free port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_steps(model: torch.nn.Module, owner: torch.nn.Module, batches) -> tuple[list[float], torch.optim.Optimizer]:
    """Plain steps (forward, backward, clip, fused AdamW) as the Trainer takes them; ``owner`` holds the parameters."""
    opt = build_optimizer(owner, OptimConfig(lr=1e-2), "cuda")
    set_schedule(opt, 1.0)
    losses = []
    for x, y in batches:
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(owner.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, opt


def test_ddp_over_nccl_in_a_group_of_one(nccl_group_of_one, exact_fp32):
    reference = tiny_gpt()
    model = copy.deepcopy(reference)
    ddp = runtime.replicate_or_shard(model, CUDA, fsdp=False)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and dist.get_backend() == "nccl"
    batches = random_batches(4)
    expected, _ = train_steps(reference, reference, batches)
    got, _ = train_steps(ddp, model, batches)  # gradients all-reduced over nccl (a group of one: unchanged)
    # fp32 rounding only (GPU attention backward may sum in any order): test_ddp's bound for one process vs two
    assert got == pytest.approx(expected, abs=1e-5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    t = torch.full((3,), 2.5, device=CUDA)
    dist.all_reduce(t)
    assert t.tolist() == [2.5] * 3


def test_fsdp2_over_nccl_in_a_group_of_one(nccl_group_of_one, exact_fp32):
    """fully_shard per block and at the root trains as the plain model does; the full (unsharded) states it gives a
    checkpoint are the plain model's, and a fresh sharded model loaded from them continues identically."""
    from torch.distributed.tensor import DTensor

    reference = tiny_gpt()
    model = runtime.replicate_or_shard(copy.deepcopy(reference), CUDA, fsdp=True)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    batches = random_batches(5)
    expected, _ = train_steps(reference, reference, batches[:4])
    got, opt = train_steps(model, model, batches[:4])
    assert got == pytest.approx(expected, abs=1e-5)
    model_state, optim_state = runtime.full_state_dicts(model, opt, sharded=True)
    plain = reference.state_dict()
    assert {name for name, _ in reference.named_parameters()} <= set(model_state)
    for name, value in model_state.items():
        torch.testing.assert_close(value.to(CUDA), plain[name], atol=1e-5, rtol=1e-4)
    fresh = runtime.replicate_or_shard(tiny_gpt(seed=1), CUDA, fsdp=True)
    fresh_opt = build_optimizer(fresh, OptimConfig(lr=1e-2), "cuda")
    set_schedule(fresh_opt, 1.0)
    # a copy, as a checkpoint on disk is: full states may share tensors (a step count) with the live optimizer
    runtime.load_full_state_dicts(fresh, fresh_opt, *copy.deepcopy((model_state, optim_state)))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        x, y = batches[4]
        m(x, y)[1].backward()
        o.step()
        o.zero_grad(set_to_none=True)
    for p, q in zip(fresh.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- generation

def test_kv_cache_generation_equals_full_recompute(exact_fp32):
    model = tiny_gpt(block=64).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8)  # clear-cut logits: greedy choices are not near-ties
        x = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(0)).to(CUDA)
        full, _ = model(x)  # (3, 40, V)
        cache = model.new_cache(3)
        model(x[:, :13], cache=cache)  # prefill, then one token at a time
        first = model.lm_head(cache.hidden)  # (3, 13, V)
        steps = [model(x[:, t:t + 1], cache=cache)[0] for t in range(13, 40)]
        torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-4, rtol=1e-4)
        prompt, n_new = [5, 6, 7], 40
        tokens = generate(model, [prompt], SampleConfig(strategy="greedy", max_new_tokens=n_new))[0][0].tokens
        idx = torch.tensor([prompt], device=CUDA)
        for _ in range(n_new):  # the same decoding by full recompute of the whole context
            nxt = model(idx[:, -model.cfg.block_size:])[0][:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    assert tokens == idx[0, len(prompt):].tolist()
