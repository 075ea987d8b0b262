"""Losses. They live outside the models and all honour the same ignore index."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.registry import SegOutput


class SegmentationLoss(nn.Module):
    """Cross-entropy on the main logits plus ``aux_weight`` x the same on aux logits."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.4,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # A batch whose every pixel is ignored has no loss (not 0/0 = NaN);
        # multiplying keeps the graph so backward still works.
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        # float32 for the loss even under autocast: log-softmax in bf16 loses precision.
        return F.cross_entropy(
            logits.float(),
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def forward(self, output: torch.Tensor | SegOutput, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, SegOutput):
            return self._ce(output.out, target) + self.aux_weight * self._ce(output.aux, target)
        return self._ce(output, target)
