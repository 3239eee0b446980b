"""Bad input: every mistake is reported with the key at fault, before any training starts."""

from __future__ import annotations

import pytest
from lfhelpers import run_cli
from safeneuron_plugins.integrations.llamafactory import SAFENEURON_STAGE, prepare_train_args

from safeneuron_plugins.errors import OptionsError


def test_unknown_key_is_an_error_naming_it_from_the_command_line(make_config, tmp_path):
    config = make_config("typo", stage="safeneuron_dpo", safeneuron_tau_ess=2.0)
    result = run_cli("train", str(config), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "safeneuron_tau_ess" in result.stderr and "safeneuron_tau_es" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key,value", [
    ("safeneuron_tau_es", -1.0),
    ("safeneuron_selection", "everything"),
    ("safeneuron_neuron_ratio", 1.5),
    ("safeneuron_freeze", "maybe"),
    ("safeneuron_max_prompts", "many"),
])
def test_bad_value_names_the_key(key, value):
    with pytest.raises(OptionsError, match=key):
        prepare_train_args({"stage": SAFENEURON_STAGE, key: value})


@pytest.mark.parametrize("stage", ["sft", "pt", "rm", "ppo", "kto"])
def test_freezing_with_a_non_dpo_stage_is_refused(stage):
    with pytest.raises(OptionsError, match=rf"safeneuron_freeze.*stage: {stage}"):
        prepare_train_args({"stage": stage, "safeneuron_freeze": True})


def test_non_dpo_stage_with_freezing_off_just_strips_our_keys():
    rest, options = prepare_train_args({"stage": "sft", "safeneuron_freeze": False, "safeneuron_neuron_ratio": 0.02})
    assert rest == {"stage": "sft"} and options is None


def test_safeneuron_stage_with_freeze_false_is_a_contradiction():
    with pytest.raises(OptionsError, match="safeneuron_freeze"):
        prepare_train_args({"stage": SAFENEURON_STAGE, "safeneuron_freeze": False})


def test_safeneuron_stage_means_dpo_with_freezing():
    rest, options = prepare_train_args({"stage": SAFENEURON_STAGE, "safeneuron_neuron_ratio": 0.02, "lr": 1})
    assert rest == {"stage": "dpo", "lr": 1}
    assert options.safeneuron_freeze and options.safeneuron_neuron_ratio == 0.02


def test_command_line_argument_form():
    argv = ["--stage", SAFENEURON_STAGE, "--safeneuron_neuron_ratio", "0.02", "--model_name_or_path", "m",
            "--safeneuron_freeze", "--safeneuron_mask=mask.safetensors"]
    rest, options = prepare_train_args(argv)
    assert rest == ["--stage", "dpo", "--model_name_or_path", "m"]
    assert options.safeneuron_neuron_ratio == 0.02 and options.safeneuron_mask == "mask.safetensors"


def test_thresholds_with_the_default_attribution_scorer_are_refused():
    with pytest.raises(OptionsError, match="safeneuron_method: safeneuron"):
        prepare_train_args({"stage": SAFENEURON_STAGE, "safeneuron_tau_es": 2.5})
    _, options = prepare_train_args({"stage": SAFENEURON_STAGE, "safeneuron_method": "safeneuron", "safeneuron_tau_es": 2.5})
    assert options.safeneuron_tau_es == 2.5


def test_config_without_our_keys_is_passed_through_untouched():
    config = {"stage": "dpo", "model_name_or_path": "m", "learning_rate": 1e-5}
    rest, options = prepare_train_args(config)
    assert rest == config and options is None
