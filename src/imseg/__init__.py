"""imseg: semantic image segmentation in PyTorch.

    import imseg
    model = imseg.create_model("deeplabv3plus", num_classes=11, encoder="resnet50")
    model = imseg.load_model("runs/demo/checkpoints/best.pt")
    model = imseg.from_pretrained("owner/name")  # a folder from model.save_pretrained, or its hub id
    mask = imseg.predict(model, "street.png")

The names below are imported on first use (PEP 562), so ``import imseg`` and
``imseg --help`` do not pay for torch, torchvision and the model zoo.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CAFFE": "imseg.preprocessing",
    "TORCHVISION": "imseg.preprocessing",
    "Preprocessing": "imseg.preprocessing",
    "create_model": "imseg.models.registry",
    "from_pretrained": "imseg.hub",
    "list_models": "imseg.models.registry",
    "model_info": "imseg.models.registry",
    "load_model": "imseg.engine.checkpoint",
    "predict": "imseg.engine.predict",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
