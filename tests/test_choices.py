"""Each config choice (a ``Literal``-typed field) has one home, its annotation: the command line and validate()
take their values from it, and each value reaches the code that implements it."""
import dataclasses
from pathlib import Path

import pytest
import torch

from tinylm.config import ARTIFACT_BITS, Config, ModelConfig, OptimConfig, arch_keys, prepared_keys, set_value, validate
from tinylm.config_check import literal_fields
from tinylm.errors import TinyLMError
from tinylm.interop.artifact import estimate
from tinylm.model.gpt import GPT
from tinylm.training.optim import build_optimizer, lr_scale

SRC = Path(__file__).resolve().parents[1] / "src" / "tinylm"

# where each choice's values are branched on (a value no code names would be accepted and then do nothing)
IMPLEMENTED_IN = {
    "model.mlp": "model/gpt.py", "model.norm": "model/gpt.py", "model.pos": "model/gpt.py",
    "model.attention": "model/attention.py", "data.doc_separator": "data/documents.py",
    "data.sampling": "data/loader.py", "data.align": "data/loader.py", "data.encoding_errors": "data/documents.py",
    "data.prefetch": "data/loader.py", "optim.name": "training/optim.py", "optim.schedule": "training/optim.py",
    "optim.decay_shape": "training/optim.py", "train.precision": "training/runtime.py",
    "train.nonfinite": "training/trainer.py", "train.artifact_bits": "interop/quantize.py",
    "sample.overflow": "generation/generate.py",
}


def choices() -> list[tuple[str, object]]:
    cfg = Config()
    return [(f"{sec.name}.{name}", value) for sec in dataclasses.fields(cfg)
            for name, values in literal_fields(getattr(cfg, sec.name)).items() for value in values]


def test_every_choice_says_where_it_is_implemented():
    assert {key for key, _ in choices()} == set(IMPLEMENTED_IN)
    assert ARTIFACT_BITS == (8, 6, 4)


@pytest.mark.parametrize("key, value", choices())
def test_each_value_is_taken_from_the_command_line_and_named_by_its_implementation(key, value):
    cfg = Config()
    set_value(cfg, key, str(value))  # a command-line string, converted to the field's type
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value and type(getattr(getattr(cfg, section), name)) is type(value)
    if isinstance(value, str):
        assert f'"{value}"' in (SRC / IMPLEMENTED_IN[key]).read_text(encoding="utf-8"), (key, value)


def test_a_value_outside_a_choice_is_refused_with_the_values_and_the_nearest_one():
    with pytest.raises(TinyLMError, match=r"^--model.mlp 'swigl' is not one of gelu_exact, gelu, swiglu, relu2; "
                                          r"did you mean swiglu\?$"):
        set_value(Config(), "model.mlp", "swigl")
    with pytest.raises(TinyLMError, match=r"^--train.artifact_bits 5 is not one of 8, 6, 4$"):
        set_value(Config(), "train.artifact_bits", "5")
    cfg = Config()
    cfg.optim.schedule = "linear"  # set in Python: validate() checks it against the same annotation
    with pytest.raises(TinyLMError, match=r"^--optim.schedule 'linear' is not one of constant, cosine, wsd"):
        validate(cfg)


def _logits(**arch) -> torch.Tensor:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16, **arch)).eval()
    with torch.no_grad():
        return model(torch.arange(12).view(1, 12) % 32)[0]


@pytest.mark.parametrize("name", ["mlp", "norm", "pos"])
def test_each_architecture_choice_builds_a_different_model(name):
    values = literal_fields(ModelConfig())[name]
    outs = [_logits(**{name: v}) for v in values]
    for i in range(len(values)):
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j]), (values[i], values[j])


def test_each_optimizer_schedule_and_decay_shape_does_something_of_its_own():
    model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16))
    kinds = {type(build_optimizer(model, OptimConfig(name=n, embed_lr=1e-3), "cpu")).__name__
             for n in literal_fields(OptimConfig())["name"]}
    assert len(kinds) == len(literal_fields(OptimConfig())["name"])
    for field in ("schedule", "decay_shape"):
        curves = {tuple(round(lr_scale(step, OptimConfig(**{field: v, "schedule": "wsd"} if field == "decay_shape"
                                                        else {field: v}), 1000), 6) for step in range(0, 1001, 50))
                  for v in literal_fields(OptimConfig())[field]}
        assert len(curves) == len(literal_fields(OptimConfig())[field]), field


def test_each_artifact_width_costs_fewer_bytes_than_the_wider_one():
    m = ModelConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64)
    sizes = [estimate(m, bits, 0, 200).total for bits in ARTIFACT_BITS]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_what_the_checkpoint_and_the_prepared_data_depend_on_is_read_from_the_fields():
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(arch_keys()) == model_fields - {"dropout", "attention_dropout", "vocab_pad_to", "loss_chunk",
                                                "attention"}
    assert set(prepared_keys()) == {"corpus", "tokenizer", "vocab_size", "val_fraction", "encoding_errors",
                                    "doc_separator", "max_bytes"}
