"""Exact freezing of safety neurons during training, and forward pruning.

Two mechanisms together make the frozen weights bit-identical whatever the optimizer does:
1. a gradient hook zeroes the frozen entries' gradient before it is accumulated, so they add
   nothing to the gradient norm (clipping, logging) and the optimizer's moments stay zero;
2. after every optimizer step, the frozen entries are written back from a snapshot taken when
   freezing began (decoupled weight decay, e.g. AdamW's, moves rows whose gradient is zero).
Extra memory is the snapshot of the frozen entries plus their index vectors; no dense masks.

Where the values live depends on the training set-up, and the restore writes every copy:
- plain / DDP: the parameter itself;
- FSDP2: this rank's dim-0 shard (DTensor local tensor); gradients are zeroed after accumulation;
- DeepSpeed ZeRO-1/2: the full low-precision parameter on every rank *and* this rank's fragment of
  the fp32 master weights (``param._hp_mapping``), which the engine copies back after each step;
- DeepSpeed ZeRO-3: this rank's partition of the parameter (``param.ds_tensor``) and of the fp32
  master weights (``safe_get/set_local_fp32_param``); the gradient hook sees the gathered gradient.
Under DeepSpeed the engine steps inside ``backward``; restoring after the Trainer's (no-op)
optimizer step is still after the update.

With a PEFT LoRA adapter the base weights are frozen already; freezing neuron j keeps row j of
the adapter's B (output side: gate/up) or column j of A (input side: down_proj) at exactly zero,
so the merged delta B·A is zero on the frozen rows and columns.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .architectures import MLPLayer, ParamSlice
from .errors import UnsupportedSetupError
from .mask import NeuronMask

logger = logging.getLogger("safeneuron")


@dataclass
class FrozenEntries:
    """The frozen slices of one parameter: ``param.index_select(dim, index) == snapshot`` always."""

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor
    snapshot: torch.Tensor | None
    zero: _ZeroSlots | None = None   # DeepSpeed: this rank's copies of the frozen entries

    @property
    def numel(self) -> int:
        shape = _full_shape(self.param)
        return self.index.numel() * (shape.numel() // shape[self.dim])


def _full_shape(p: torch.Tensor) -> torch.Size:
    return getattr(p, "ds_shape", None) or p.shape


def _gathered_now(p: torch.Tensor) -> bool:
    """False for a ZeRO-3 parameter whose full data is released (only its partition exists now)."""
    return not hasattr(p, "ds_id") or p.data.numel() == p.ds_numel


def _zero_stage(p: torch.Tensor) -> int:
    """3 for a ZeRO-3 partitioned parameter, 1 for a ZeRO-1/2 (or DeepSpeed bf16) one, else 0."""
    if hasattr(p, "ds_id"):
        return 3
    if getattr(p, "_hp_mapping", None) is not None:
        return 1
    return 0


@dataclass
class _ZeroSlots:
    """Flat positions of the frozen entries inside this rank's DeepSpeed partitions, and their values.

    ``lp`` indexes the flat partition of the model's own parameter (ZeRO-3 only: ZeRO-1/2 keep the full
    parameter, restored through the regular snapshot); ``hp`` indexes the flat fp32 master fragment."""

    lp: torch.Tensor | None
    lp_values: torch.Tensor | None
    hp: torch.Tensor
    hp_values: torch.Tensor

    @classmethod
    @torch.no_grad()
    def build(cls, p: nn.Parameter, dim: int, index: torch.Tensor) -> _ZeroSlots:
        shape = _full_shape(p)
        flat = torch.arange(shape.numel(), dtype=torch.long).view(shape).index_select(dim, index.cpu()).flatten()
        zero3 = _zero_stage(p) == 3
        if zero3:  # this rank's partition of the flattened parameter
            import torch.distributed as dist

            size = p.ds_tensor.ds_numel
            lo = size * dist.get_rank(group=p.ds_process_group)
        else:  # this rank's fragment of it in the fp32 master partition
            lo, size = p._hp_mapping.lp_fragment_address.start, p._hp_mapping.lp_fragment_address.numel
        pos = flat[(flat >= lo) & (flat < lo + size)] - lo
        hp = _hp_fragment(p)
        hp_pos = pos.to(hp.device)
        hp_values = hp.reshape(-1).index_select(0, hp_pos).clone()
        if not zero3:
            return cls(None, None, hp_pos, hp_values)
        lp = pos.to(p.ds_tensor.device)
        return cls(lp, p.ds_tensor.data.view(-1).index_select(0, lp).clone(), hp_pos, hp_values)

    @torch.no_grad()
    def restore(self, p: nn.Parameter) -> None:
        if self.lp is not None:  # ZeRO-3
            p.ds_tensor.data.view(-1).index_copy_(0, self.lp, self.lp_values)
        if self.hp.numel():
            hp = _hp_fragment(p)
            hp.view(-1).index_copy_(0, self.hp, self.hp_values)
            if self.lp is not None:
                from deepspeed.utils import safe_set_local_fp32_param

                safe_set_local_fp32_param(p, hp)  # a no-op copy unless the optimizer state is offloaded

    @torch.no_grad()
    def drifted(self, p: nn.Parameter) -> bool:
        if self.lp is not None and not torch.equal(p.ds_tensor.data.view(-1).index_select(0, self.lp),
                                                   self.lp_values):
            return True
        return not torch.equal(_hp_fragment(p).reshape(-1).index_select(0, self.hp), self.hp_values)


def _hp_fragment(p: nn.Parameter) -> torch.Tensor:
    """This rank's fp32 master values of ``p``, flat (a view, except for ZeRO-3 with offloaded optimizer state)."""
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param

        return safe_get_local_fp32_param(p)
    return p._hp_mapping.get_hp_fragment()


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer")


