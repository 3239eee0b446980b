"""Axolotl's config validation with the SafeNeuron plugin: the args model is the core's schema,
bad values and typos fail with the core's message, and the example configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import PLUGIN, axolotl_train, safeneuron_lines

from safeneuron_plugins.options import option_fields

EXAMPLES = Path(__file__).resolve().parents[2] / "example_configs" / "axolotl"


def validate(cfg: dict) -> dict:
    """Axolotl's own config validation (plugins registered, args merged), no model loaded."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(cfg)
    prepare_plugins(cfg)
    return validate_config(cfg)


@pytest.fixture
def base_cfg(tiny_model_dir, prefs_path) -> dict:
    return {"base_model": str(tiny_model_dir), "rl": "dpo", "output_dir": "./out",
            "datasets": [{"path": str(prefs_path), "ds_type": "json", "split": "train",
                          "type": "chatml.prompt_pairs"}],
            "micro_batch_size": 1, "num_epochs": 1, "learning_rate": 1e-5, "sequence_len": 256}


def test_args_model_is_the_core_schema():
    from safeneuron_plugins.integrations.axolotl.args import SafeNeuronArgs

    fields = SafeNeuronArgs.model_fields
    assert list(fields) == [f.name for f in option_fields()]
    for f in option_fields():
        assert fields[f.name].default == f.default, f.name
        assert fields[f.name].description == f.metadata["help"], f.name


def test_valid_options_are_kept_and_coerced(base_cfg):
    cfg = validate({**base_cfg, **safeneuron_lines(safeneuron_freeze="true", safeneuron_method="safeneuron",
                                                   safeneuron_tau_es="2.5", safeneuron_neuron_ratio=0.01)})
    assert cfg.safeneuron_freeze is True
    assert cfg.safeneuron_tau_es == 2.5
    assert cfg.safeneuron_neuron_ratio == 0.01
    assert cfg.safeneuron_tau_sas == 2.0  # the core's default


def test_thresholds_with_the_default_attribution_scorer_are_refused(base_cfg):
    with pytest.raises(ValueError, match="safeneuron_method: safeneuron"):
        validate({**base_cfg, **safeneuron_lines(safeneuron_freeze=True, safeneuron_tau_es=2.5)})


@pytest.mark.parametrize("options, message", [
    ({"safeneuron_neuron_ratio": 2}, "`safeneuron_neuron_ratio` is 2, outside its range (0.0, 1.0]"),
    ({"safeneuron_neuron_ratio": 0}, "`safeneuron_neuron_ratio` is 0, outside its range (0.0, 1.0]"),
    ({"safeneuron_nueron_ratio": 0.1},
     "Unknown option `safeneuron_nueron_ratio` in the Axolotl config. Did you mean `safeneuron_neuron_ratio`?"),
    ({"safeneuron_freez": True}, "Did you mean `safeneuron_freeze`?"),
    ({"safeneuron_method": "probe"}, "`safeneuron_method` is 'probe'; choose one of 'safeneuron', 'neurostrike', 'attribution'"),
    ({"safeneuron_freeze": "maybe"}, "`safeneuron_freeze` must be true or false"),
    ({"safeneuron_tau_es": "high"}, "`safeneuron_tau_es` must be a number"),
    ({"safeneuron_reidentify_steps": 0}, "`safeneuron_reidentify_steps` is 0, outside its range"),
    ({"safeneuron_method": "neurostrike", "safeneuron_neuron_ratio": 0.1},
     "applies to safeneuron_method='safeneuron' or 'attribution' only"),
])
def test_bad_options_fail_validation(base_cfg, options, message):
    with pytest.raises(ValueError) as info:
        validate({**base_cfg, **safeneuron_lines(**options)})
    assert message in str(info.value)


def test_cli_rejects_a_typo_before_loading_the_model(make_config):
    cfg = make_config("typo", **safeneuron_lines(safeneuron_freeze=True, safeneuron_nueron_ratio=0.1))
    proc = axolotl_train(cfg, check=False)
    assert proc.returncode != 0
    assert "Did you mean `safeneuron_neuron_ratio`?" in proc.stdout + proc.stderr
    assert not (cfg.parent / "out-typo" / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["smollm2_safeneuron_dpo.yml", "qwen2_dpo_safeneuron.yml"])
def test_example_configs_validate(name):
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    assert PLUGIN in raw["plugins"] and raw["safeneuron_freeze"] is True
    cfg = validate(raw)
    assert cfg.rl == "dpo" and cfg.safeneuron_freeze is True
