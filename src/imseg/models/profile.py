"""Parameter and FLOP counts, measured the same way for every model.

FLOPs come from torch's own ``FlopCounterMode`` (matmuls and convolutions,
2 FLOPs per multiply-add), run on the ``meta`` device: shapes propagate
without allocating memory or computing anything, so even a 250M-parameter
model is profiled at 360x480 in well under a second. Models whose ops have
no meta kernel fall back to a real CPU forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from imseg.models.registry import create_model, main_logits


@dataclass(frozen=True)
class Profile:
    name: str
    params: int
    gflops: float  # one forward pass, 2 FLOPs per multiply-add
    size: tuple[int, int]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        main_logits(model(x))
    return counter.get_total_flops()


def profile_model(name: str, num_classes: int = 11, size: tuple[int, int] = (360, 480), **kwargs) -> Profile:
    """Params and forward GFLOPs of ``create_model(name, num_classes, **kwargs)`` at ``size`` (H, W)."""
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes, **kwargs).eval()
            flops = _forward_flops(model, torch.empty(1, model.preprocessing.num_channels, *size))
    except (NotImplementedError, RuntimeError):
        # An op without a meta kernel (e.g. max_unpool): measure on the CPU instead.
        model = create_model(name, num_classes, **kwargs).eval()
        flops = _forward_flops(model, torch.zeros(1, model.preprocessing.num_channels, *size))
    return Profile(name, count_params(model), flops / 1e9, size)
