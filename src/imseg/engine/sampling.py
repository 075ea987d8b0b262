"""The order of training samples: one global order, sliced per process.

Every epoch has one permutation of the dataset, drawn from (seed, epoch).
It is cut into global batches of ``global_batch`` samples; process ``rank``
of ``world_size`` takes its contiguous slice of each global batch. So the
samples that make up global batch *i* are the same for 1 process or N, and
a run resumed after *k* batches of an epoch continues with batch *k*.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, num_samples: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(
                f"data.batch_size={global_batch} (the global batch) must divide evenly over {world_size} processes"
            )
        if num_samples < global_batch:
            raise ValueError(f"the split has {num_samples} samples, fewer than data.batch_size={global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.per_rank = global_batch // world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        # The last incomplete global batch is dropped: a batch of 1 breaks BatchNorm.
        return self.num_samples // self.global_batch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        for b in range(self.start_batch, self.num_samples // self.global_batch):
            first = b * self.global_batch + self.rank * self.per_rank
            yield order[first : first + self.per_rank]
