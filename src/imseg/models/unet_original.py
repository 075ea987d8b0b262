"""The original U-Net: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation" (MICCAI 2015, arXiv 1505.04597), trained from scratch.

Contracting path: 5 levels of two 3x3 conv + ReLU (64, 128, 256, 512, 1024
channels) with 2x2 max pooling between them. Expanding path: a 2x2 stride-2
up-convolution halving the channels (+ ReLU), concatenation with the
contracting path's map at that level, two 3x3 conv + ReLU; a final 1x1 conv
gives the class scores. Dropout 0.5 at the end of the contracting path (the
paper's "drop-out layers at the end of the contracting path": after the
second conv of the 512 and of the 1024 level, as in the released caffe model
``phseg_v5``, layers ``dropout_d3c`` / ``dropout_d4c``).

Differences from the paper, for any input size without tiling: the convs are
padded ("same"), so no cropping of the skips is needed and the output has
the input's size; the input is zero-padded at the bottom/right to a multiple
of 16 (four poolings) and the logits are cropped back. ``batch_norm=True``
adds BN after each 3x3 conv (a common modernisation, not in the paper).

This is the paper's network on its own; ``unet`` is the encoder-based
variant (pretrained backbone, SMP-style decoder).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.layers import crop_padding, pad_to_multiple
from imseg.models.registry import register_model
from imseg.preprocessing import TORCHVISION


def _double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 conv + ReLU (BN before each ReLU when ``batch_norm``; the conv bias is then redundant)."""
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNetOriginal(SegmentationModel):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512, 1024),
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        # No encoder, and no pretrained weights in any torchvision/timm convention: normalise like
        # every other model here.
        super().__init__(encoder=None, preprocessing=TORCHVISION.for_channels(in_channels))
        self.multiple = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList(
            _double_conv(cin, cout, batch_norm) for cin, cout in zip((in_channels, *widths[:-1]), widths)
        )
        # Dropout after the last two levels of the contracting path (d3c, d4c in the caffe model).
        self.down_dropout = nn.ModuleList(
            nn.Dropout(dropout) if dropout > 0 and i >= len(widths) - 2 else nn.Identity() for i in range(len(widths))
        )
        self.pool = nn.MaxPool2d(2, 2)
        # Expanding path, deepest first: up-conv wide -> wide/2, then two convs on [up, skip] (wide channels in).
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))  # (1024, 512), (512, 256), ...
        self.upconv = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(wide, narrow, 2, stride=2), nn.ReLU(inplace=True))
            for wide, narrow in pairs
        )
        self.up = nn.ModuleList(_double_conv(wide, narrow, batch_norm) for wide, narrow in pairs)
        self.score = nn.Conv2d(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's init: Gaussian with std sqrt(2 / N), N = inputs feeding one output unit."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):
                # 2x2 stride 2: every output pixel is fed by one tap of each input channel.
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // (m.stride[0] * m.stride[1])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                continue
            else:
                continue
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, self.multiple)
        skips = []
        for i, (block, dropout) in enumerate(zip(self.down, self.down_dropout)):
            if i > 0:
                x = self.pool(x)
            # The skip also gets the dropped-out map: the caffe model's dropout_d3c works in place on d3c.
            x = dropout(block(x))
            skips.append(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips[:-1])):
            x = block(torch.cat([upconv(x), skip], dim=1))  # caffe order: up-conv output, then skip
        return crop_padding(self.score(x), pads)


@register_model(
    "unet_original",
    published="about 31.0M params (2 classes, padded convs)",
    paper="Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation",
    year=2015,
    summary="The paper's U-Net from scratch: 64-1024 channels, two 3x3 conv+ReLU per level, 2x2 up-convs, "
    "concatenated skips, dropout at the bottom; padded convs (31.0M params at K=2).",
)
def unet_original(
    num_classes: int,
    *,
    in_channels: int = 3,
    base_channels: int = 64,
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> nn.Module:
    widths = tuple(base_channels * 2**i for i in range(5))
    return UNetOriginal(in_channels, num_classes, widths, batch_norm=batch_norm, dropout=dropout)
