"""DeepLabv3+: Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation" (ECCV 2018).

Encoder at output stride 16 (or 8) -> ASPP (1x1, three 3x3 atrous convs,
image pooling; 256 channels) -> upsample to the stride-4 map, concatenate
its 1x1 48-channel projection -> two 3x3 256 convs -> 1x1 classifier ->
bilinear upsample to the input. Rates are 6/12/18 at output stride 16 and
doubled at 8, as in the paper. The ASPP dropout is 0.1 (TensorFlow
DeepLab's keep_prob 0.9), not torchvision's 0.5.
"""
from __future__ import annotations

import torch
from torch import nn

from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import ASPP, ConvBNAct, FCNHead, SeparableConvBNAct, init_weights, resize_to
from imseg.models.registry import SegOutput, register_model


class DeepLabV3Plus(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        separable: bool = False,
        aux: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.low_index = encoder.feature_index(4)
        low_channels = encoder.channels[self.low_index]
        conv3x3 = SeparableConvBNAct if separable else ConvBNAct

        self.aspp = ASPP(encoder.channels[-1], 256, aspp_rates, separable=separable, dropout=0.1)
        self.low_project = ConvBNAct(low_channels, 48, 1)
        self.decoder = nn.Sequential(conv3x3(256 + 48, 256, 3), conv3x3(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        # Auxiliary loss head on the penultimate encoder map (ResNet layer3), as torchvision does.
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        init_weights(nn.ModuleList([self.aspp, self.low_project, self.decoder, self.classifier]))
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        low = feats[self.low_index]
        y = resize_to(self.aspp(feats[-1]), low.shape[-2:])
        y = self.decoder(torch.cat([y, self.low_project(low)], dim=1))
        out = resize_to(self.classifier(y), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(feats[-2]), size))


@register_model(
    "deeplabv3plus",
    paper="Chen, Zhu, Papandreou, Schroff, Adam: Encoder-Decoder with Atrous Separable Convolution "
    "for Semantic Image Segmentation",
    year=2018,
    summary="Dilated encoder + ASPP (rates 6/12/18 at OS16, image pooling) with a light decoder that "
    "refines with the stride-4 features; optional depthwise-separable ASPP/decoder and aux head.",
)
def deeplabv3plus(
    num_classes: int,
    *,
    encoder: str = "resnet50",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    separable: bool = False,
    aux: bool = False,
) -> nn.Module:
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLabv3+ uses output_stride 16 or 8, got {output_stride!r}")
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    model = DeepLabV3Plus(enc, num_classes, aspp_rates=rates, separable=separable, aux=aux)
    model.preprocessing = enc.preprocessing.for_channels(in_channels)
    return model
