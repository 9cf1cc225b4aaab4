"""The output head's GPU levers, checked on the CPU: a vocabulary padded to a tile-friendly width changes no
number a user sees, and the loss in chunks equals the plain loss, gradients included."""
import pytest
import torch
from safetensors.torch import load_file

from tinylm.cli import main
from tinylm.config import ModelConfig, SampleConfig, build_config
from tinylm.errors import TinyLMError
from tinylm.generation.generate import generate
from tinylm.model.gpt import GPT, padded_vocab
from tinylm.model.head_loss import chunked_cross_entropy
from tinylm.training import checkpoint as ckpt
from tinylm.training.tracking import logged_losses
from tinylm.training.trainer import train

from conftest import tiny_config

V = 97  # a vocabulary that no tile size divides


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))


def pair(tie: bool, **kw) -> tuple[GPT, GPT]:
    """The same weights unpadded and padded to 64 (the padded model loads the plain model's state dict)."""
    plain, padded = tiny(tie_embeddings=tie), tiny(tie_embeddings=tie, vocab_pad_to=64, **kw)
    padded.load_state_dict(plain.state_dict())
    return plain, padded


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (4, 16), generator=g), torch.randint(0, V, (4, 16), generator=g)


def grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()}


def test_padded_width():
    assert padded_vocab(ModelConfig(vocab_size=50257, vocab_pad_to=64)) == 50304
    assert padded_vocab(ModelConfig(vocab_size=50257, vocab_pad_to=128)) == 50304
    assert padded_vocab(ModelConfig(vocab_size=65, vocab_pad_to=64)) == 128
    assert padded_vocab(ModelConfig(vocab_size=128, vocab_pad_to=64)) == 128
    assert padded_vocab(ModelConfig(vocab_size=97)) == 97


@pytest.mark.parametrize("tie", [True, False])
def test_padded_vocab_keeps_parameters_and_gives_the_same_logits_loss_and_gradients(tie):
    plain, padded = pair(tie)
    assert {k: v.shape for k, v in padded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert padded.num_params() == plain.num_params()
    assert padded.lm_head.padded_weight().shape == (128, 32)
    seen = []  # module hooks (the non-finite hunt's) see the head's output: the true vocabulary, finite
    padded.lm_head.register_forward_hook(lambda m, a, out: seen.append(out))
    x, y = batch()
    (lp, loss_p), (lq, loss_q) = plain(x, y), padded(x, y)
    assert lq.shape == (4, 16, V) and seen[0].shape == (4, 16, V)  # the padding never leaves the head
    assert torch.isfinite(seen[0]).all()
    torch.testing.assert_close(lq, lp, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_q, loss_p, rtol=0, atol=1e-6)
    loss_p.backward()
    loss_q.backward()
    for name, g in grads(plain).items():
        torch.testing.assert_close(grads(padded)[name], g, rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(padded(x)[0], lp, rtol=0, atol=1e-6)  # without targets too


@pytest.mark.parametrize("strategy", ["sample", "greedy", "beam", "contrastive"])
def test_padded_vocab_generates_the_same_tokens(strategy):
    plain, padded = (m.eval() for m in pair(True))
    s = SampleConfig(strategy=strategy, max_new_tokens=24, temperature=1.5, top_k=0, num_beams=3)
    outs = [[[c.tokens for c in per_prompt] for per_prompt in generate(m, [[1, 2, 3], [4]], s, seed=5)]
            for m in (plain, padded)]
    assert outs[0] == outs[1]
    assert len(outs[0][0][0]) == 24


@pytest.mark.parametrize("tie,pad", [(True, 1), (False, 1), (True, 64), (False, 128)])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(tie, pad, chunk):
    plain = tiny(tie_embeddings=tie, vocab_pad_to=pad)
    chunked = tiny(tie_embeddings=tie, vocab_pad_to=pad, loss_chunk=chunk)
    chunked.load_state_dict(plain.state_dict())
    x, y = batch(1)
    _, loss_p = plain(x, y)
    logits, loss_c = chunked(x, y)
    assert logits is None  # the batch's logits are never made
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=1e-6)
    (2 * loss_p).backward()  # a gradient other than 1 reaches the chunked backward
    (2 * loss_c).backward()
    for name, g in grads(plain).items():
        torch.testing.assert_close(grads(chunked)[name], g, rtol=0, atol=1e-6, msg=name)


def test_chunked_loss_without_gradients_and_on_a_hidden_state_alone():
    torch.manual_seed(0)
    x, w = torch.randn(50, 16), torch.randn(V, 16)
    y = torch.randint(0, V, (50,))
    plain = torch.nn.functional.cross_entropy(x @ w.t(), y)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(x, w, y, 8), plain, rtol=0, atol=1e-6)
    x.requires_grad_(True)  # the weight frozen (fine-tuning a tied head's input side only)
    chunked_cross_entropy(x, w, y, 8).backward()
    g = x.grad.clone()
    x.grad = None
    torch.nn.functional.cross_entropy(x @ w.t(), y).backward()
    torch.testing.assert_close(g, x.grad, rtol=0, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_the_plain_loss():
    plain = tiny(vocab_pad_to=64)
    chunked = tiny(vocab_pad_to=64, loss_chunk=24)
    chunked.load_state_dict(plain.state_dict())
    x, y = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss_p = plain(x, y)
        _, loss_c = chunked(x, y)
    assert loss_c.dtype == torch.float32
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=1e-3)  # bf16 products: rounding only
    loss_p.backward()
    loss_c.backward()
    for name, g in grads(plain).items():
        gc = grads(chunked)[name]
        assert gc.dtype == torch.float32
        assert (gc - g).norm() <= 2e-2 * g.norm(), name


