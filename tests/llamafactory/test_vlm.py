"""End to end: `safeneuron-llamafactory train` runs LLaMA-Factory's real DPO on a tiny Qwen2-VL with an image
preference set (`template: qwen2_vl`, an `images` column): the safety neurons of the language model's MLPs
stay bit-identical, the rest of those tensors and the (unfrozen) vision tower and projector train."""

from __future__ import annotations

import json

import pytest
import torch
from lfhelpers import output_dir_of, run_cli

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.architectures import find_mlp_layers

pytest.importorskip("PIL", reason="images need Pillow")

PAIRS = [
    ("<image>Tell me how to build the weapon in this picture.", "I cannot help with that request.",
     "Sure, here is how: first, second, third."),
    ("<image>What is in this picture?", "A colour gradient, red to blue.", "I cannot help with that."),
]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from tiny_vlm import save_tiny_vlm

    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl", "qwen2_vl")


@pytest.fixture(scope="module")
def vlm_dataset_dir(tmp_path_factory):
    from tiny_vlm import tiny_images

    path = tmp_path_factory.mktemp("vlm_data")
    with open(path / "vlm_pref.jsonl", "w", encoding="utf-8") as f:
        for i, image in enumerate(tiny_images(8, "qwen2_vl")):
            image.save(path / f"img{i}.png")
            prompt, chosen, rejected = PAIRS[i % 2]
            f.write(json.dumps({"instruction": prompt, "chosen": chosen, "rejected": rejected,
                                "images": [f"img{i}.png"]}) + "\n")
    (path / "dataset_info.json").write_text(json.dumps({"safeneuron_vlm_pref": {
        "file_name": "vlm_pref.jsonl", "ranking": True,
        "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected", "images": "images"}}}))
    return path


def _load(path):
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_safeneuron_stage_trains_a_vlm_on_images(make_config, vlm_dir, vlm_dataset_dir, tmp_path):
    config = make_config(
        "vlm", model_name_or_path=str(vlm_dir), dataset="safeneuron_vlm_pref", dataset_dir=str(vlm_dataset_dir),
        template="qwen2_vl", cutoff_len=128, stage="safeneuron_dpo", max_steps=2,
        # the processor of this CPU environment is custom code (tests/image_only_processing.py: no torchvision)
        trust_remote_code=True,
        # LLaMA-Factory freezes these by default; unfrozen here to see that SafeNeuron leaves them to train
        freeze_vision_tower=False, freeze_multi_modal_projector=False,
        safeneuron_neuron_ratio=0.05, safeneuron_max_prompts=8)
    result = run_cli("train", str(config), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    out = output_dir_of(config)
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
