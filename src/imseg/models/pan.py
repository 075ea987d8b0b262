"""PAN: Li, Xiong, An & Wang, "Pyramid Attention Network for Semantic Segmentation" (BMVC 2018).

A dilated ResNet (output stride 16) feeds the Feature Pyramid Attention
(FPA) module on res5, then three Global Attention Upsample (GAU) modules
bring the map down to res2 (output stride 4), where a classifier predicts
and the logits are upsampled to the input.

FPA (the paper's best "C357 + GP" setting): a master branch (1x1 conv) is
multiplied pixel-wise by an attention map from a U-shaped pyramid -- down
to 1/2, 1/4, 1/8 of the map with 7x7, 5x5 and 3x3 convs, coarse levels
upsampled and added to finer ones, upsampled to the map -- and a global
pooling branch (GAP -> 1x1 conv, broadcast) is added.

GAU: the low-level map goes through a 3x3 conv + BN; the global average of
the high-level map, through 1x1 conv + BN + ReLU, weights its channels; the
result is added to the upsampled high-level map, then ReLU.

Choices the paper leaves open (see docs/models/context.md):
- Every decoder map has ``decoder_channels`` (256) channels: FPA and GAU
  outputs, and the GAU's 3x3 low-level conv. segmentation_models_pytorch
  uses 32; the paper gives no widths.
- The pyramid is one channel wide (a per-pixel attention weight shared by
  all channels), as in segmentation_models_pytorch; its downsampling is a
  2x2 average pool (the paper's ablation found average better than max
  pooling) with padding 1, so a level of n pixels has n // 2 + 1 (see
  `halve`); every pyramid conv is conv + BN + ReLU; upsampling is bilinear.
- The classifier is a 3x3 conv; torchvision's ResNets keep their 7x7 stem
  (the paper replaces it with three 3x3 convs, for which there are no
  torchvision ImageNet weights).
- The BatchNorms after global pooling (FPA's GP branch, each GAU's weights)
  see one value per channel per image: training needs a batch of at least 2,
  or ``norm="group"`` / ``"frozen_batch"`` (imseg/models/norm.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import ConvBNAct, init_weights, resize_to
from imseg.models.registry import register_model


def halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool, stride 2, padding 1 (border windows average the pixels they cover): n -> n // 2 + 1.

    The padding keeps every pyramid level at least 2 pixels wide for maps of
    2 pixels or more, and that is what lets torch.export keep H and W
    symbolic: a level that could be 1 pixel (a 2x2 pool without padding, or
    with ``ceil_mode``, on a small map) makes the exporter pin the input size.
    """
    return F.avg_pool2d(x, 2, 2, padding=1, count_include_pad=False)


class _Down(nn.Module):
    """`halve`, then conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(halve(x))


class FeaturePyramidAttention(nn.Module):
    """FPA, C357 + GP: ``master(x) * pyramid_attention(x) + global_pool(x)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.master = ConvBNAct(in_channels, out_channels, 1)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(in_channels, out_channels, 1))
        # Pyramid going down: 7x7 at 1/2, 5x5 at 1/4, 3x3 at 1/8 ...
        self.down1 = _Down(in_channels, 1, 7)
        self.down2 = _Down(1, 1, 5)
        self.down3 = _Down(1, 1, 3)
        # ... and one more conv of the same size at each level before the U-shaped merge.
        self.lateral1 = ConvBNAct(1, 1, 7)
        self.lateral2 = ConvBNAct(1, 1, 5)
        self.lateral3 = ConvBNAct(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        y = self.lateral3(d3)
        y = self.lateral2(d2) + resize_to(y, d2.shape[-2:])
        y = self.lateral1(d1) + resize_to(y, d1.shape[-2:])
        attention = resize_to(y, size)  # [B, 1, H, W]: one weight per pixel
        # A 1x1 map is the same value everywhere: expand is exact and cheaper than interpolate.
        return self.master(x) * attention + self.global_pool(x).expand(-1, -1, *size)


class GlobalAttentionUpsample(nn.Module):
    """GAU: ``ReLU(up(high) + BN(conv3x3(low)) * ReLU(BN(conv1x1(GAP(high)))))``."""

    def __init__(self, low_channels: int, channels: int) -> None:
        super().__init__()
        self.low = ConvBNAct(low_channels, channels, 3, act=False)
        self.weights = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(channels, channels, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        weighted = self.low(low) * self.weights(high)
        return self.relu(resize_to(high, low.shape[-2:]) + weighted)


class PAN(SegmentationModel):
    def __init__(self, encoder: Encoder, num_classes: int, decoder_channels: int = 256) -> None:
        super().__init__(encoder)
        # The GAUs read every map between the stride-4 one and the deepest, deepest first
        # (ResNet: res4, res3, res2). Picked by position, not stride: at output stride 16
        # res4 and res5 share a stride.
        first = encoder.feature_index(4)
        self.low_indices = list(range(len(encoder.channels) - 2, first - 1, -1))
        self.fpa = FeaturePyramidAttention(encoder.channels[-1], decoder_channels)
        self.gaus = nn.ModuleList(
            GlobalAttentionUpsample(encoder.channels[i], decoder_channels) for i in self.low_indices
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 3, padding=1)
        init_weights(nn.ModuleList([self.fpa, self.gaus, self.classifier]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = self.fpa(feats[-1])
        for index, gau in zip(self.low_indices, self.gaus):
            y = gau(y, feats[index])
        return resize_to(self.classifier(y), x.shape[-2:])


@register_model(
    "pan",
    published="VOC test 84.0, Cityscapes test 78.6 mIoU",
    paper="Li, Xiong, An, Wang: Pyramid Attention Network for Semantic Segmentation",
    year=2018,
    summary="Dilated ResNet (OS16) + Feature Pyramid Attention on res5 (7/5/3 conv pyramid attention, "
    "global pooling) and three Global Attention Upsample modules down to stride 4.",
)
def pan(
    num_classes: int,
    *,
    encoder: str = "resnet101",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    decoder_channels: int = 256,
) -> nn.Module:
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    return PAN(enc, num_classes, decoder_channels=decoder_channels)