def test_an_old_run_resumed_with_padding_and_chunks_goes_on_as_the_plain_run_and_exports_the_true_vocab(
        tmp_path, text_200k, capsys):
    """A checkpoint made without the levers resumes with both (they are not part of the architecture), the
    losses follow the plain run's, and the checkpoints and export keep the true vocabulary."""
    opts = {"train.max_steps": 30, "train.eval_interval": 10, "train.log_interval": 1, "optim.schedule": "constant"}
    plain = tiny_config(tmp_path / "a", text_200k, **opts)
    train(plain, log=lambda *a: None)
    levers = tiny_config(tmp_path / "b", text_200k, **{**opts, "train.max_steps": 20})
    train(levers, log=lambda *a: None)
    levers.train.max_steps, levers.model.vocab_pad_to, levers.model.loss_chunk = 30, 64, 50
    train(levers, resume=True, log=lambda *a: None)
    for key in ("loss", "val_loss"):
        a, b = logged_losses(plain.run_dir, key), logged_losses(levers.run_dir, key)
        assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) < 1e-5, key
    V = plain.model.vocab_size
    assert V % 64 and ckpt.read_meta(ckpt.resolve_checkpoint(levers.run_dir))["config"]["model"]["vocab_pad_to"] == 64
    exports = []
    for run in (plain.run_dir, levers.run_dir):
        assert main(["export", str(run), "--out", str(run / "model.safetensors")]) == 0
        exports.append(load_file(str(run / "model.safetensors")))
    assert exports[0]["wte.weight"].shape == (V, 32)
    assert exports[0].keys() == exports[1].keys()
    for k, t in exports[0].items():
        assert t.shape == exports[1][k].shape
        torch.testing.assert_close(exports[1][k], t, rtol=0, atol=1e-4, msg=k)
    capsys.readouterr()
    for run in (plain.run_dir, levers.run_dir):  # the padded run samples through its padded head
        assert main(["sample", str(run), "--max-new-tokens", "30", "--prompt", "the ", "--strategy", "greedy"]) == 0
    a, b = capsys.readouterr().out.split("--- sample 1")[1:]
    assert a == b


@pytest.mark.parametrize("flag,value", [("model.vocab_pad_to", "0"), ("model.loss_chunk", "-1")])
def test_bad_lever_values_are_refused_naming_the_flag(flag, value):
    with pytest.raises(TinyLMError, match=f"--{flag} {value} must be"):
        build_config(overrides=[f"--{flag}", value])
