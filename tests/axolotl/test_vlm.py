"""Vision-language models in Axolotl: its preference (RL) path takes no processor and no images, so the
plugin refuses `safeneuron_freeze` with `rl` on a VLM, through Axolotl's own config loading and CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import axolotl_train, offline_env, safeneuron_lines

REFUSAL = "safeneuron_freeze: true with `rl: dpo` on a vision-language model"


@pytest.fixture(scope="module")
def tiny_vlm_dir(workdir):
    pytest.importorskip("PIL", reason="the tiny VLM's image processor needs Pillow")
    from tiny import save_tiny_model

    return save_tiny_model(workdir / "tiny-qwen2-vl", "qwen2_vl", remote_code=True)


#: Axolotl's own config loading (validation, then normalisation, which sets cfg.is_multimodal), then the plugin
#: manager's first hook of `axolotl train` / `axolotl preprocess`, before any data or model is loaded
_HOOK = """
import sys
from axolotl.cli.config import load_cfg
from axolotl.integrations.base import PluginManager
from safeneuron_plugins.errors import UnsupportedSetupError
for path in sys.argv[1:]:
    cfg = load_cfg(path)
    try:
        meta = PluginManager.get_instance().load_datasets(cfg, preprocess=False)
        print("RESULT", bool(cfg.is_multimodal), cfg.model_config_type, "accepted", meta)
    except UnsupportedSetupError as err:
        print("RESULT", bool(cfg.is_multimodal), cfg.model_config_type, "refused", err)
"""


def _first_hook(*configs) -> list[str]:
    """One RESULT line per config, all loaded in one process (one Axolotl import)."""
    proc = subprocess.run([sys.executable, "-c", _HOOK, *map(str, configs)], env=offline_env(),
                          cwd=configs[0].parent, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == len(configs), proc.stdout[-3000:] + proc.stderr[-3000:]
    return lines


def test_vlm_dpo_with_freezing_is_refused_by_the_cli(make_config, tiny_vlm_dir):
    config = make_config("vlm-dpo", base_model=str(tiny_vlm_dir), **safeneuron_lines(safeneuron_freeze=True))
    proc = axolotl_train(config, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert REFUSAL in out, out[-4000:]
    assert "SafeNeuronCallback" in out and "safeneuron-llamafactory train" in out and "template: qwen2_vl" in out
    assert not (config.parent / "out-vlm-dpo" / "model.safetensors").exists()
    assert "Loading model" not in out.split(REFUSAL)[0], "refused before the model is loaded"


def test_refusal_needs_a_vlm_and_freezing(make_config, tiny_vlm_dir):
    refused, no_freeze, text = _first_hook(
        make_config("vlm-hook", base_model=str(tiny_vlm_dir), **safeneuron_lines(safeneuron_freeze=True)),
        # the same VLM without freezing: the plugin stays out of Axolotl's way (it only warns about unused options)
        make_config("vlm-no-freeze", base_model=str(tiny_vlm_dir),
                    **safeneuron_lines(safeneuron_freeze=False, safeneuron_neuron_ratio=0.05)),
        # a text model with freezing: not refused
        make_config("text-hook", **safeneuron_lines(safeneuron_freeze=True)))
    assert refused.startswith("RESULT True qwen2_vl refused ") and REFUSAL in refused
    assert no_freeze == "RESULT True qwen2_vl accepted None"
    assert text == "RESULT False llama accepted None"
