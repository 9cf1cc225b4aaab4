import math

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.model.gpt import GPT

VARIANTS = [dict(), dict(norm="rmsnorm", pos="rope", mlp="swiglu", qk_norm=True),
            dict(mlp="relu2", bias=True, tie_embeddings=False)]


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))


@pytest.mark.parametrize("kw", VARIANTS)
def test_initial_loss_is_near_ln_vocab(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 97, (4, 16))
    _, loss = model(idx, torch.randint(0, 97, (4, 16)))
    assert abs(loss.item() - math.log(97)) < 0.1


@pytest.mark.parametrize("kw", VARIANTS)
def test_causal_future_tokens_do_not_change_past_logits(kw):
    model = tiny(**kw).eval()
    a = torch.randint(0, 97, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 97
    la, _ = model(a)
    lb, _ = model(b)
    torch.testing.assert_close(la[0, :10], lb[0, :10])
    assert not torch.allclose(la[0, 10:], lb[0, 10:])


def test_rope_model_depends_on_order_of_tokens():
    model = tiny(pos="rope").eval()
    a = torch.tensor([[1, 2, 3, 4]])
    la, _ = model(a)
    lb, _ = model(a.flip(1))
    assert not torch.allclose(la[0, -1], lb[0, -1])


def test_parameter_counts():
    cfg = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)
    tied = GPT(ModelConfig(**cfg))
    untied = GPT(ModelConfig(**cfg, tie_embeddings=False))
    C, V, T, L = 32, 97, 16, 2
    per_block = 2 * C + (3 * C * C + C * C) + 2 * (4 * C * C)  # 2 LayerNorm weights, attention, MLP (no bias)
    assert tied.num_params(non_embedding=True) == L * per_block + C  # + final norm
    assert tied.num_params() == tied.num_params(non_embedding=True) + V * C + T * C
    assert untied.num_params() == tied.num_params() + V * C
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)
    assert tied.lm_head.weight is tied.wte.weight


def test_flops_per_token_standard_count():
    model = tiny()
    n = model.num_params(non_embedding=True) + 97 * 32
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16


def test_swiglu_keeps_parameter_count_close_to_gelu():
    g, s = tiny(), tiny(mlp="swiglu")
    assert abs(s.num_params() - g.num_params()) / g.num_params() < 0.02


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the context length 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_only_in_training_mode():
    model = tiny(dropout=0.5)
    x = torch.randint(0, 97, (2, 16))
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
