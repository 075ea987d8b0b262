"""FCN-8s: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015).

The ImageNet classifier becomes convolutional (fc6 = 7x7 conv, fc7 = 1x1
conv), its class scores are upsampled with learned transposed convs
initialised to bilinear interpolation and fused with scores predicted from
pool4 (stride 16) and pool3 (stride 8): 2x, add, 2x, add, 8x.

Differences from the Caffe release, all to allow any input size without the
"pad 100 and crop with offsets" trick: the input is zero-padded to a
multiple of 32 and the logits cropped back, fc6 has padding 3, and the
upsampling convs have padding so each produces exactly 2x / 8x its input.
"""
from __future__ import annotations

import torch
from torch import nn

from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import crop_padding, pad_to_multiple, upsampling_deconv
from imseg.models.registry import register_model


class FCN8s(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int, fc_channels: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        if encoder.output_stride != 32:
            raise ValueError(f"FCN-8s needs an encoder at output stride 32, got {encoder.output_stride}")
        self.encoder = encoder
        self.i8, self.i16, self.i32 = (encoder.feature_index(s) for s in (8, 16, 32))
        c8, c16, c32 = (encoder.channels[i] for i in (self.i8, self.i16, self.i32))

        # fc6 / fc7 as convolutions ("convolutionalised" classifier).
        self.fc6 = nn.Conv2d(c32, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c16, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c8, num_classes, 1)
        self.upscore2 = upsampling_deconv(num_classes, 2)
        self.upscore_pool4 = upsampling_deconv(num_classes, 2)
        self.upscore8 = upsampling_deconv(num_classes, 8)

        for conv in (self.fc6, self.fc7, self.score_fr):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # The paper zero-initialises the skip score layers: the net starts as
        # FCN-32s and learns how much finer detail to mix in.
        for conv in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def load_fc_from_classifier(self, classifier: dict[str, torch.Tensor]) -> bool:
        """Initialise fc6/fc7 from a VGG ImageNet classifier (``classifier.0`` / ``classifier.3``).

        VGG's first fully connected layer reads a 512x7x7 map, so its weight
        reshapes exactly into the 7x7 fc6 conv; this is FCN's "net surgery".
        Returns False (and changes nothing) when the shapes do not fit.
        """
        w6, b6 = classifier.get("classifier.0.weight"), classifier.get("classifier.0.bias")
        w7, b7 = classifier.get("classifier.3.weight"), classifier.get("classifier.3.bias")
        if any(t is None for t in (w6, b6, w7, b7)):
            return False
        if w6.numel() != self.fc6.weight.numel() or w7.numel() != self.fc7.weight.numel():
            return False
        with torch.no_grad():
            self.fc6.weight.copy_(w6.view_as(self.fc6.weight))
            self.fc6.bias.copy_(b6)
            self.fc7.weight.copy_(w7.view_as(self.fc7.weight))
            self.fc7.bias.copy_(b7)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 32)
        feats = self.encoder(x)
        f8, f16, f32 = feats[self.i8], feats[self.i16], feats[self.i32]

        y = self.drop6(self.relu(self.fc6(f32)))
        y = self.drop7(self.relu(self.fc7(y)))
        y = self.upscore2(self.score_fr(y))  # stride 32 -> 16
        y = self.upscore_pool4(y + self.score_pool4(f16))  # stride 16 -> 8
        y = self.upscore8(y + self.score_pool3(f8))  # stride 8 -> 1
        return crop_padding(y, pads)


@register_model(
    "fcn8s",
    paper="Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation",
    year=2015,
    summary="VGG16 with its classifier turned into convolutions; learned 2x/2x/8x upsampling fusing "
    "pool4 and pool3 scores. fc_channels=4096 is the paper's; smaller values give a slim variant.",
)
def fcn8s(
    num_classes: int,
    *,
    encoder: str = "vgg16",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    fc_channels: int = 4096,
) -> nn.Module:
    enc = build_encoder(
        encoder, in_channels=in_channels, output_stride=32, weights=encoder_weights, keep_classifier=True
    )
    model = FCN8s(enc, num_classes, fc_channels=fc_channels)
    # With VGG ImageNet weights, fc6/fc7 start from the ImageNet classifier as in the paper.
    model.load_fc_from_classifier(enc.classifier_state)
    enc.classifier_state = {}  # VGG's classifier is ~500 MB: do not keep it around
    model.preprocessing = enc.preprocessing.for_channels(in_channels)
    return model
