"""Forward pruning: zero chosen neurons' activations while a block runs.

The neuron pruning attack (``evaluate/attack.py``), training's forward pruning
(``safeneuron_forward_prune``) and pair generation from a pruned model (``pairs.py``) all use
:func:`pruned`: a forward pre-hook on each layer's down projection zeroes the masked input channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .architectures import MLPLayer
from .mask import NeuronMask


@contextlib.contextmanager
def pruned(model: nn.Module, layers: list[MLPLayer], mask: NeuronMask, *,
           only_training: bool = False, probability: float = 1.0, pass_probability: float = 1.0) -> Iterator[None]:
    """Zero the masked neurons' activations (the input channels of down_proj) while in the block.

    ``only_training`` prunes only modules in training mode and never while a PEFT adapter is
    disabled (that forward pass is the DPO reference model). ``probability`` < 1: each masked
    neuron is zeroed with that probability, drawn anew (torch's generator) in every forward pass.
    ``pass_probability`` < 1: a whole forward pass of ``model`` prunes with that probability (every
    masked neuron of every layer, or none), drawn once per pass, so the unpruned network trains too."""
    handles = []
    by_index = {l.index: l for l in layers}
    # trl's reference pass of a PEFT model without ref_model is the policy with its adapters disabled;
    # any LoRA layer tells, also when down_proj itself is not a LoRA target
    lora = next((m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")), None)
    this_pass = {"prune": True}
    if pass_probability < 1.0:
        def draw(module, args, kwargs):
            # drawn on the policy's passes only: a recomputed layer (gradient checkpointing) reuses its pass's draw
            if not (only_training and _reference_pass(module, lora)):
                this_pass["prune"] = bool(torch.rand(()) < pass_probability)
        handles.append(model.register_forward_pre_hook(draw, with_kwargs=True))
    try:
        for layer_index, neurons in mask.neurons.items():
            if not neurons:
                continue
            layer = by_index[layer_index]
            down = model.get_submodule(layer.down)
            handles.append(down.register_forward_pre_hook(
                _prune_hook(torch.tensor(neurons, dtype=torch.long), only_training, probability, lora, this_pass)))
        yield
    finally:
        for h in handles:
            h.remove()


def _reference_pass(module: nn.Module, lora: nn.Module | None) -> bool:
    """Not a pass of the training policy: eval mode, or a PEFT model with its adapters disabled. ``is True``: a PEFT
    layer's ``disable_adapters`` is a flag, a transformers model's a method (not a sign of anything)."""
    return (not module.training or getattr(module, "disable_adapters", False) is True
            or (lora is not None and lora.disable_adapters))


def _prune_hook(index: torch.Tensor, only_training: bool, probability: float = 1.0, lora: nn.Module | None = None,
                this_pass: dict | None = None):
    cache: dict = {}

    def hook(module, args):
        if (only_training and _reference_pass(module, lora)) or (this_pass is not None and not this_pass["prune"]):
            return None
        x = args[0]
        idx = cache.get(x.device)
        if idx is None:
            idx = cache[x.device] = index.to(x.device)
        if probability < 1.0:
            idx = idx[torch.rand(idx.numel(), device=x.device) < probability]
        return (x.index_fill(-1, idx, 0),) + tuple(args[1:])

    return hook
