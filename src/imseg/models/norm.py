"""The zoo's normalisation choice, ``norm``: one argument every model takes, applied after building.

Every family builds its layers with BatchNorm (torchvision and timm
encoders included); `set_norm` then turns the built model into the chosen
kind, so no builder repeats the code and no encoder needs its own option:

* ``"batch"``: BatchNorm as built (the papers' choice; the default).
* ``"group"``: every BatchNorm becomes a GroupNorm over the same channels
  (Wu & He 2018), keeping its affine weights and eps. GroupNorm does not
  depend on the batch, so a model trains at batch size 1, which BatchNorm
  cannot do after a global pooling (PSPNet, ASPP, PAN, ...): it would see
  one value per channel.
* ``"frozen_batch"``: BatchNorm whose running statistics stay fixed
  (normalising with them in train mode too, as RefineNet's released models
  were trained); its affine weights still learn. State-dict keys are
  BatchNorm's, so ImageNet weights and checkpoints load unchanged.

``create_model(name, K, norm="group")`` is how it is used; the choice is
recorded in the model's spec (when not "batch") so a checkpoint rebuilds
the same layers.
"""
from __future__ import annotations

import math
import sys

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imseg.models.base import SegmentationModel

NORMS = ("batch", "group", "frozen_batch")

# Wu & He's default group count; fewer where the channels do not divide by it.
MAX_GROUPS = 32


def check_norm(norm: object) -> str:
    """``norm`` itself when it is one of `NORMS`; else one clear error line."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    return norm  # type: ignore[return-value]


def group_count(channels: int) -> int:
    """GroupNorm's group count for ``channels``: up to 32, dividing ``channels``, two channels or more per group.

    One channel per group has nothing to normalise over on a 1x1 (globally
    pooled) map at batch 1, and GroupNorm refuses it, so groups are halved
    until each holds at least two channels (18 channels: 2 groups of 9;
    32 channels: 16 groups of 2). A single channel stays one group.
    """
    groups = math.gcd(MAX_GROUPS, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


def _group_norm_like(bn: _BatchNorm) -> nn.Module:
    """The GroupNorm taking ``bn``'s place: same channels, eps and affine weights (activation kept for timm's)."""
    channels = bn.num_features
    timm_layers = sys.modules.get("timm.layers")  # timm's modules can only be here if timm was imported
    if timm_layers is not None and isinstance(bn, timm_layers.BatchNormAct2d):
        # timm fuses the activation (and drop) into its norm layer: GroupNormAct keeps them.
        gn = timm_layers.GroupNormAct(channels, group_count(channels), eps=bn.eps, affine=bn.affine, apply_act=False)
        gn.act, gn.drop = bn.act, bn.drop
    else:
        gn = nn.GroupNorm(group_count(channels), channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        gn.to(bn.weight.device)
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


def _replace_batch_norms(model: nn.Module) -> int:
    """Swap every BatchNorm under ``model`` for its GroupNorm; the count swapped."""
    replaced: dict[int, nn.Module] = {}  # a layer shared by two parents gets one replacement
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                if id(child) not in replaced:
                    replaced[id(child)] = _group_norm_like(child)
                setattr(parent, name, replaced[id(child)])
    return len(replaced)


def set_norm(model: nn.Module, norm: str) -> nn.Module:
    """Give a built model the normalisation ``norm`` (see the module notes); returns ``model``.

    "frozen_batch" needs a `SegmentationModel`, whose ``train()`` keeps its
    BatchNorms in eval mode; every registered model is one.
    """
    check_norm(norm)
    if norm == "group":
        _replace_batch_norms(model)
    elif norm == "frozen_batch":
        if not isinstance(model, SegmentationModel):
            raise TypeError(f"norm='frozen_batch' needs a SegmentationModel, got {type(model).__name__}")
        model.frozen_batch_norm = True
        model.train(model.training)  # applies the rule to the layers now
    return model
