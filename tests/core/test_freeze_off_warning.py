"""SafeNeuron options without `safeneuron_freeze: true` freeze nothing, so every host
says so loudly (a WARNING of the `safeneuron` logger, which the Axolotl plugin routes into its log)."""

import logging

import pytest
from safeneuron_plugins.integrations.hf import SafeNeuronCallback
from safeneuron_plugins.integrations.llamafactory.args import prepare_train_args

from safeneuron_plugins.options import SafeNeuronOptions
from safeneuron_plugins.training import warn_if_freezing_off


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "safeneuron" and r.levelno == logging.WARNING]


def test_core_function_names_the_options_and_the_fix(caplog):
    caplog.set_level(logging.WARNING, "safeneuron")
    msg = warn_if_freezing_off(SafeNeuronOptions(safeneuron_mask="m.safetensors", safeneuron_max_prompts=16),
                               where="the test config")
    assert msg and "safeneuron_mask" in msg and "safeneuron_max_prompts" in msg and "the test config" in msg
    assert "safeneuron_freeze" in msg and "NOTHING will be frozen" in msg
    assert warnings_of(caplog) == [msg]
    assert warn_if_freezing_off(SafeNeuronOptions(safeneuron_freeze=True, safeneuron_mask="m")) is None
    assert warn_if_freezing_off(SafeNeuronOptions()) is None, "no SafeNeuron option set: nothing to say"
    msg = warn_if_freezing_off(SafeNeuronOptions(safeneuron_batch_size=16), ["safeneuron_batch_size", "safeneuron_freeze"])
    assert "safeneuron_batch_size" in msg and "safeneuron_freeze is false" in msg, "an option given at its default counts"


@pytest.mark.parametrize("kwargs", [{"safeneuron_mask": "mask.safetensors"}, {"safeneuron_forward_prune": True},
                                    {"safeneuron_freeze": False, "safeneuron_max_prompts": 16}])
def test_trainer_callback_warns_when_freezing_is_off(caplog, kwargs):
    caplog.set_level(logging.WARNING, "safeneuron")
    SafeNeuronCallback(**kwargs)
    [msg] = warnings_of(caplog)
    assert all(k in msg for k in kwargs if k != "safeneuron_freeze") and "SafeNeuronCallback" in msg
    caplog.clear()
    SafeNeuronCallback(options=SafeNeuronOptions(safeneuron_mask="m.safetensors"))
    assert len(warnings_of(caplog)) == 1


def test_trainer_callback_with_freezing_on_does_not_warn(caplog):
    caplog.set_level(logging.WARNING, "safeneuron")
    SafeNeuronCallback(safeneuron_freeze=True, safeneuron_mask="mask.safetensors")
    SafeNeuronCallback()
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("args", [{"stage": "dpo", "safeneuron_mask": "mask.safetensors"},
                                  {"stage": "sft", "safeneuron_max_prompts": 16, "safeneuron_freeze": False},
                                  ["--stage", "dpo", "--safeneuron_mask", "mask.safetensors"]])
def test_llamafactory_config_warns_when_freezing_is_off(caplog, args):
    """LLaMA-Factory's adapter splits its config with `prepare_train_args` (no LLaMA-Factory import needed)."""
    caplog.set_level(logging.WARNING, "safeneuron")
    rest, options = prepare_train_args(args)
    assert options is None
    [msg] = warnings_of(caplog)
    assert "the LLaMA-Factory config" in msg and "safeneuron_freeze" in msg
    caplog.clear()
    prepare_train_args(args, warn=False)
    assert warnings_of(caplog) == []


def test_llamafactory_config_with_freezing_or_without_our_keys_does_not_warn(caplog):
    caplog.set_level(logging.WARNING, "safeneuron")
    assert prepare_train_args({"stage": "dpo", "safeneuron_freeze": True, "safeneuron_mask": "m"})[1] is not None
    assert prepare_train_args({"stage": "safeneuron_dpo", "safeneuron_mask": "m"})[1] is not None
    assert prepare_train_args({"stage": "dpo"})[1] is None
    assert warnings_of(caplog) == []