def _lora_slices(module: nn.Module, module_name: str, s: ParamSlice,
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


def _targets(model: nn.Module, layer: MLPLayer, include_down: bool):
    """(name, param, dim, offset, output_side) for every trainable parameter slice of the layer."""
    plan = [(s, True) for s in layer.input_slices()]
    if include_down:
        plan += [(s, False) for s in layer.output_slices()]
    for s, output_side in plan:
        module = model.get_submodule(s.module)
        if _is_lora(module):
            if s.name != "weight":
                continue  # the base bias is frozen by PEFT; lora_B's bias is handled with the weight
            for name, p, dim, offset in _lora_slices(module, s.module, s, output_side):
                yield name, p, dim, offset, output_side
            base = getattr(module.base_layer, s.name, None)
            if base is not None and base.requires_grad:
                yield f"{s.module}.base_layer.{s.name}", base, s.dim, s.offset, output_side
            continue
        p = getattr(module, s.name, None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            yield f"{s.module}.{s.name}", p, s.dim, s.offset, output_side


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
            for name, p, dim, offset, _ in _targets(self.model, layer, self.include_down_proj):
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
        if _zero_stage(p) == 3:
            self._freeze_zero3(key, name, p, dim, new, old)
            return
        local = _local(p)
        new = _to_local_indices(p, dim, new)
        if not new:
            return  # none of these rows is in this rank's shard (FSDP2)
        new_index = torch.tensor(new, dtype=torch.long, device=local.device)
        if "lora_B" in name or "lora_A" in name:
            values = local.index_select(dim, new_index)
            if "lora_B" in name and values.abs().max() > 0:
                raise UnsupportedSetupError(
                    f"{name}: the LoRA B matrix is not zero on frozen neurons at the start, so the "
                    "adapter already changes them (a non-zero-B initialisation such as PiSSA, OLoRA, "
                    "LoftQ or CorDA). Use init_lora_weights=True (or 'gaussian') with safeneuron_freeze.")
            if "lora_A" in name:
                local.index_fill_(dim, new_index, 0.0)  # input side: zero columns j of A
        snap_new = local.index_select(dim, new_index).clone()
        if old is None:
            entry = FrozenEntries(name, p, dim, new_index, snap_new)
            self.entries[key] = entry
        else:
            old.index = torch.cat([old.index, new_index])
            old.snapshot = torch.cat([old.snapshot, snap_new], dim=dim)
            entry = old
        if _zero_stage(p):  # ZeRO-1/2: also this rank's fragment of the fp32 master weights
            entry.zero = _ZeroSlots.build(p, dim, entry.index)
            if "lora_A" in name:  # the master copy of A's frozen columns must be zero too
                entry.zero.hp_values.zero_()
                entry.zero.restore(p)
        self._hook(key, p, entry)

    def _freeze_zero3(self, key: int, name: str, p: nn.Parameter, dim: int, new: list[int],
                      old: FrozenEntries | None) -> None:
        """ZeRO-3: the parameter is partitioned; freeze the entries of this rank's partition.

        Already frozen entries hold their original values (restored after every step), so the slots
        are rebuilt over the whole index set."""
        if "lora_" in name:
            raise UnsupportedSetupError(
                f"{name}: LoRA adapters under DeepSpeed ZeRO-3 are not supported by safeneuron_freeze. "
                "Use ZeRO-1/2, DDP or FSDP2 for LoRA training.")
        new_index = torch.tensor(new, dtype=torch.long)
        entry = old or FrozenEntries(name, p, dim, torch.empty(0, dtype=torch.long), None)
        entry.index = torch.cat([entry.index, new_index])
        entry.zero = _ZeroSlots.build(p, dim, entry.index)
        # persistent parameters (below stage3_param_persistence_threshold) stay gathered on every rank once
        # fetched, and the forward pass reads that full copy: it is restored too (whenever it is gathered)
        entry.snapshot = None
        if getattr(p, "ds_persist", False) or _gathered_now(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                entry.snapshot = p.data.index_select(dim, entry.index.to(p.device)).clone()
        self.entries[key] = entry
        self._hook(key, p, entry)

    def _hook(self, key: int, p: nn.Parameter, entry: FrozenEntries) -> None:
        if key not in self._hooked:
            self._hooked.add(key)
            self._handles.append(_grad_hook(p, entry))

    # --- during training -----------------------------------------------------------------
    @torch.no_grad()
    def restore(self) -> None:
        """Write the frozen entries back (call after every optimizer step)."""
        for e in self.entries.values():
            if e.snapshot is not None and _gathered_now(e.param):
                local = _local(e.param)
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
                        _local(value).index_fill_(e.dim, e.index, 0)

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

    def check(self) -> list[str]:
        """Names of parameters whose frozen entries differ from the snapshot (empty when exact)."""
        bad = []
        with torch.no_grad():
            for e in self.entries.values():
                if e.snapshot is not None and _gathered_now(e.param):
                    now = _local(e.param).index_select(e.dim, e.index)
                    if not torch.equal(now, e.snapshot.to(now.dtype)):
                        bad.append(e.name)
                        continue
                if e.zero is not None and e.zero.drifted(e.param):
                    bad.append(e.name)
        return bad


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (FSDP2 shard), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _to_local_indices(p: torch.Tensor, dim: int, indices: list[int]) -> list[int]:
    """Global indices along ``dim`` -> indices into this rank's local shard (FSDP2 DTensor)."""
    if not hasattr(p, "to_local"):
        return indices
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    lo, hi = offset[dim], offset[dim] + shape[dim]
    return [i - lo for i in indices if lo <= i < hi]


def _grad_hook(p: nn.Parameter, entry: FrozenEntries):
    if hasattr(p, "to_local"):
        # FSDP2 DTensor: Tensor.register_hook does not fire; zero the local shard after accumulation
        def post(param: torch.Tensor) -> None:
            if param.grad is not None:
                g = _local(param.grad)
                g.index_fill_(entry.dim, entry.index.to(g.device), 0)

        return p.register_post_accumulate_grad_hook(post)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        # global indices: the gradient is full-size also under DeepSpeed ZeRO-3 (gathered parameter)
        return grad.index_fill(entry.dim, entry.index.to(grad.device), 0)

    return p.register_hook(hook)


@contextlib.contextmanager
def pruned(model: nn.Module, layers: list[MLPLayer], mask: NeuronMask, *,
           only_training: bool = False, probability: float = 1.0) -> Iterator[None]:
    """Zero the masked neurons' activations (the input channels of down_proj) while in the block.

    ``only_training`` prunes only modules in training mode and never while a PEFT adapter is
    disabled (that forward pass is the DPO reference model). ``probability`` < 1: each masked
    neuron is zeroed with that probability, drawn anew (torch's generator) in every forward pass."""
    handles = []
    by_index = {l.index: l for l in layers}
    # trl's reference pass of a PEFT model without ref_model is the policy with its adapters disabled;
    # any LoRA layer tells, also when down_proj itself is not a LoRA target
    lora = next((m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")), None)
    try:
        for layer_index, neurons in mask.neurons.items():
            if not neurons:
                continue
            layer = by_index[layer_index]
            down = model.get_submodule(layer.down)
            handles.append(down.register_forward_pre_hook(
                _prune_hook(torch.tensor(neurons, dtype=torch.long), only_training, probability, lora)))
        yield
    finally:
        for h in handles:
            h.remove()


def _prune_hook(index: torch.Tensor, only_training: bool, probability: float = 1.0, lora: nn.Module | None = None):
    cache: dict = {}

    def hook(module, args):
        if only_training and (not module.training or getattr(module, "disable_adapters", False)
                              or (lora is not None and lora.disable_adapters)):
            return None
        x = args[0]
        idx = cache.get(x.device)
        if idx is None:
            idx = cache[x.device] = index.to(x.device)
        if probability < 1.0:
            idx = idx[torch.rand(idx.numel(), device=x.device) < probability]
        return (x.index_fill(-1, idx, 0),) + tuple(args[1:])

    return hook
