"""Exact freezing with a PEFT LoRA adapter.

The base weights are frozen already; freezing neuron j keeps row j of the adapter's B (output side:
gate/up) or column j of A (input side: down_proj) at exactly zero, so the merged delta B·A is zero
on the frozen rows and columns. DoRA (per-row magnitudes) and non-zero-B initialisations cannot keep
a frozen neuron unchanged and are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import MLPLayer, ParamSlice
from ..errors import UnsupportedSetupError


def is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer")


def lora_slices(module: nn.Module, module_name: str, s: ParamSlice,
                 output_side: bool) -> list[tuple[str, nn.Parameter, int, int]]:
    """Translate a base-weight slice to the LoRA adapter parameters that produce it."""
    if getattr(module, "use_dora", {}) and any(module.use_dora.values()):
        raise UnsupportedSetupError(
            f"{module_name} uses DoRA: its per-row magnitude rescales whole rows, so frozen neurons "
            "cannot stay exactly unchanged. Use plain LoRA (use_dora=False) or full fine-tuning with "
            "safeneuron_freeze.")
    out = []
    for adapter in module.lora_A:
        if output_side:
            lin = module.lora_B[adapter]
            out.append((f"{module_name}.lora_B.{adapter}.weight", lin.weight, 0, s.offset))
            if getattr(lin, "bias", None) is not None:
                out.append((f"{module_name}.lora_B.{adapter}.bias", lin.bias, 0, s.offset))
        else:
            lin = module.lora_A[adapter]
            out.append((f"{module_name}.lora_A.{adapter}.weight", lin.weight, 1, s.offset))
    return out


def targets(model: nn.Module, layer: MLPLayer, include_down: bool):
    """(name, param, dim, offset, output_side) for every trainable parameter slice of the layer."""
    plan = [(s, True) for s in layer.input_slices()]
    if include_down:
        plan += [(s, False) for s in layer.output_slices()]
    for s, output_side in plan:
        module = model.get_submodule(s.module)
        if is_lora(module):
            if s.name != "weight":
                continue  # the base bias is frozen by PEFT; lora_B's bias is handled with the weight
            for name, p, dim, offset in lora_slices(module, s.module, s, output_side):
                yield name, p, dim, offset, output_side
            base = getattr(module.base_layer, s.name, None)
            if base is not None and base.requires_grad:
                yield f"{s.module}.base_layer.{s.name}", base, s.dim, s.offset, output_side
            continue
        p = getattr(module, s.name, None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            yield f"{s.module}.{s.name}", p, s.dim, s.offset, output_side


@torch.no_grad()
def prepare_lora_entries(name: str, local: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    """Check and set the LoRA entries about to be frozen: B must be zero on them (the adapter does not
    change the neurons yet), A's columns are zeroed (input side)."""
    if "lora_B" not in name and "lora_A" not in name:
        return
    values = local.index_select(dim, index)
    if "lora_B" in name and values.abs().max() > 0:
        raise UnsupportedSetupError(
            f"{name}: the LoRA B matrix is not zero on frozen neurons at the start, so the "
            "adapter already changes them (a non-zero-B initialisation such as PiSSA, OLoRA, "
            "LoftQ or CorDA). Use init_lora_weights=True (or 'gaussian') with safeneuron_freeze.")
    if "lora_A" in name:
        local.index_fill_(dim, index, 0.0)  # input side: zero columns j of A
