"""What the GPU path adds, checked on the CPU: the prefetching loader (same batches, exact resume) and the TF32 switch.

The same code runs on CUDA with pinned memory and a copy stream; tests/test_cuda.py checks that part there.
"""
import pytest
import torch

from tinylm.config import Config, set_value, validate
from tinylm.data.loader import BatchLoader, PrefetchLoader, with_prefetch
from tinylm.errors import TinyLMError
from tinylm.training.runtime import enable_tf32
from tinylm.training.tracking import logged_losses
from tinylm.training.trainer import Trainer, train

from conftest import same_position, tiny_config


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_prefetching_gives_the_same_batches_and_positions(small_windows, mode):
    plain = BatchLoader(small_windows, 4, mode=mode, seed=3)
    ahead = PrefetchLoader(BatchLoader(small_windows, 4, mode=mode, seed=3))
    n_epoch = len(plain._epoch_starts()) // 4
    for _ in range(n_epoch + 5):  # across an epoch's end (a new shift and permutation)
        assert same_position(ahead.state_dict(), plain.state_dict())  # consumed, not built ahead
        for p, q in zip(plain.next_batch(), ahead.next_batch(), strict=True):
            assert torch.equal(p, q)
    assert mode == "random" or plain.epoch == 1  # the epoch did turn
    ahead.close()


def test_a_prefetching_loader_resumes_where_its_batches_were_used(small_windows):
    """Its position, saved mid-stream while the next batch is already built, continues with exactly the batches
    an uninterrupted loader gives next, whether it resumes with prefetching or without."""
    ahead = PrefetchLoader(BatchLoader(small_windows, 4, seed=7))
    for _ in range(10):
        ahead.next_batch()
    state = ahead.state_dict()
    expected = [ahead.next_batch() for _ in range(6)]
    again = PrefetchLoader(BatchLoader(small_windows, 4, seed=7))
    again.next_batch()  # a batch built ahead from the old position is dropped on load
    again.load_state_dict(state)
    plain = BatchLoader(small_windows, 4, seed=7)
    plain.load_state_dict(state)
    for x, y in expected:
        for loader in (again, plain):
            nx, ny = loader.next_batch()
            assert torch.equal(nx, x) and torch.equal(ny, y)
    with pytest.raises(TinyLMError, match="differs from this run's"):  # the wrapped loader's check, unchanged
        PrefetchLoader(BatchLoader(small_windows, 4, seed=8)).load_state_dict(state)


def test_an_error_while_building_ahead_reaches_the_caller(small_windows):
    class Broken(BatchLoader):
        def next_host_batch(self):
            raise TinyLMError("shard unreadable")

    with pytest.raises(TinyLMError, match="shard unreadable"):
        PrefetchLoader(Broken(small_windows, 4)).next_batch()


def test_prefetch_setting(small_windows):
    loader = BatchLoader(small_windows, 4)
    assert with_prefetch(loader, "off") is loader
    assert with_prefetch(loader, "auto") is loader  # a CPU device: the thread would compete with the step
    ahead = with_prefetch(loader, "on")
    assert isinstance(ahead, PrefetchLoader) and ahead.w is small_windows
    cfg = Config()
    with pytest.raises(TinyLMError, match=r"--data\.prefetch 'always' is not one of auto, on, off"):
        set_value(cfg, "data.prefetch", "always")
    cfg.data.prefetch = "always"  # set in Python, past the command line's check: validate() still refuses it
    with pytest.raises(TinyLMError, match=r"data\.prefetch 'always' is not one of auto, on, off"):
        validate(cfg)


def test_training_with_prefetch_is_bit_exact_and_resumes_bit_exact(tmp_path, text_200k):
    """The whole loop with --data.prefetch on: the losses of a run without it, bit for bit, and the same again
    after stopping at step 8 (a batch built ahead at the checkpoint) and resuming."""
    opts = {"train.log_interval": 1, "train.eval_interval": 8, "optim.schedule": "constant", "model.dropout": 0.1}
    plain = tiny_config(tmp_path / "a", text_200k, **{**opts, "train.max_steps": 16, "data.prefetch": "off"})
    train(plain, log=lambda *a: None)
    part = tiny_config(tmp_path / "b", text_200k, **{**opts, "train.max_steps": 8, "data.prefetch": "on"})
    trainer = Trainer(part, log=lambda *a: None)
    assert isinstance(trainer.loader, PrefetchLoader)
    trainer.run()
    assert trainer.step == trainer.state.step == 8 and trainer.tokens_seen == trainer.state.tokens_seen > 0
    assert trainer.loader._pool._shutdown  # run() ends by closing the trainer: no worker thread left behind
    part.train.max_steps = 16
    train(part, resume=True, log=lambda *a: None)
    a, b = logged_losses(plain.run_dir), logged_losses(part.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 17))
    assert all(a[s] == b[s] for s in a)


def test_tf32_is_left_alone_off_cuda():
    before = torch.get_float32_matmul_precision()
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == before
