"""The strategy -> settings table: one source for config checks, processors, the CLI and the report."""
import math
from dataclasses import replace

import pytest

from tinylm.config import Config, SampleConfig, validate
from tinylm.errors import TinyLMError
from tinylm.generation.generate import sample_settings
from tinylm.generation.sampling import Processor, build_processors
from tinylm.generation.strategies import SETTINGS, STRATEGIES, check_sample, describe_strategy

from conftest import imported_modules


def test_config_depends_on_no_torch():
    """config reads the strategy table at import: the table stays torch-free, so config does."""
    assert "torch" not in imported_modules("tinylm.config")


@pytest.mark.parametrize("key, bad", [("temperature", 0.0), ("top_k", -1), ("top_p", 1.5), ("min_p", 1.0),
                                      ("repetition_penalty", math.inf), ("frequency_penalty", math.nan),
                                      ("presence_penalty", math.inf), ("no_repeat_ngram", -2)])
def test_a_config_and_a_processor_refuse_the_same_values_in_the_same_words(key, bad):
    with pytest.raises(TinyLMError) as from_config:
        validate(Config(sample=replace(SampleConfig(), **{key: bad})))
    with pytest.raises(TinyLMError) as from_processor:
        Processor(key, bad)
    assert str(from_config.value) == f"--sample.{from_processor.value}"


def test_off_values_are_valid_in_a_config_but_make_no_processor():
    s = SampleConfig(strategy="sample", top_k=0, top_p=1.0, min_p=0.0, no_repeat_ngram=0)
    validate(Config(sample=s))
    assert [p.setting for p in build_processors(s)] == ["temperature"]
    with pytest.raises(TinyLMError, match="top_k 0 must be >= 1; 0 turns it off"):
        Processor("top_k", 0)


def test_every_setting_a_strategy_reads_is_a_sample_key():
    keys = set(SampleConfig.__dataclass_fields__)
    for name, strategy in STRATEGIES.items():
        assert set(strategy.reads) <= keys and set(strategy.needs) <= set(strategy.reads), name
    assert set(SETTINGS) <= keys


def test_messages_name_the_commands_own_flags():
    flags = {"strategy": None, "top_k": None, "top_p": None, "temperature": 0.0}
    with pytest.raises(TinyLMError, match=r"^--temperature 0.0 must be > 0$"):
        sample_settings(Config(), [], flags)
    with pytest.raises(TinyLMError, match=r"^--sample.temperature 0.0 must be > 0$"):
        sample_settings(Config(), ["--sample.temperature", "0"])
    with pytest.raises(TinyLMError, match=r"^--strategy top_p needs --top-p, e.g. --top-p 0.9 \(top_p 1.0 turns"):
        sample_settings(Config(), [], {**flags, "temperature": None, "strategy": "top_p"})
    with pytest.raises(TinyLMError, match=r"^--sample.strategy top_p needs --sample.top_p, e.g."):
        check_sample(SampleConfig(strategy="top_p"))
    with pytest.raises(TinyLMError, match="--top-k does nothing with --strategy greedy"):
        sample_settings(Config(), [], {**flags, "temperature": None, "strategy": "greedy", "top_k": 5})


def test_settings_from_a_command_land_in_the_config():
    cfg = Config()
    sample_settings(cfg, ["--sample.no_repeat_ngram", "3", "--sample.top_p", "0.5"], {"top_p": 0.9, "top_k": None})
    assert (cfg.sample.no_repeat_ngram, cfg.sample.top_p, cfg.sample.top_k) == (3, 0.9, 200)  # the flag wins
    with pytest.raises(TinyLMError, match=r"only --sample\.\* settings apply"):
        sample_settings(cfg, ["--model.n_layer", "3"])
    assert cfg.model.n_layer == Config().model.n_layer


def test_the_description_shows_what_the_strategy_reads_and_is_on():
    s = SampleConfig(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3, num_beams=8)
    assert describe_strategy(s) == "strategy sample (temperature 0.7, top_k 50, top_p 0.9, repetition_penalty 1.3)"
    assert describe_strategy(replace(s, strategy="top_p")) == "strategy top_p (temperature 0.7, top_p 0.9, " \
                                                               "repetition_penalty 1.3)"
    assert describe_strategy(replace(s, strategy="greedy", repetition_penalty=1.0)) == "strategy greedy"
