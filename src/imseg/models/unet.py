"""U-Net on a pretrained encoder: Ronneberger, Fischer & Brox (MICCAI 2015), in the form popularised by
segmentation_models_pytorch (SMP).

The decoder starts from the deepest encoder map and, block by block,
upsamples, concatenates the encoder map of the next finer stride (skip
connection) and applies two 3x3 conv-BN-ReLU. Blocks beyond the finest
encoder map have no skip; the last one works at the input resolution and a
3x3 conv gives the logits (SMP's head). Each block resizes to the exact size
of its skip (or of the input), so any H x W works without padding.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import ConvBNAct, init_weights, resize_to
from imseg.models.registry import register_model


class DecoderBlock(nn.Module):
    """Upsample -> concat skip (if any) -> 2 x (3x3 conv, BN, ReLU)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsample: str) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = ConvBNAct(in_channels + skip_channels, out_channels, 3)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, size: Sequence[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = resize_to(x, size, self.upsample)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNet(SegmentationModel):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsample: str = "nearest",
    ) -> None:
        super().__init__(encoder)
        # Skips: every encoder map but the deepest, from coarse to fine.
        self.skip_indices = list(range(len(encoder.channels) - 1))[::-1]
        finest = min(encoder.strides[i] for i in self.skip_indices) if self.skip_indices else encoder.output_stride
        # Blocks past the finest skip halve the stride until the input resolution.
        self.extra_strides = [finest // 2**k for k in range(1, int(math.log2(finest)) + 1)]
        n_blocks = len(self.skip_indices) + len(self.extra_strides)
        if len(decoder_channels) != n_blocks:
            raise ValueError(
                f"decoder_channels needs {n_blocks} values for encoder {encoder.name!r} "
                f"(strides {encoder.strides}: {len(self.skip_indices)} skip blocks + "
                f"{len(self.extra_strides)} blocks to reach stride 1), got {tuple(decoder_channels)}"
            )
        skip_channels = [encoder.channels[i] for i in self.skip_indices] + [0] * len(self.extra_strides)
        in_channels = [encoder.channels[-1]] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, upsample) for i, s, o in zip(in_channels, skip_channels, decoder_channels)
        )
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        init_weights(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = self.encoder(x)
        y = feats[-1]
        blocks = iter(self.blocks)
        for i, block in zip(self.skip_indices, blocks):
            y = block(y, feats[i].shape[-2:], feats[i])
        for stride, block in zip(self.extra_strides, blocks):
            y = block(y, ((h + stride - 1) // stride, (w + stride - 1) // stride))  # ceil division
        # Only an encoder whose finest map is at stride 1 can leave y off the input size.
        return resize_to(self.segmentation_head(y), (h, w))


@register_model(
    "unet",
    paper="Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation",
    year=2015,
    summary="Encoder-decoder with skip connections at every stride; here on a pretrained encoder with "
    "SMP's decoder (256, 128, 64, 32, 16 channels, two conv-BN-ReLU per block).",
)
def unet(
    num_classes: int,
    *,
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 32,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    upsample: Literal["nearest", "bilinear"] = "nearest",
) -> nn.Module:
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    return UNet(enc, num_classes, decoder_channels=tuple(decoder_channels), upsample=upsample)
