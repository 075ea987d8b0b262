"""`SegmentationModel`: what every registered model is, beside its own layers.

Deliberately thin: not a fixed encoder -> decoder -> head forward, because
FCN's crop offsets, SegNet's pooling switches and HRNet's branch fusion each
need their own. What all models share is what the engine reads off them:

* ``encoder``: the `Encoder` the decoder reads (None, or a plain module, for
  nets trained from scratch without one: U-Net original, SegNet-Basic);
* ``preprocessing``: how images must be normalised, by default the
  encoder's (which follows its weights and ``in_channels``); a model whose
  convention is not its encoder's passes its own, and loading a checkpoint
  sets the stored one (`imseg.meta.attach` assigns it);
* ``meta``: the `ModelMeta` (class names, palette, evaluation settings) once
  a trained model has them; None for a model fresh from `create_model`;
* ``frozen_batch_norm``: set by ``norm="frozen_batch"`` (imseg/models/norm.py),
  ``train()`` then leaves every BatchNorm in eval mode.

``save_pretrained`` writes a model folder (imseg/pretrained.py); it is the
one method beyond these, so every model has it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imseg.models.encoder_base import Encoder
from imseg.preprocessing import Preprocessing


class SegmentationModel(nn.Module):
    """Base class of the model zoo: an ``encoder``, ``preprocessing`` and ``meta`` (see the module notes)."""

    # An imseg.meta.ModelMeta, typed loosely here so the models do not import the metadata layer above them.
    meta: Any = None
    # norm="frozen_batch": BatchNorm normalises with its running statistics in train mode too.
    frozen_batch_norm: bool = False

    def __init__(self, encoder: nn.Module | None = None, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        if preprocessing is None and not isinstance(encoder, Encoder):
            raise ValueError(
                f"{type(self).__name__} has no Encoder to take its preprocessing from; pass preprocessing="
            )
        self.encoder = encoder
        self._preprocessing = preprocessing

    def train(self, mode: bool = True) -> SegmentationModel:
        """``nn.Module.train``, except that frozen BatchNorm statistics stay frozen.

        Here rather than in each layer, so it survives whatever rebuilds the
        layers later (SyncBatchNorm conversion under DDP) and reaches the
        BatchNorms inside torchvision and timm encoders alike.
        """
        super().train(mode)
        if self.frozen_batch_norm:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing set on the model, else the encoder's."""
        if self._preprocessing is not None:
            return self._preprocessing
        return self.encoder.preprocessing

    @preprocessing.setter
    def preprocessing(self, value: Preprocessing) -> None:
        if not isinstance(value, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, got {type(value).__name__}")
        self._preprocessing = value

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder`` in the Hugging Face Hub layout (model.safetensors, config.json, README.md), for
        `imseg.from_pretrained` or an upload to the Hub; return it."""
        from imseg.pretrained import save_pretrained

        return save_pretrained(self, folder)
