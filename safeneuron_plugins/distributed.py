"""Distributed helpers: ranks, sharded parameters (FSDP2 DTensor, DeepSpeed ZeRO) and their local copies.

One place for what identification, freezing and training need to know about a multi-process run:
which rank this is, whether the model's parameters are sharded, how to see a parameter in full, and
where a parameter's values live on this rank.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def is_sharded(model: nn.Module) -> bool:
    """Whether the parameters are sharded across ranks (FSDP2 or DeepSpeed ZeRO-3): every rank must then
    run the same forward passes, since each one gathers parameters collectively."""
    return any(hasattr(p, "to_local") or hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(weight: torch.Tensor):
    """The full tensor of a possibly sharded parameter (FSDP2 DTensor, DeepSpeed ZeRO-3), on every rank."""
    if hasattr(weight, "full_tensor"):
        yield weight.full_tensor()
    elif hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            yield weight.data
    else:
        yield weight


def reset_zero3_trace(model: nn.Module) -> None:
    """DeepSpeed ZeRO-3 records the module order of the first passes to prefetch and release parameters;
    identification's forward-only passes must not stand as the training trace."""
    p = next((p for p in model.parameters() if hasattr(p, "ds_id") and hasattr(p, "_z3_optimizer")), None)
    if p is None:
        return
    coordinator = p._z3_optimizer.parameter_offload.get_param_coordinator()
    if not coordinator.is_invalid_trace():
        coordinator._invalidate_trace()
    coordinator.reset_step()


# --- one parameter under FSDP2 / DeepSpeed --------------------------------------------------------

def full_shape(p: torch.Tensor) -> torch.Size:
    """The parameter's full shape (a ZeRO-3 parameter's ``shape`` is that of its released data)."""
    return getattr(p, "ds_shape", None) or p.shape


def gathered_now(p: torch.Tensor) -> bool:
    """False for a ZeRO-3 parameter whose full data is released (only its partition exists now)."""
    return not hasattr(p, "ds_id") or p.data.numel() == p.ds_numel


def zero_stage(p: torch.Tensor) -> int:
    """3 for a ZeRO-3 partitioned parameter, 1 for a ZeRO-1/2 (or DeepSpeed bf16) one, else 0."""
    if hasattr(p, "ds_id"):
        return 3
    if getattr(p, "_hp_mapping", None) is not None:
        return 1
    return 0


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (FSDP2 shard), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def to_local_indices(p: torch.Tensor, dim: int, indices: list[int]) -> list[int]:
    """Global indices along ``dim`` -> indices into this rank's local shard (FSDP2 DTensor)."""
    if not hasattr(p, "to_local"):
        return indices
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    lo, hi = offset[dim], offset[dim] + shape[dim]
    return [i - lo for i in indices if lo <= i < hi]
