"""The two attention kernels agree, and `model.attention = auto` picks by a cached measurement."""
import json

import pytest
import torch
import torch.nn.functional as F

from tinylm.config import Config, ModelConfig, validate
from tinylm.errors import TinyLMError
from tinylm.model import attention
from tinylm.model.gpt import GPT

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def qkv(B=3, nh=2, T=9, L=9, hs=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, nh, T, hs, generator=g)
    k, v = (torch.randn(B, nh, L, hs, generator=g) for _ in range(2))
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_equals_sdpa_causal_forward_and_backward(dtype):
    a, b = qkv(dtype=dtype), qkv(dtype=dtype)
    ya, yb = attention.attend(*a, "causal", 0.0, "sdpa"), attention.attend(*b, "causal", 0.0, "math")
    assert yb.dtype == dtype
    torch.testing.assert_close(yb, ya, **TOL[dtype])
    w = torch.randn(ya.shape).to(dtype)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(gb.grad, ga.grad, **TOL[dtype])


def test_explicit_equals_sdpa_with_the_cache_masks():
    # a decode step (no mask), a chunk after stored keys (T, L) and per-row padding masks (B, 1, T, L)
    q, k, v = qkv(T=1, L=7)
    torch.testing.assert_close(attention.attend(q, k, v, None, 0.0, "math"),
                               attention.attend(q, k, v, None, 0.0, "sdpa"), atol=1e-5, rtol=1e-5)
    q, k, v = qkv(T=4, L=7)
    causal = torch.ones(4, 7, dtype=torch.bool).tril(3)
    padded = causal.expand(3, 1, 4, 7).clone()
    padded[1, :, :, :2] = False  # row 1: its first two slots are padding
    for mask in (causal, padded):
        got = attention.attend(q, k, v, mask, 0.0, "math")
        torch.testing.assert_close(got, attention.attend(q, k, v, mask, 0.0, "sdpa"), atol=1e-5, rtol=1e-5)
    ref = F.scaled_dot_product_attention(q[1:2], k[1:2, :, 2:], v[1:2, :, 2:], attn_mask=causal[:, 2:])
    torch.testing.assert_close(got[1:2], ref, atol=1e-5, rtol=1e-5)  # padding is really invisible


def test_explicit_dropout_drops_weights_only_in_training():
    q, k, v = qkv()
    torch.manual_seed(0)
    dropped = attention.attend(q, k, v, "causal", 0.5, "math")
    assert not torch.allclose(dropped, attention.attend(q, k, v, "causal", 0.0, "math"))


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)])
def test_model_gives_the_same_logits_and_gradients_with_either_kernel(kw):
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw)
    torch.manual_seed(0)
    sdpa = GPT(cfg)
    math_model = GPT(cfg)
    math_model.load_state_dict(sdpa.state_dict())
    math_model.set_attention("math")
    x, y = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    (la, loss_a), (lb, loss_b) = sdpa(x, y), math_model(x, y)
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(sdpa.named_parameters(), math_model.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_explicit_kinds_are_kept_and_auto_is_sdpa_until_chosen():
    model = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, attention="math"))
    assert model.choose_attention(torch.device("cpu"), torch.float32, 4) == "math"
    auto = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    assert auto.blocks[0].attn.kernel == "sdpa"
    assert attention.choose("auto", torch.device("cuda"), torch.bfloat16, (4, 2, 16, 8)) == "sdpa"


def test_auto_measures_once_per_machine_and_shape_and_keeps_the_faster(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_measure(dtype, shape, dropout):
        calls.append(shape)
        return {"sdpa": 1.0, "math": 0.5 if shape[0] == 8 else 0.95}  # 0.95: within the margin, not chosen

    monkeypatch.setattr(attention, "measure", fake_measure)
    cpu = torch.device("cpu")
    assert attention.choose("auto", cpu, torch.bfloat16, (8, 4, 128, 64)) == "math"
    assert attention.choose("auto", cpu, torch.bfloat16, (8, 4, 128, 64)) == "math"
    assert attention.choose("auto", cpu, torch.bfloat16, (2, 4, 128, 64)) == "sdpa"
    assert calls == [(8, 4, 128, 64), (2, 4, 128, 64)]  # the repeat came from the cache
    cache = json.loads((tmp_path / "tinylm" / "attention.json").read_text())
    assert sum("causal 8x4x128x64" in key for key in cache) == 1


def test_measure_times_both_kernels():
    times = attention.measure(torch.float32, (2, 2, 16, 8), trials=1)
    assert set(times) == {"sdpa", "math"} and all(t > 0 for t in times.values())


def test_training_with_dropout_is_probed_apart_and_leaves_the_random_state(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    seen = []
    real = attention.measure

    def spy(dtype, shape, dropout):
        seen.append(dropout)
        return real(dtype, shape, dropout, trials=1)

    monkeypatch.setattr(attention, "measure", spy)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32, dropout=0.2))
    state = torch.random.get_rng_state()
    model.choose_attention(torch.device("cpu"), torch.float32, batch=2, training=True)
    model.choose_attention(torch.device("cpu"), torch.float32, batch=2)  # evaluation and generation: no dropout
    assert torch.equal(torch.random.get_rng_state(), state)  # probing must not change what training draws
    assert seen == [0.2, 0.0]
    keys = json.loads((tmp_path / "tinylm" / "attention.json").read_text())
    assert sum("dropout 0.2" in key for key in keys) == 1 and len(keys) == 2


def test_attention_dropout_off_keeps_dropout_on_the_residual_branches_only(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    seen = []
    real = attention.attend

    def spy(q, k, v, mask, dropout_p, kind):
        seen.append(dropout_p)
        return real(q, k, v, mask, dropout_p, kind)

    import tinylm.model.gpt
    monkeypatch.setattr(tinylm.model.gpt, "attend", spy)
    x = torch.randint(0, 32, (2, 16))
    for weights in (True, False):
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32, dropout=0.5,
                                attention_dropout=weights, attention="math"))
        model.train()
        a, b = model(x)[0], model(x)[0]
        assert not torch.equal(a, b)  # residual and embedding dropout stay on either way
    assert seen == [0.5, 0.5, 0.0, 0.0]
    probed = []
    monkeypatch.setattr(attention, "measure",
                        lambda dtype, shape, dropout: probed.append(dropout) or {"sdpa": 1, "math": 2})
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32, dropout=0.5,
                            attention_dropout=False))
    assert model.choose_attention(torch.device("cpu"), torch.float32, 2, training=True) == "sdpa"
    assert probed == [0.0]  # the probe times the kernel training will run: without dropout on the weights


def test_unknown_kind_is_refused_by_the_config():
    cfg = Config()
    cfg.model.attention = "flash"
    with pytest.raises(TinyLMError, match=r"--model\.attention 'flash' is not one of auto, sdpa, math"):
        validate(cfg)
