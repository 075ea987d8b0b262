"""Models: one registry of builders, encoders behind one contract, shared layers.

Importing this package registers every built-in model; each is a
`SegmentationModel` (base.py), and every encoder keeps one contract (encoder_base.py).
"""
from imseg.models import deeplab, fcn, lraspp, unet  # noqa: F401  (registration side effect)
from imseg.models import dpc, xception  # noqa: F401  (DeepLab family: DPC model, aligned Xception encoders)
from imseg.models import gcn, pan, pspnet, refinenet  # noqa: F401  (registration side effect)
from imseg.models import deconvnet, segnet, unet_original  # noqa: F401  (registration side effect)
from imseg.models import autodeeplab, fdnet, hrnet  # noqa: F401  (registration side effect)
from imseg.models import efficientnet_lite  # noqa: F401  (EfficientNet-Lite0/1/2 encoders)
from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder, list_encoders
from imseg.models.registry import (
    SegOutput,
    create_model,
    list_models,
    main_logits,
    model_arguments,
    model_info,
    register_model,
)

__all__ = [
    "Encoder",
    "SegOutput",
    "SegmentationModel",
    "build_encoder",
    "create_model",
    "list_encoders",
    "list_models",
    "main_logits",
    "model_arguments",
    "model_info",
    "register_model",
]
