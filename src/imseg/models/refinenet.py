"""RefineNet (multi-path): Lin, Milan, Shen & Reid, "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation" (CVPR 2017).

A ResNet gives maps at 1/32, 1/16, 1/8 and 1/4. Four cascaded RefineNet
blocks refine them from coarse to fine; each block:

1. adapts its backbone map: 3x3 conv (no bias) to the path width (512 for
   the 1/32 path, 256 for the others), then 2 residual conv units (RCU:
   ReLU -> 3x3 conv -> ReLU -> 3x3 conv, plus identity; no BatchNorm);
2. multi-resolution fusion (not in RefineNet-4, which has one input): each
   input gets a 3x3 conv to the smallest input width, the coarser one is
   upsampled bilinearly to the finer one's size, and they are summed;
3. chained residual pooling (CRP): ReLU, then a chain of N blocks
   [5x5 max pool, stride 1 -> 3x3 conv (no bias)], each fed the previous
   block's output; the result is the ReLU'd input plus every block's output;
4. output convs: 3 RCUs.

The head is dropout 0.5 -> 3x3 conv to the classes at 1/4, upsampled
bilinearly to the input.

Choices (see docs/models/context.md): the output convs follow the
official MatConvNet code (3 RCUs after CRP in every block,
``refine_block_conv_num_mainflow=3``), not the paper's text (1 RCU per
block plus 2 RCUs before the classifier); each CRP block pools, then
convolves, as the paper's Fig. 2(d) and the released RefineNet-101 model
(the code's "improved version" convolves first); and each CRP has 4
blocks, as in the released models, which gives the 118M parameters
reported for RefineNet-101. New convs start from N(0, 0.01^2) as in the
code, which keeps the BatchNorm-free residual chains from blowing up at
initialisation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import resize_to
from imseg.models.registry import register_model

# Path widths from the 1/32 path (RefineNet-4) down to the 1/4 path (RefineNet-1), as in the paper/code.
PATH_WIDTHS = (512, 256, 256, 256)


def _conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU: x + conv(ReLU(conv(ReLU(x)))); the second conv has no bias, as in the official code."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, bias=True)
        self.conv2 = _conv3x3(channels, channels, bias=False)
        self.relu = nn.ReLU()  # not in-place: the identity path still needs x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class ChainedResidualPooling(nn.Module):
    """CRP: ReLU, then ``blocks`` chained [5x5 max pool s1 -> 3x3 conv]; input + every block's output.

    Pool, then conv: the paper's Fig. 2(d) and the released model's order.
    """

    def __init__(self, channels: int, blocks: int = 4) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"chained residual pooling needs at least one block, got {blocks}")
        self.relu = nn.ReLU()
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(blocks))
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out, top = x, x
        for conv in self.convs:
            top = conv(self.pool(top))
            out = out + top
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet: adapt its backbone path, fuse with the previous block's output, CRP, output RCUs."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        prev_channels: int | None,
        crp_blocks: int = 4,
        adapt_rcus: int = 2,
        output_rcus: int = 3,
    ) -> None:
        super().__init__()
        self.adapt = nn.Sequential(
            _conv3x3(in_channels, width, bias=False), *(ResidualConvUnit(width) for _ in range(adapt_rcus))
        )
        if prev_channels is None:  # RefineNet-4: a single input, no fusion
            self.fuse_path = self.fuse_prev = None
            out_channels = width
        else:
            out_channels = min(width, prev_channels)
            self.fuse_path = _conv3x3(width, out_channels, bias=False)
            self.fuse_prev = _conv3x3(prev_channels, out_channels, bias=False)
        self.crp = ChainedResidualPooling(out_channels, crp_blocks)
        self.output = nn.Sequential(*(ResidualConvUnit(out_channels) for _ in range(output_rcus)))
        self.out_channels = out_channels

    def forward(self, path: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapt(path)
        if self.fuse_path is not None and self.fuse_prev is not None and prev is not None:
            # The 3x3 conv runs on the coarse input before upsampling: the same as the
            # paper's "conv each input, upsample, sum", at a quarter of the cost.
            x = self.fuse_path(x) + resize_to(self.fuse_prev(prev), x.shape[-2:])
        return self.output(self.crp(x))


class RefineNet(SegmentationModel):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        widths: Sequence[int] = PATH_WIDTHS,
        crp_blocks: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(encoder)
        # Backbone paths from coarse to fine: RefineNet-4 reads 1/32, RefineNet-1 reads 1/4.
        self.path_indices = [encoder.feature_index(s) for s in (32, 16, 8, 4)]
        blocks, prev = [], None
        for index, width in zip(self.path_indices, widths):
            block = RefineNetBlock(encoder.channels[index], width, prev, crp_blocks)
            blocks.append(block)
            prev = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = _conv3x3(prev, num_classes, bias=True)
        for m in [*self.blocks.modules(), self.classifier]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = None
        for index, block in zip(self.path_indices, self.blocks):
            y = block(feats[index], y)
        return resize_to(self.classifier(self.dropout(y)), x.shape[-2:])


@register_model(
    "refinenet",
    published="118M params for RefineNet-101 (reported by Light-Weight RefineNet)",
    paper="Lin, Milan, Shen, Reid: RefineNet: Multi-Path Refinement Networks for High-Resolution "
    "Semantic Segmentation",
    year=2017,
    summary="ResNet maps at 1/32..1/4 refined coarse-to-fine by four RefineNet blocks (residual conv "
    "units, multi-resolution fusion, chained residual pooling); BatchNorm-free decoder, logits at 1/4.",
)
def refinenet(
    num_classes: int,
    *,
    encoder: str = "resnet101",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    widths: Sequence[int] = PATH_WIDTHS,
    crp_blocks: int = 4,
) -> nn.Module:
    """``widths``: channels of the 1/32, 1/16, 1/8 and 1/4 paths (the paper's 512, 256, 256, 256).
    ``crp_blocks``: length of each chained residual pooling: 4, as in the released models (118M parameters
    with ResNet-101); the official code's config default is 2 ("set the pooling number to 2 or 4")."""
    if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths needs 4 positive integers (1/32, 1/16, 1/8, 1/4 paths), got {tuple(widths)!r}")
    # RefineNet refines the undilated backbone (output stride 32): no output_stride argument.
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=32, weights=encoder_weights)
    return RefineNet(enc, num_classes, widths=tuple(widths), crp_blocks=crp_blocks)
