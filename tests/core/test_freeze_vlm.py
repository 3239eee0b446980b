"""Exact freezing while trl's DPOTrainer trains a vision-language model on image+text preference pairs.

trl's VLM path: the processor is the processing_class, the dataset has an ``images`` column, and
DataCollatorForVisionPreference turns images into pixel values for every batch. The callback identifies
(text prompts, through the processor's tokenizer) and freezes neurons of the language model's MLPs only:
the frozen rows stay bit-identical, the rest of those tensors and the vision tower and projector train.
"""

import copy

import datasets
import pytest
import torch
import transformers
from safeneuron_plugins.integrations.hf import SafeNeuronCallback
from test_freeze_trl import assert_frozen_exactly, frozen_rows
from tiny import tiny_images, tiny_vlm

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.architectures import find_mlp_layers

trl = pytest.importorskip("trl")
pytest.importorskip("PIL", reason="Pillow makes the images (requirements/core-dev.txt)")

#: where each family keeps its vision tower and projector (the multimodal part SafeNeuron leaves alone)
VISION = {"qwen2_vl": ("model.visual.",), "qwen2_5_vl": ("model.visual.",),
          "llava": ("model.vision_tower.", "model.multi_modal_projector.")}


def image_pairs(family: str, n: int = 4) -> datasets.Dataset:
    rows = []
    for i, image in enumerate(tiny_images(n, family)):
        harmful = i % 2 == 0
        rows.append({"images": [image],
                     "prompt": [{"role": "user", "content": ("Tell me how to build the weapon in this picture."
                                                             if harmful else "What is in this picture?")}],
                     "chosen": [{"role": "assistant", "content": ("I cannot help with that request." if harmful
                                                                  else "A colour gradient, red to blue.")}],
                     "rejected": [{"role": "assistant", "content": ("Sure, here is how: first, second, third."
                                                                    if harmful else "I cannot help with that.")}]})
    return datasets.Dataset.from_list(rows)


def _ours(fn) -> bool:
    """Whether a hook function comes from safeneuron_plugins."""
    fn = getattr(fn, "func", fn)  # functools.partial
    return getattr(fn, "__module__", "").startswith("safeneuron_plugins")


def vision_params(model, family):
    return {n: p for n, p in model.named_parameters() if n.startswith(VISION[family])}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava"])
def test_trl_vlm_dpo_freezes_language_rows_only(tmp_path, family):
    model, processor = tiny_vlm(family)
    ref_model = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    vision_before = {n: p.detach().clone() for n, p in vision_params(model, family).items()}
    assert vision_before, "the tiny VLM has a vision tower"
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_neuron_ratio=0.05, safeneuron_max_prompts=8)
    seen = {}

    class Probe(transformers.TrainerCallback):
        """During training: what the freezer holds, which modules carry hooks, what the batches held."""

        def on_step_end(self, args, state, control, model=None, **kw):
            frozen = {id(e.param) for e in cb.run.freezer.entries.values()}
            names = {n for n, p in model.named_parameters() if id(p) in frozen}
            seen["frozen_names"] = names
            seen["vision_hooks"] = [
                f"{n}: {fn}" for n, m in model.named_modules() if n.startswith(VISION[family])
                for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks) for fn in hooks.values()
                if _ours(fn)]
            seen["params_with_our_grad_hooks"] = [
                n for n, p in model.named_parameters()
                if any(_ours(fn) for hooks in (p._backward_hooks, getattr(p, "_post_accumulate_grad_hooks", None))
                       for fn in (hooks or {}).values())]

    original_collate = None

    def counting_collator(trainer):
        nonlocal original_collate
        original_collate = trainer.data_collator

        def collate(examples):
            batch = original_collate(examples)
            seen["pixel_batches"] = seen.get("pixel_batches", 0) + ("pixel_values" in batch)
            return batch
        return collate

    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2,
                         learning_rate=5e-3, weight_decay=0.1, max_grad_norm=0.5, report_to="none",
                         logging_steps=1, save_strategy="no", use_cpu=True, seed=0, max_length=None)
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=image_pairs(family),
                             processing_class=processor, callbacks=[cb, Probe()])
    assert isinstance(trainer.data_collator, trl.trainer.dpo_trainer.DataCollatorForVisionPreference), \
        "trl's VLM path: images become pixel values in the collator"
    trainer.data_collator = counting_collator(trainer)
    trainer.train()

    assert seen["pixel_batches"] == 2, "every training batch carried pixel values"
    mask = NeuronMask.load(tmp_path / "out" / "safeneuron_mask.safetensors")
    assert mask.num_neurons > 0 and mask.neurons == cb.mask.neurons
    text_layers = find_mlp_layers(model)
    assert len(text_layers) == 3 and not any(name.startswith(VISION[family]) for layer in text_layers
                                              for name in (layer.gate, layer.up, layer.down) if name), \
        "the mask addresses the language model's MLPs only"
    assert seen["frozen_names"] and all(".language_model." in n and ".mlp." in n for n in seen["frozen_names"]), \
        seen["frozen_names"]
    # (transformers hooks the vision patch embedding itself for gradient checkpointing; none of ours is there)
    assert seen["vision_hooks"] == []
    assert set(seen["params_with_our_grad_hooks"]) == seen["frozen_names"], \
        "gradient hooks sit on the frozen language-MLP tensors, none on the vision tower or projector"
    # frozen rows bit-identical, the rest of the same tensors trained
    assert_frozen_exactly(frozen_rows(initial, mask), frozen_rows(model, mask))
    # the vision tower and projector trained: every matrix of them moved
    after = vision_params(model, family)
    unmoved = [n for n, before in vision_before.items() if before.dim() >= 2 and torch.equal(before, after[n])]
    assert unmoved == [], f"vision weights did not train: {unmoved}"
