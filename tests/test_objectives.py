"""The objective contract: every module of `objectives/` registers an `Objective` under its own
name, whose options are a validated dataclass; the run config's `objective` block holds exactly
the named objective's keys, and a key it does not have is an error naming the objective."""

import dataclasses

import pytest

import objectives
from configs import base
from t5x_lite import models


def test_every_module_registers_itself_under_its_name():
    assert set(objectives.names()) == {"span_corruption", "causal_lm", "masked_lm", "seq2seq"}
    for name in objectives.names():
        objective = objectives.get(name)
        assert objective.name == name
        assert objective.architecture in models.ASSEMBLIES
        assert dataclasses.is_dataclass(objective.config)
        assert objective.options() == objective.config()
    with pytest.raises(ValueError, match="objective.name='nope'.*span_corruption"):
        objectives.get("nope")


def test_an_option_of_another_objective_is_an_error_naming_this_one():
    with pytest.raises(ValueError, match=r"objective 'causal_lm' has no option 'noise_density'"):
        objectives.get("causal_lm").options(inputs_length=64, noise_density=0.1)


def test_load_config_fills_the_named_objectives_keys():
    block = objectives.load_config(None, []).objective.to_dict()
    span = objectives.get("span_corruption").defaults()
    assert set(block) == set(span) | set(objectives.COMMON_KEYS)
    clm = objectives.load_config("configs/decoder_clm.py", ["--config.objective.pack=false"])
    assert clm.objective.pack is False and clm.objective.inputs_length == 128
    assert "noise_density" not in clm.objective


def test_switching_objective_on_the_command_line_switches_its_keys():
    config = objectives.load_config(
        None,
        ["--config.objective.inputs_length=64", "--config.objective.name=seq2seq"],
    )
    block = config.objective.to_dict()
    assert block["name"] == "seq2seq" and block["inputs_length"] == 64 and block["pack"] is True
    assert "noise_density" not in block
    with pytest.raises(KeyError, match="objective.mask_rate"):
        objectives.load_config(None, ["--config.objective.mask_rate=0.2"])


def test_a_recipe_with_another_objectives_key_is_an_error(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "from configs import base\n"
        "def get_config(arg=None):\n"
        "    c = base.get_config()\n"
        "    c.objective = base.objective('masked_lm', mask_rate=0.2, pack=True)\n"
        "    return c\n"
    )
    with pytest.raises(ValueError, match=r"objective 'masked_lm' has no option 'pack'"):
        objectives.load_config(str(recipe), [])
    assert base.objective("masked_lm").name == "masked_lm"
