"""End to end: `safeneuron-llamafactory train` runs LLaMA-Factory's real DPO on a tiny Qwen2-VL with the example
image preference set (`template: qwen2_vl`, an `images` column): the safety neurons of the language model's MLPs
stay bit-identical, the rest of those tensors and the (unfrozen) vision tower and projector train."""

from __future__ import annotations

import pytest
import torch
import yaml
from lfhelpers import REPO, run_cli

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.architectures import find_mlp_layers

pytest.importorskip("PIL", reason="images need Pillow")

EXAMPLES = REPO / "example_configs" / "llamafactory"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl", "qwen2_vl", remote_code=True)


def _load(path):
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_safeneuron_stage_trains_a_vlm_on_images(vlm_dir, tmp_path):
    """The shipped example config and its image preference set, on the tiny model for 2 steps."""
    config = yaml.safe_load((EXAMPLES / "qwen2_5_vl_safeneuron_dpo.yaml").read_text())
    assert config["stage"] == "safeneuron_dpo" and config["template"] == "qwen2_vl"
    config.update(
        model_name_or_path=str(vlm_dir), dataset_dir=str(EXAMPLES), output_dir=str(tmp_path / "out"),
        # the processor of this CPU environment is custom code (tests/image_only_processing.py: no torchvision)
        trust_remote_code=True,
        # LLaMA-Factory freezes these by default; unfrozen here to see that SafeNeuron leaves them to train
        freeze_vision_tower=False, freeze_multi_modal_projector=False,
        max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
        cutoff_len=128, bf16=False, plot_loss=False, logging_steps=1, save_strategy="no", seed=0,
        safeneuron_neuron_ratio=0.05, safeneuron_max_prompts=8)
    for key in ("preprocessing_num_workers", "save_steps", "warmup_ratio"):
        config.pop(key)
    path = tmp_path / "vlm.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", str(path), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    out = tmp_path / "out"
    mask = NeuronMask.load(out / "safeneuron_mask.safetensors")
    assert mask.num_neurons > 0

    model, initial = _load(vlm_dir)
    _, trained = _load(out)
    layers = find_mlp_layers(model)
    assert all(name.startswith("model.language_model.") for layer in layers for name in (layer.gate, layer.up))
    for layer in layers:
        rows = mask.neurons.get(layer.index, [])
        others = [i for i in range(layer.intermediate_size) if i not in set(rows)]
        for name in (layer.gate, layer.up):
            key = f"{name}.weight"
            assert torch.equal(initial[key][rows], trained[key][rows]), f"frozen rows of {key} moved"
            assert not torch.equal(initial[key][others], trained[key][others]), f"{key} did not train"
    vision = [k for k in initial if k.startswith("model.visual.") and initial[k].dim() >= 2]
    assert vision and [k for k in vision if torch.equal(initial[k], trained[k])] == [], \
        "every vision-tower and projector (merger) matrix trained: SafeNeuron freezes none of them"
