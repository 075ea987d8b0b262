"""Batching evaluation samples that may differ in size.

Training crops every sample to one size, but evaluation reads whole images,
and a folder of photos rarely has a single size: the default collate then
fails with "stack expects each tensor to be equal size" at the first
validation, after an epoch of training. `collate_pairs` stacks a batch whose
samples agree and otherwise hands over lists, which `evaluate` runs image by
image.
"""
from __future__ import annotations

from typing import Sequence

import torch


def collate_pairs(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """``(images [B, C, H, W], masks [B, H, W])`` when all samples share a size, else ``(list, list)``."""
    images, masks = zip(*batch)
    if len({tuple(m.shape) for m in masks}) == 1 and len({tuple(i.shape) for i in images}) == 1:
        return torch.stack(images), torch.stack(masks)
    return list(images), list(masks)
