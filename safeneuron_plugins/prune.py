"""Forward pruning: zero chosen neurons' activations while a block runs.

The neuron pruning attack (``evaluate/attack.py``), training's forward pruning
(``safeneuron_forward_prune``) and pair generation from a pruned model (``pairs.py``) all use
:func:`pruned`: a forward pre-hook on each layer's down projection zeroes the masked input channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .architectures import MLPLayer
from .errors import UnsupportedSetupError
from .mask import NeuronMask


@contextlib.contextmanager
def pruned(model: nn.Module, layers: list[MLPLayer], mask: NeuronMask, *,
           only_training: bool = False, probability: float = 1.0, pass_probability: float = 1.0,
           rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
           passes: PassCount | None = None) -> Iterator[None]:
    """Zero the masked neurons' activations (the input channels of down_proj) while in the block.

    ``only_training`` prunes only modules in training mode and never while a PEFT adapter is
    disabled (that forward pass is the DPO reference model). ``probability`` < 1: each masked
    neuron is zeroed with that probability, drawn anew (torch's generator) in every forward pass.
    ``pass_probability`` < 1: a whole forward pass of ``model`` prunes with that probability (every
    masked neuron of every layer, or none), drawn once per pass, so the unpruned network trains too. ``rows``: a
    function of a pass's ``input_ids`` (batch, length) giving the rows to prune (bool, batch), e.g.
    :class:`PromptRows`; the other rows of the pass run unpruned. A layer recomputed by gradient checkpointing
    reuses its pass's draw and rows. ``passes``: counts the policy's passes and those that pruned (for the
    training dashboards)."""
    handles = []
    by_index = {l.index: l for l in layers}
    # trl's reference pass of a PEFT model without ref_model is the policy with its adapters disabled;
    # any LoRA layer tells, also when down_proj itself is not a LoRA target
    lora = next((m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")), None)
    this_pass: dict = {"prune": True, "rows": None, "any_row": False}
    if pass_probability < 1.0 or rows is not None or passes is not None:
        def draw(module, args, kwargs):
            # drawn on the policy's passes only: a recomputed layer (gradient checkpointing) reuses its pass's draw
            if only_training and _reference_pass(module, lora):
                return
            if pass_probability < 1.0:
                this_pass["prune"] = bool(torch.rand(()) < pass_probability)
            if rows is not None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                    raise UnsupportedSetupError(
                        "safeneuron_forward_prune_prompts picks the examples to prune by their token ids, but this "
                        "model's forward pass got no input_ids of shape (batch, length) (inputs_embeds?). Unset "
                        "safeneuron_forward_prune_prompts to prune every example.")
                found = rows(ids)
                # on the pass's device once, and whether any row prunes as a Python bool: no copy or sync per layer
                this_pass["rows"], this_pass["any_row"] = found.to(ids.device), bool(found.any())
            if passes is not None:
                passes.seen += 1
                passes.pruned += this_pass["prune"] and (rows is None or this_pass["any_row"])
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


@dataclass
class PassCount:
    """Forward passes of the training policy seen by :func:`pruned` (``passes=``), and how many of them pruned."""

    seen: int = 0
    pruned: int = 0


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
        rows = this_pass["rows"] if this_pass is not None else None
        if rows is None:
            return (x.index_fill(-1, idx, 0),) + tuple(args[1:])
        if not this_pass["any_row"]:
            return None
        if x.dim() < 2 or x.shape[0] != rows.shape[0]:
            raise UnsupportedSetupError(
                f"safeneuron_forward_prune_prompts: the pass has {rows.shape[0]} rows of input_ids but the MLP sees "
                f"{tuple(x.shape)} (packed or padding-free batches?). Train with padded batches, or unset "
                "safeneuron_forward_prune_prompts to prune every example.")
        keep = rows.to(x.device).view(-1, *([1] * (x.dim() - 1)))  # no copy: the draw put rows on the pass's device
        return (torch.where(keep, x.index_fill(-1, idx, 0), x),) + tuple(args[1:])

    return hook


class PromptRows:
    """Which rows of a batch of token ids hold one of ``prompts``: for :func:`pruned`'s ``rows``.

    A prompt is looked for by its own tokens without the first and the last (a chat template's neighbouring
    characters can merge with them), so the row of a chat-formatted example whose user turn is the prompt
    matches. Counts the rows it saw and matched (``seen``, ``matched``)."""

    def __init__(self, tokenizer, prompts: Sequence[str]) -> None:
        cores = []
        for text in prompts:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            cores.append(tuple(ids[1:-1] if len(ids) >= 4 else ids))
        cores = [c for c in cores if c]
        if not cores:
            raise UnsupportedSetupError("safeneuron_forward_prune_prompts holds no prompt with any token.")
        self.n = min(3, min(len(c) for c in cores))
        self.by_start: dict[tuple, list[tuple]] = {}
        for c in cores:
            self.by_start.setdefault(c[:self.n], []).append(c)
        self.seen = self.matched = 0

    def holds(self, row: Sequence[int]) -> bool:
        n = self.n
        for i in range(len(row) - n + 1):
            for core in self.by_start.get(tuple(row[i:i + n]), ()):
                if tuple(row[i:i + len(core)]) == core:
                    return True
        return False

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        found = torch.tensor([self.holds(r) for r in input_ids.tolist()], dtype=torch.bool)
        self.seen += len(found)
        self.matched += int(found.sum())
        return found
