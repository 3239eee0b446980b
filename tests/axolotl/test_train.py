"""End-to-end: the real `axolotl train` CLI on a tiny local model, with and without SafeNeuron.

Every check reads the saved output: frozen rows of gate/up projections are bit-identical to the
initial model while everything else (unfrozen rows of the same tensors included) trained; the mask
is in output_dir; without the plugin or with safeneuron_freeze: false the weights are exactly those
of plain Axolotl.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import axolotl_train, safeneuron_lines
from safetensors.torch import load_file

from safeneuron_plugins import NeuronMask

MASK = "safeneuron_mask.safetensors"
PROJ = ("gate_proj", "up_proj")


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def frozen_keys(mask: NeuronMask):
    """(parameter name, frozen row indices) of a Llama-family model."""
    for layer, rows in mask.neurons.items():
        for proj in PROJ:
            yield f"model.layers.{layer}.mlp.{proj}.weight", torch.tensor(rows, dtype=torch.long)


def assert_frozen_exactly(initial: dict, trained: dict, mask: NeuronMask) -> None:
    assert mask.num_neurons > 0
    for key, rows in frozen_keys(mask):
        assert torch.equal(trained[key][rows], initial[key][rows]), f"frozen rows of {key} moved"
        free = torch.ones(initial[key].shape[0], dtype=torch.bool)
        free[rows] = False
        assert not torch.equal(trained[key][free], initial[key][free]), f"free rows of {key} did not train"


def assert_all_trained(initial: dict, trained: dict) -> None:
    unchanged = [k for k in initial if torch.equal(initial[k], trained[k])]
    assert not unchanged, f"weights that did not train: {unchanged}"


@pytest.fixture(scope="module")
def plain_run(make_config) -> Path:
    """Plain Axolotl DPO: no plugin."""
    cfg = make_config("plain")
    axolotl_train(cfg)
    return cfg.parent / "out-plain"


@pytest.fixture(scope="module")
def freeze_run(make_config) -> tuple[Path, str]:
    """SafeNeuron on, neurons identified at train start; a checkpoint at step 2 for the resume test."""
    cfg = make_config("freeze", save_strategy="steps", save_steps=2,
                      **safeneuron_lines(safeneuron_freeze=True, safeneuron_neuron_ratio=0.25,
                                         safeneuron_max_prompts=16))
    proc = axolotl_train(cfg)
    return cfg.parent / "out-freeze", proc.stdout + proc.stderr


def test_dpo_freezes_safety_neurons_exactly(tiny_model_dir, plain_run, freeze_run):
    out, log = freeze_run
    mask = NeuronMask.load(out / MASK)
    assert mask.num_neurons == 48  # 25% of 3 layers x 64 neurons
    initial, trained = weights(tiny_model_dir), weights(out)
    assert_frozen_exactly(initial, trained, mask)
    assert_all_trained(initial, trained)
    assert (out / "checkpoint-2" / MASK).is_file()
    assert "SafeNeuron: freezing 48 safety neurons" in log  # the core's report reaches Axolotl's log
    # Freezing changed the run (it is not a no-op), everything else trained as usual.
    assert not torch.equal(trained["model.layers.0.mlp.gate_proj.weight"],
                           weights(plain_run)["model.layers.0.mlp.gate_proj.weight"])


def test_freeze_false_is_plain_axolotl(make_config, plain_run):
    cfg = make_config("off", **safeneuron_lines(safeneuron_freeze=False, safeneuron_neuron_ratio=0.05))
    axolotl_train(cfg)
    out = cfg.parent / "out-off"
    plain, off = weights(plain_run), weights(out)
    assert plain.keys() == off.keys()
    for key in plain:
        assert torch.equal(plain[key], off[key]), key
    assert not (out / MASK).exists()


def test_resume_reuses_the_mask_of_the_checkpoint(make_config, tiny_model_dir, freeze_run):
    """Resuming from checkpoint-2 keeps freezing the checkpoint's neurons (a different ratio in the
    config would select other neurons if they were identified again) up to the initial values."""
    out, _ = freeze_run
    cfg = make_config("resume", resume_from_checkpoint=str(out / "checkpoint-2"), max_steps=4,
                      **safeneuron_lines(safeneuron_freeze=True, safeneuron_neuron_ratio=0.1,
                                         safeneuron_max_prompts=16))
    axolotl_train(cfg)
    resumed = cfg.parent / "out-resume"
    mask = NeuronMask.load(resumed / MASK)
    assert mask.neurons == NeuronMask.load(out / MASK).neurons
    assert_frozen_exactly(weights(tiny_model_dir), weights(resumed), mask)


@pytest.mark.parametrize("rl, extra", [("ipo", {}), ("simpo", {"simpo_gamma": 0.5})])
def test_other_preference_methods_with_a_precomputed_mask(make_config, tiny_model_dir, freeze_run,
                                                          rl, extra):
    """IPO (trl's DPO trainer, loss_type ipo) and SimPO (trl's CPO trainer, no reference model),
    with `safeneuron_mask` instead of identification at train start."""
    out, _ = freeze_run
    cfg = make_config(rl, rl=rl, **extra, **safeneuron_lines(safeneuron_freeze=True,
                                                             safeneuron_mask=str(out / MASK)))
    axolotl_train(cfg)
    result = cfg.parent / f"out-{rl}"
    mask = NeuronMask.load(result / MASK)
    assert mask.neurons == NeuronMask.load(out / MASK).neurons
    initial, trained = weights(tiny_model_dir), weights(result)
    assert_frozen_exactly(initial, trained, mask)
    assert_all_trained(initial, trained)


def test_lora_delta_on_frozen_rows_is_zero(make_config, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_config("lora", adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      lora_target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
                      learning_rate=1e-2,
                      **safeneuron_lines(safeneuron_freeze=True, safeneuron_neuron_ratio=0.25,
                                         safeneuron_max_prompts=16))
    axolotl_train(cfg)
    out = cfg.parent / "out-lora"
    mask = NeuronMask.load(out / MASK)
    assert (out / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, out).merge_and_unload().state_dict()
    assert_frozen_exactly(initial, merged, mask)
