"""Optimisers and the poly learning-rate schedule with linear warm-up."""
from __future__ import annotations

import torch
from torch import nn

from imseg.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Weight decay on normalisation scales and biases only shrinks them
    # towards zero for no regularising benefit; the usual practice (timm,
    # torchvision references) is to exempt every 1-D parameter.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {cfg.name!r}")


def poly_lambda(total_iters: int, cfg: OptimConfig):
    """Multiplier on the base LR at iteration ``it`` (0-based)."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def f(it: int) -> float:
        if it < cfg.warmup_iters:
            alpha = it / max(1, cfg.warmup_iters)
            return cfg.warmup_factor * (1 - alpha) + alpha
        progress = min(1.0, (it - cfg.warmup_iters) / max(1, total_iters - cfg.warmup_iters))
        return max(floor, (1 - progress) ** cfg.poly_power)

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total_iters, cfg))
