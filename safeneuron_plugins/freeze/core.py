"""Exact freezing of safety neurons during training (paper, Sec. 3.2).

Two mechanisms together make the frozen weights bit-identical whatever the optimizer does:
1. a gradient hook zeroes the frozen entries' gradient before it is accumulated, so they add
   nothing to the gradient norm (clipping, logging) and the optimizer's moments stay zero;
2. after every optimizer step, the frozen entries are written back from a snapshot taken when
   freezing began (decoupled weight decay, e.g. AdamW's, moves rows whose gradient is zero).
Extra memory is the snapshot of the frozen entries plus their index vectors; no dense masks.

Where the values live depends on the training set-up, and the restore writes every copy: the
parameter itself (plain / DDP), this rank's shard (FSDP2) or DeepSpeed's partitions and fp32 master
weights (``engines.py``). Under DeepSpeed the engine steps inside ``backward``; restoring after the
Trainer's (no-op) optimizer step is still after the update. LoRA adapters: ``lora.py``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..architectures import MLPLayer
from ..distributed import gathered_now, local_tensor, to_local_indices, zero_stage
from ..mask import NeuronMask
from .engines import FrozenEntries, ZeroSlots, grad_hook, largest_change, zero3_entries
from .lora import prepare_lora_entries, targets

logger = logging.getLogger("safeneuron")


class NeuronFreezer:
    """Keeps the weights producing the masked neurons bit-identical during training.

    Call :meth:`attach` before the first backward pass, :meth:`restore` after every optimizer
    step, :meth:`detach` at the end. :meth:`extend` adds neurons (iterative mode): already
    frozen entries keep their original values, new ones are frozen at their current values.
    Under FSDP2 (DTensor parameters sharded on dim 0) each rank freezes the rows of its own shard:
    gradients are zeroed in a post-accumulate hook and the shard is restored in place.
    """

    def __init__(self, model: nn.Module, layers: list[MLPLayer], mask: NeuronMask, *,
                 include_down_proj: bool = False) -> None:
        self.model = model
        self.layers = {l.index: l for l in layers}
        self.mask = mask
        self.include_down_proj = include_down_proj
        self.entries: dict[int, FrozenEntries] = {}   # keyed by id(param)
        self._handles: list = []
        self._hooked: set[int] = set()

    # --- set-up --------------------------------------------------------------------------
    def attach(self) -> NeuronFreezer:
        self._add(self.mask)
        return self

    def extend(self, mask: NeuronMask) -> NeuronMask:
        """Freeze also the neurons of ``mask``; returns the union now in force."""
        self.mask = self.mask.union(mask)
        self._add(mask)
        return self.mask

    def _add(self, mask: NeuronMask) -> None:
        grouped: dict[int, tuple[str, nn.Parameter, int, list[int]]] = {}
        for layer_index, neurons in mask.neurons.items():
            if not neurons:
                continue
            layer = self.layers[layer_index]
            for name, p, dim, offset, _ in targets(self.model, layer, self.include_down_proj):
                key = id(p)
                if key not in grouped:
                    grouped[key] = (name, p, dim, [])
                grouped[key][3].extend(offset + j for j in neurons)
        for name, p, dim, idx in grouped.values():
            self._freeze(name, p, dim, idx)

    @torch.no_grad()
    def _freeze(self, name: str, p: nn.Parameter, dim: int, idx: list[int]) -> None:
        key = id(p)
        old = self.entries.get(key)
        new = sorted(set(idx) - (set(old.index.tolist()) if old else set()))
        if not new:
            return
        if zero_stage(p) == 3:
            entry = old or FrozenEntries(name, p, dim, torch.empty(0, dtype=torch.long), None)
            entry.index, entry.zero, entry.snapshot = zero3_entries(name, p, dim, entry.index, new)
            self.entries[key] = entry
            self._hook(key, p, entry)
            return
        local = local_tensor(p)
        new = to_local_indices(p, dim, new)
        if not new:
            return  # none of these rows is in this rank's shard (FSDP2)
        new_index = torch.tensor(new, dtype=torch.long, device=local.device)
        prepare_lora_entries(name, local, dim, new_index)
        snap_new = local.index_select(dim, new_index).clone()
        if old is None:
            entry = FrozenEntries(name, p, dim, new_index, snap_new)
            self.entries[key] = entry
        else:
            old.index = torch.cat([old.index, new_index])
            old.snapshot = torch.cat([old.snapshot, snap_new], dim=dim)
            entry = old
        if zero_stage(p):  # ZeRO-1/2: also this rank's fragment of the fp32 master weights
            entry.zero = ZeroSlots.build(p, dim, entry.index)
            if "lora_A" in name:  # the master copy of A's frozen columns must be zero too
                entry.zero.hp_values.zero_()
                entry.zero.restore(p)
        self._hook(key, p, entry)

    def _hook(self, key: int, p: nn.Parameter, entry: FrozenEntries) -> None:
        if key not in self._hooked:
            self._hooked.add(key)
            self._handles.append(grad_hook(p, entry))

    # --- during training -----------------------------------------------------------------
    @torch.no_grad()
    def restore(self) -> None:
        """Write the frozen entries back (call after every optimizer step)."""
        for e in self.entries.values():
            if e.snapshot is not None and gathered_now(e.param):
                local = local_tensor(e.param)
                local.index_copy_(e.dim, e.index, e.snapshot.to(local.dtype))
            if e.zero is not None:
                e.zero.restore(e.param)

    def zero_optimizer_state(self, optimizer) -> None:
        """Zero the optimizer state of frozen entries (needed when freezing starts mid-training)."""
        if optimizer is None:
            return
        opt = getattr(optimizer, "optimizer", optimizer)
        with torch.no_grad():
            for e in self.entries.values():
                if e.zero is not None:
                    continue  # DeepSpeed keeps flat states; the restore keeps the entries exact anyway
                state = opt.state.get(e.param, {})
                for value in state.values():
                    if torch.is_tensor(value) and value.shape == e.param.shape:
                        local_tensor(value).index_fill_(e.dim, e.index, 0)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._hooked.clear()

    # --- reporting -----------------------------------------------------------------------
    @property
    def num_frozen_parameters(self) -> int:
        return sum(e.numel for e in self.entries.values())

    def per_layer_report(self) -> list[dict]:
        rows = []
        for layer_index, neurons in sorted(self.mask.neurons.items()):
            prefix = self.layers[layer_index]
            names = {prefix.up, prefix.down, prefix.gate}
            params = sum(e.numel for e in self.entries.values()
                         if any(e.name.startswith(str(n) + ".") for n in names if n))
            rows.append({"layer": layer_index, "neurons": len(neurons), "parameters": params})
        return rows

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """Per parameter, the largest absolute change of its frozen entries since they were frozen, over the
        copies this process holds (0.0 while freezing holds; infinite when an entry became NaN)."""
        out = {}
        for e in self.entries.values():
            worst = 0.0
            if e.snapshot is not None and gathered_now(e.param):
                now = local_tensor(e.param).index_select(e.dim, e.index)
                worst = largest_change(now, e.snapshot)
            if e.zero is not None:
                worst = max(worst, e.zero.drift(e.param))
            out[e.name] = worst
        return out

    def max_drift(self) -> float:
        """The largest change of any frozen entry (0.0 when freezing holds)."""
        return max(self.drift().values(), default=0.0)

    def check(self) -> list[str]:
        """Names of parameters whose frozen entries differ from the snapshot (empty when exact)."""
        return [name for name, change in self.drift().items() if change != 0]
