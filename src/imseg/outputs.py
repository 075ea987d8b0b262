"""What a model's ``forward`` returns, in a module of its own so losses, inference and the engine can
read model outputs without importing the model zoo.

A model returns its logits as a tensor, or a `SegOutput` when an auxiliary
head is configured; `main_logits` takes the main logits from either.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class SegOutput(NamedTuple):
    """Returned by `forward` only when an auxiliary head is configured.

    ``aux`` is one tensor of logits, or a tuple of them where a model has
    several auxiliary heads (LR-ASPP's ``aux_strides``); each is at the size
    of ``out``.
    """

    out: torch.Tensor
    aux: torch.Tensor | tuple[torch.Tensor, ...]


def main_logits(output: torch.Tensor | SegOutput) -> torch.Tensor:
    """The main logits of a model output, whether or not it carries aux logits."""
    return output.out if isinstance(output, SegOutput) else output
