"""Batch size 1 and BatchNorm: train, or fail before the first step in one line naming the fix.

A BatchNorm in train mode normalises each channel over the batch and the
pixels of its input. After a global pooling (PSPNet's 1x1 bin, ASPP's image
pooling, PAN's attention weights) a batch of one image leaves it a single
value per channel, and PyTorch raises mid-step with a message that does not
say what to change. Whether a model has such a layer depends on its
structure and on the crop size (a small crop can shrink any deep map to
1x1), so the check runs the model once, at the real crop size and a batch
of one, on the meta device: shapes propagate, nothing is computed or
allocated, and the real model is not touched.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imseg.config import Config
from imseg.engine.distributed import Context
from imseg.models.registry import create_model


class _OneValuePerChannel(Exception):
    """Raised by the probe when a BatchNorm would normalise one value per channel."""


def _probe(module: nn.Module, args: tuple) -> None:
    x = args[0]
    if x.shape[0] * math.prod(x.shape[2:]) == 1:
        raise _OneValuePerChannel


def norm_batch_size(cfg: Config, ctx: Context) -> int:
    """The images one BatchNorm sees per step: the global batch with SyncBatchNorm, else this process's share."""
    synced = cfg.train.sync_bn and ctx.distributed and ctx.device.type == "cuda"
    return cfg.data.batch_size if synced else cfg.data.batch_size // ctx.world_size


def batch_norm_sees_one_value(model: nn.Module, crop_size: tuple[int, int]) -> bool:
    """Whether a BatchNorm of ``model`` (a `create_model` result) sees one value per channel at batch size 1.

    Runs a meta-device replica built from ``model.imseg_spec``, in train mode.
    A replica that cannot run on the meta device (an op without a meta
    kernel) says nothing either way: False, and the real step speaks.
    """
    spec = model.imseg_spec
    kwargs = {k: v for k, v in spec["kwargs"].items() if k != "encoder_weights"}  # weights change no shape
    with torch.device("meta"):
        replica = create_model(spec["name"], spec["num_classes"], **kwargs).train()
        for module in replica.modules():
            if isinstance(module, _BatchNorm) and module.training:
                module.register_forward_pre_hook(_probe)
        try:
            with torch.no_grad():
                replica(torch.empty(1, replica.preprocessing.num_channels, *crop_size))
        except _OneValuePerChannel:
            return True
        except (NotImplementedError, RuntimeError, ValueError):
            # An op without a meta-tensor kernel (or a size this model refuses) ends the probe: the check then
            # says nothing, and training goes on to meet any BatchNorm error itself rather than be refused here.
            return False
    return False


def check_batch_norm_batch_size(cfg: Config, ctx: Context, model: nn.Module) -> None:
    """Raise ValueError, before any step, when batch size 1 would leave a BatchNorm one value per channel."""
    if norm_batch_size(cfg, ctx) > 1 or cfg.train.freeze_bn_stats or getattr(model, "frozen_batch_norm", False):
        return
    if not any(isinstance(m, _BatchNorm) for m in model.modules()) or not hasattr(model, "imseg_spec"):
        return
    if batch_norm_sees_one_value(model, tuple(cfg.data.crop_size)):
        raise ValueError(
            f"batch size 1 with BatchNorm: {cfg.model.name!r} would normalise one value per channel (a globally "
            f"pooled or 1x1 map) at data.batch_size={cfg.data.batch_size}; set model.args.norm=group or "
            f"frozen_batch (or train.freeze_bn_stats=true, or a batch of 2 or more per process)"
        )
