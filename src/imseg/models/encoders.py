"""Encoders (backbones) by name: ``build_encoder``, ``register_encoder``, ``list_encoders``.

``build_encoder(name, in_channels=..., output_stride=..., weights=..., taps=...)``
returns an `Encoder` (encoder_base.py: the contract every decoder reads):
torchvision's ResNets, VGG16 and MobileNetV3s (torchvision_encoders.py), any
timm model as ``"timm:<name>"`` (timm_encoder.py), and the backbones model
families bring along (aligned Xception, DenseNet, HRNet, EfficientNet-Lite)
by registering them here. What ``weights`` may be, and the files imseg
knows (URL, SHA-256, key layout, preprocessing, licence), is
weight_registry.py; weights.py reads and checks the files; output strides
below 32 come from the dilation in surgery.py.
"""
from __future__ import annotations

import inspect
import os
from typing import Sequence

from imseg.models.encoder_base import Encoder
from imseg.models.timm_encoder import TimmEncoder
from imseg.models.torchvision_encoders import (
    TORCHVISION_ENCODERS,
    MobileNetV3Encoder,
    ResNetEncoder,
    VGGEncoder,
    torchvision_taps,
)

__all__ = [
    "OUTPUT_STRIDES",
    "Encoder",
    "MobileNetV3Encoder",
    "ResNetEncoder",
    "TimmEncoder",
    "VGGEncoder",
    "build_encoder",
    "check_output_stride",
    "list_encoders",
    "register_encoder",
    "torchvision_taps",
]

OUTPUT_STRIDES = (8, 16, 32)

_ENCODERS: dict[str, type[Encoder]] = dict(TORCHVISION_ENCODERS)


def register_encoder(name: str, cls: type[Encoder]) -> type[Encoder]:
    """Add an encoder class (built as ``cls(name, in_channels, output_stride)``) under ``name``.

    Model families with their own backbone (aligned Xception, DenseNet,
    HRNet) register it here so every decoder can use it by name. A class
    whose constructor also takes ``taps`` gets them from `build_encoder`.
    """
    if name in _ENCODERS or name.startswith("timm:"):
        raise ValueError(f"encoder {name!r} is already registered")
    _ENCODERS[name] = cls
    return cls


def list_encoders() -> list[str]:
    """The registered encoder names; any timm model also works as ``timm:<name>``."""
    return sorted(_ENCODERS)


def check_output_stride(model: str, output_stride: int, allowed: Sequence[int]) -> None:
    """Refuse an output stride ``model`` is not defined for, naming the ones it is."""
    if output_stride not in allowed:
        choices = " or ".join(str(s) for s in allowed)
        raise ValueError(f"{model} uses output_stride {choices}, got {output_stride!r}")


def build_encoder(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    weights: str | os.PathLike | None = None,
    keep_classifier: bool = False,
    taps: Sequence[int] | None = None,
) -> Encoder:
    """Build an encoder.

    Args:
        name: one of `list_encoders()` or ``"timm:<timm model name>"``.
        in_channels: input channels; loaded RGB weights are adapted (summed
            for 1 channel, repeated and rescaled for more).
        output_stride: 32, 16 or 8; below 32 the last stages are dilated.
        weights: None (random init), ``"imagenet"`` (downloaded with hash
            check), a package source of weight_registry.py (e.g.
            ``"efficientnet_lite0"``: the file of an installed pip package)
            or the path of a ``.pth``/``.pt``/``.safetensors`` file in
            torchvision's, timm's or another registered key layout.
        keep_classifier: keep the ImageNet classifier tensors of the weights
            on ``encoder.classifier_state`` (torchvision encoders only).
        taps: which maps ``forward`` returns, as increasing indices (timm's
            ``out_indices``): ResNet's stem and layer1-4 (0-4), modules of
            VGG's / MobileNetV3's ``features``, timm's feature stages. None:
            one map per stride, the deepest at each. `torchvision_taps` gives
            the ones torchvision's segmentation models read.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if name.startswith("timm:"):
        return TimmEncoder(name[len("timm:"):], in_channels, output_stride, weights, taps=taps)
    if name not in _ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r}; choose one of: {', '.join(list_encoders())}, or 'timm:<timm model name>'"
        )
    cls = _ENCODERS[name]
    options = {}
    if taps is not None:
        if "taps" not in inspect.signature(cls).parameters:
            raise ValueError(f"encoder {name!r} does not take taps; it always returns its {cls.__name__} maps")
        options["taps"] = taps
    encoder = cls(name, in_channels, output_stride, **options)
    if weights is not None:
        encoder.load_weights(weights, keep_classifier=keep_classifier)
    return encoder
