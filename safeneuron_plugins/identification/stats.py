"""Streamed, mergeable per-neuron mean and variance (Chan et al.'s parallel update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations of a stream of vectors, in float64.

    Memory is one vector per statistic, whatever the number of samples. Two instances over
    disjoint samples merge exactly (up to rounding) into the statistics of their union.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, size: int, device: torch.device | str = "cpu") -> RunningStats:
        zeros = torch.zeros(size, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def of(cls, samples: torch.Tensor) -> RunningStats:
        """Statistics of a [n, size] batch, computed in one go."""
        samples = samples.to(torch.float64)
        mean = samples.mean(0)
        return cls(samples.shape[0], mean, ((samples - mean) ** 2).sum(0))

    def update(self, samples: torch.Tensor) -> None:
        """Add a [n, size] batch of samples."""
        if samples.shape[0]:
            self.merge_(RunningStats.of(samples.to(self.mean.device)))

    def merge_(self, other: RunningStats) -> RunningStats:
        """Merge ``other`` (disjoint samples) into this one, in place."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.clone(), other.m2.clone()
            return self
        n = self.count + other.count
        delta = other.mean.to(self.mean.device) - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2.to(self.m2.device) + delta**2 * (self.count * other.count / n)
        self.count = n
        return self

    @property
    def var(self) -> torch.Tensor:
        """Unbiased (n-1) variance."""
        return self.m2 / max(self.count - 1, 1)

    def all_reduce_(self) -> RunningStats:
        """Merge the statistics of every process of the default torch.distributed group, in place.

        Every rank ends with the statistics of all ranks' samples (used to identify with the
        prompts sharded across ranks)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        # gloo and nccl both handle float64 all_gather; keep the tensor on the stats' device.
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64,
                                         device=self.mean.device), self.mean, self.m2])
        gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, packed)
        size = self.mean.numel()
        merged = RunningStats.empty(size, self.mean.device)
        for part in gathered:  # same order on every rank, so every rank gets identical bits
            merged.merge_(RunningStats(int(part[0].item()), part[1:1 + size], part[1 + size:]))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self
