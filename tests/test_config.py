from pathlib import Path

import pytest

from tinylm.cli import main
from tinylm.config import (
    Config,
    build_config,
    from_dict,
    grad_accum_steps,
    load_toml,
    parse_overrides,
    to_toml,
    validate,
)
from tinylm.config_check import format_duration, parse_duration
from tinylm.errors import TinyLMError

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_converted_to_declared_types():
    cfg = build_config(None, ["--optim.lr", "3e-4", "--model.n_layer", "8", "--model.n_head", "8",
                              "--model.qk_norm", "true", "--run.name=x", "--train.max_steps", "1e3"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.n_layer == 8 and isinstance(cfg.model.n_layer, int)
    assert cfg.model.qk_norm is True
    assert cfg.run.name == "x"
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)


def test_unknown_key_lists_near_matches():
    with pytest.raises(TinyLMError, match=r"unknown config key --optim.learning_rat.*--optim.lr|unknown"):
        build_config(None, ["--optim.learning_rat", "1"])
    with pytest.raises(TinyLMError, match=r"did you mean --model\.n_layer"):
        build_config(None, ["--model.n_layers", "4"])


def test_wrong_type_names_the_flag():
    with pytest.raises(TinyLMError, match=r"--model.n_layer expects an integer, got '4.5'"):
        build_config(None, ["--model.n_layer", "4.5"])
    with pytest.raises(TinyLMError, match=r"--model.bias expects true/false"):
        build_config(None, ["--model.bias", "maybe"])


def test_override_syntax_errors():
    with pytest.raises(TinyLMError, match="needs a value"):
        parse_overrides(["--optim.lr"])
    with pytest.raises(TinyLMError, match="overrides look like"):
        parse_overrides(["lr=3"])


def test_validation_messages_name_flags():
    with pytest.raises(TinyLMError, match=r"--model.n_embd 100 is not divisible by --model.n_head 6"):
        build_config(None, ["--model.n_embd", "100"])
    with pytest.raises(TinyLMError, match=r"--train.batch_size 12 is not divisible by --train.micro_batch_size 5"):
        build_config(None, ["--train.batch_size", "12", "--train.micro_batch_size", "5"])
    cfg = build_config(None, ["--train.batch_size", "12"])
    with pytest.raises(TinyLMError, match="not divisible by 5 DDP processes"):
        validate(cfg, world_size=5)
    with pytest.raises(TinyLMError, match=r"--data\.vocab_size 100 is too small"):
        build_config(None, ["--data.tokenizer", "bpe", "--data.vocab_size", "100"])
    with pytest.raises(TinyLMError, match=r"--model\.mlp 'tanh' is not one of gelu_exact, gelu, swiglu, relu2"):
        build_config(None, ["--model.mlp", "tanh"])


def test_grad_accum_steps():
    cfg = build_config(None, ["--train.batch_size", "16", "--train.micro_batch_size", "4"])
    assert grad_accum_steps(cfg) == 4
    assert grad_accum_steps(cfg, world_size=2) == 2


def test_toml_round_trip_writes_every_default(tmp_path):
    cfg = build_config(None, ["--optim.lr", "2e-3", "--sample.prompt", 'He said "hi"\n'])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    back = load_toml(path)
    assert back == cfg
    assert from_dict(cfg.to_dict()) == cfg
    assert "warmup_steps = 100" in path.read_text()


def test_toml_unknown_key_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nn_layers = 4\n")
    with pytest.raises(TinyLMError, match=r"bad.toml: unknown config key --model.n_layers"):
        load_toml(path)
    path.write_text("lr = 3\n")
    with pytest.raises(TinyLMError, match="must be a table"):
        load_toml(path)
    with pytest.raises(TinyLMError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_unknown_section_points_to_a_real_command(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[zzz]\nqqq = 1\n")
    with pytest.raises(TinyLMError) as e:
        load_toml(path)
    assert "`tinylm config --keys` lists every key" in str(e.value) and "help-config" not in str(e.value)
    assert main(["config", "--keys"]) == 0 and "--optim.lr (default" in capsys.readouterr().out


def test_non_utf8_toml_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[sample]\nprompt = "Café"\n'.encode("latin-1"))
    with pytest.raises(TinyLMError, match=r"latin1.toml is not UTF-8 text \(byte 22: e9\)"):
        load_toml(path)
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_presets_load_and_validate(preset):
    cfg = build_config(preset)
    assert cfg != Config()


@pytest.mark.parametrize("preset", [p for p in sorted((REPO / "configs").glob("*.toml"))
                                    if build_config(p).train.time_budget], ids=lambda p: p.name)
def test_a_time_budgeted_preset_is_not_capped_by_its_step_count(preset):
    """The budget ends the run on any machine, so a faster one trains longer: max_steps allows 1000 steps a
    second, beyond any device's pace for a step (an H200 runs the tiny-Shakespeare CPU preset at ~50)."""
    t = build_config(preset).train
    assert t.max_steps >= 1000 * parse_duration(t.time_budget)


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_outside_numpys_range_is_refused_at_config_time(seed):
    with pytest.raises(TinyLMError, match=rf"--train.seed {seed} must be in \[0, 2\^32\)"):
        build_config(None, ["--train.seed", seed])
    build_config(None, ["--train.seed", str(2**32 - 1)])  # the largest seed numpy takes


@pytest.mark.parametrize("base", ["0", "1", "-5", "inf", "nan"])
def test_rope_base_must_be_above_one_at_config_time(base):
    # rope_base 0 made every rotary frequency infinite: NaN losses at step 1, blamed on the learning rate
    with pytest.raises(TinyLMError, match=r"--model.rope_base .* must be a finite number > 1"):
        build_config(None, ["--model.pos", "rope", "--model.rope_base", base])
    build_config(None, ["--model.pos", "rope", "--model.rope_base", "500000"])


@pytest.mark.parametrize("seconds, text", [(360, "6m"), (5400, "1h30m"), (90, "1m30s"), (6, "6s"), (3600, "1h"),
                                           (3661.4, "1h1m1s"), (0, "0s")])
def test_durations_are_written_as_the_readme_writes_them_and_read_back(seconds, text):
    assert format_duration(seconds) == text and parse_duration(text) == round(seconds)


def test_every_key_is_listed_with_its_default_and_its_docstring():
    from tinylm.config import all_keys, describe_keys
    lines = describe_keys().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["--" + k for k in all_keys()]
    assert all(line.split("): ", 1)[1].strip() for line in lines)  # each field has its docstring
    assert f"--optim.lr (default {Config().optim.lr}): Peak learning rate" in describe_keys()
