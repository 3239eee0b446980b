"""DeepSpeed ZeRO and FSDP2 specifics of exact freezing: where a frozen entry's copies live on this rank.

:class:`FrozenEntries` is one parameter's frozen slices with their snapshot and, under DeepSpeed, their
:class:`ZeroSlots`; :mod:`.core` builds, restores and checks them.

- FSDP2: the parameter is a DTensor sharded on dim 0; each rank freezes the rows of its own shard, and
  the gradient is zeroed in a post-accumulate hook (``Tensor.register_hook`` does not fire there);
- DeepSpeed ZeRO-1/2: besides the full low-precision parameter, this rank's fragment of the fp32
  master weights (``param._hp_mapping``), which the engine copies back after each step;
- DeepSpeed ZeRO-3: this rank's partition of the parameter (``param.ds_tensor``) and of the fp32
  master weights (``safe_get/set_local_fp32_param``); the gradient hook sees the gathered gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..distributed import full_shape, gathered_now, local_tensor, zero_stage
from ..errors import UnsupportedSetupError


@dataclass
class ZeroSlots:
    """Flat positions of the frozen entries inside this rank's DeepSpeed partitions, and their values.

    ``lp`` indexes the flat partition of the model's own parameter (ZeRO-3 only: ZeRO-1/2 keep the full
    parameter, restored through the regular snapshot); ``hp`` indexes the flat fp32 master fragment."""

    lp: torch.Tensor | None
    lp_values: torch.Tensor | None
    hp: torch.Tensor
    hp_values: torch.Tensor

    @classmethod
    @torch.no_grad()
    def build(cls, p: nn.Parameter, dim: int, index: torch.Tensor) -> ZeroSlots:
        shape = full_shape(p)
        flat = torch.arange(shape.numel(), dtype=torch.long).view(shape).index_select(dim, index.cpu()).flatten()
        zero3 = zero_stage(p) == 3
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
    def drift(self, p: nn.Parameter) -> float:
        """The largest change of the frozen entries in this rank's partitions (0.0 when they hold)."""
        worst = 0.0
        if self.lp is not None:
            worst = largest_change(p.ds_tensor.data.view(-1).index_select(0, self.lp), self.lp_values)
        return max(worst, largest_change(_hp_fragment(p).reshape(-1).index_select(0, self.hp), self.hp_values))


@dataclass
class FrozenEntries:
    """The frozen slices of one parameter: ``param.index_select(dim, index) == snapshot`` always."""

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor
    snapshot: torch.Tensor | None
    zero: ZeroSlots | None = None   # DeepSpeed: this rank's copies of the frozen entries

    @property
    def numel(self) -> int:
        shape = full_shape(self.param)
        return self.index.numel() * (shape.numel() // shape[self.dim])


def largest_change(now: torch.Tensor, then: torch.Tensor) -> float:
    """max |now - then| in float32: 0.0 when equal element by element (infinities included); an entry that
    became NaN counts as an infinite change, so it never reads as no change."""
    if not now.numel():
        return 0.0
    then = then.to(now.device, now.dtype)
    change = torch.where(now == then, 0.0, (now.float() - then.float()).abs())
    return float(change.nan_to_num(nan=float("inf")).max())


def _hp_fragment(p: nn.Parameter) -> torch.Tensor:
    """This rank's fp32 master values of ``p``, flat (a view, except for ZeRO-3 with offloaded optimizer state)."""
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param

        return safe_get_local_fp32_param(p)
    return p._hp_mapping.get_hp_fragment()


def zero3_entries(name: str, p: nn.Parameter, dim: int, index: torch.Tensor,
                  new: list[int]) -> tuple[torch.Tensor, ZeroSlots, torch.Tensor | None]:
    """ZeRO-3: the parameter is partitioned; freeze the entries of this rank's partition.

    ``index``: the entries frozen already (they hold their original values, restored after every step),
    so the slots are rebuilt over the whole index set. Returns (index, slots, snapshot of the full
    parameter's frozen entries or None)."""
    if "lora_" in name:
        raise UnsupportedSetupError(
            f"{name}: LoRA adapters under DeepSpeed ZeRO-3 are not supported by safeneuron_freeze. "
            "Use ZeRO-1/2, DDP or FSDP2 for LoRA training.")
    index = torch.cat([index, torch.tensor(new, dtype=torch.long)])
    slots = ZeroSlots.build(p, dim, index)
    # persistent parameters (below stage3_param_persistence_threshold) stay gathered on every rank once
    # fetched, and the forward pass reads that full copy: it is restored too (whenever it is gathered)
    snapshot = None
    if getattr(p, "ds_persist", False) or gathered_now(p):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            snapshot = p.data.index_select(dim, index.to(p.device)).clone()
    return index, slots, snapshot


def grad_hook(p: nn.Parameter, entry: FrozenEntries):
    """Zero the frozen entries' gradient (``entry.index`` is read at each call: ``extend`` grows it)."""
    if hasattr(p, "to_local"):
        # FSDP2 DTensor: Tensor.register_hook does not fire; zero the local shard after accumulation
        def post(param: torch.Tensor) -> None:
            if param.grad is not None:
                g = local_tensor(param.grad)
                g.index_fill_(entry.dim, entry.index.to(g.device), 0)

        return p.register_post_accumulate_grad_hook(post)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        # global indices: the gradient is full-size also under DeepSpeed ZeRO-3 (gathered parameter)
        return grad.index_fill(entry.dim, entry.index.to(grad.device), 0)

    return p.register_hook(hook)
