"""DPC, the Dense Prediction Cell: Chen, Collins, Zhu, Papandreou, Zoph, Schroff, Adam, Shlens,
"Searching for Efficient Multi-Scale Architectures for Dense Image Prediction" (NeurIPS 2018).

The cell found by architecture search (TensorFlow DeepLab's
``dense_prediction_cell_branch5_top1_cityscapes.json``) replaces ASPP in
DeepLabv3+. Five branches, each a split separable conv (depthwise 3x3
atrous -> BN -> ReLU -> pointwise 256 -> BN -> ReLU) with rates
(r_h, r_w) at output stride 16, doubled at 8:

    b0 = conv(F,  (1, 6))     b1 = conv(b0, (18, 15))    b2 = conv(b1, (6, 3))
    b3 = conv(b0, (1, 1))     b4 = conv(b0, (6, 21))

concat(b0..b4) (1280 ch) -> dropout 0.1 -> 1x1 conv 256 + BN + ReLU. The
five branches hold 0.81M parameters on a 2048-channel input (Xception) and
0.36M on 320 channels (MobileNet-v2), the paper's module sizes; the 1x1
projection (0.33M) is not part of those numbers.

``deeplabv3plus_dpc`` is DeepLabv3+ (decoder at stride 4) with the DPC in
place of ASPP. The default encoder is the paper's "modified Xception",
Xception-71 (``xception71``), the backbone of its Cityscapes results
(80.85 val); ``encoder="xception65"`` puts DPC on DeepLabv3+'s VOC backbone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imseg.models.deeplab import DeepLabV3PlusBase
from imseg.models.encoders import Encoder, build_encoder, check_output_stride
from imseg.models.layers import ConvBNAct
from imseg.models.registry import register_model
from imseg.models.xception import truncated_normal_

# (input, (r_h, r_w)) per branch at output stride 16; input -1 is the backbone features.
DPC_BRANCHES: tuple[tuple[int, tuple[int, int]], ...] = (
    (-1, (1, 6)),
    (0, (18, 15)),
    (1, (6, 3)),
    (0, (1, 1)),
    (0, (6, 21)),
)


class SplitSeparableConv(nn.Sequential):
    """TF DeepLab's ``split_separable_conv2d``: depthwise 3x3 (rate r_h, r_w) -> BN -> ReLU -> 1x1 -> BN -> ReLU.

    Init as in TF: truncated normal with std 0.33 (depthwise) and 0.06 (pointwise).
    """

    def __init__(self, in_channels: int, out_channels: int, rate: tuple[int, int]) -> None:
        depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=rate, dilation=rate, groups=in_channels, bias=False)
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        super().__init__(
            depthwise,
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            pointwise,
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        truncated_normal_(depthwise.weight, std=0.33)
        truncated_normal_(pointwise.weight, std=0.06)


class DensePredictionCell(nn.Module):
    """The searched DPC: branches of split separable convs, each reading the features or an earlier branch."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rate_multiplier: int = 1,
        branches: Sequence[tuple[int, tuple[int, int]]] = DPC_BRANCHES,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.inputs = tuple(src for src, _ in branches)
        for i, src in enumerate(self.inputs):
            if not -1 <= src < i:
                raise ValueError(f"DPC branch {i} reads branch {src}; it may read -1 (the features) or 0..{i - 1}")
        self.rates = tuple((r_h * rate_multiplier, r_w * rate_multiplier) for _, (r_h, r_w) in branches)
        self.branches = nn.ModuleList(
            SplitSeparableConv(in_channels if src < 0 else out_channels, out_channels, rate)
            for src, rate in zip(self.inputs, self.rates)
        )
        # TF applies the dropout (keep 0.9) to the concatenation, before the projection.
        self.dropout = nn.Dropout(dropout)
        self.project = ConvBNAct(len(self.branches) * out_channels, out_channels, 1)
        nn.init.kaiming_normal_(self.project[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for src, branch in zip(self.inputs, self.branches):
            outs.append(branch(x if src < 0 else outs[src]))
        return self.project(self.dropout(torch.cat(outs, dim=1)))


class DeepLabV3PlusDPC(DeepLabV3PlusBase):
    """DeepLabv3+ with the Dense Prediction Cell on the encoder output instead of ASPP."""

    def __init__(
        self, encoder: Encoder, num_classes: int, rate_multiplier: int = 1, separable: bool = True, aux: bool = False
    ) -> None:
        super().__init__(encoder, num_classes, separable=separable, aux=aux)
        self.dpc = DensePredictionCell(encoder.channels[-1], 256, rate_multiplier)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.dpc(x)


@register_model(
    "deeplabv3plus_dpc",
    published="DPC module 0.81M params (Xception-71); Cityscapes val 80.85 mIoU (Xception-71, OS16)",
    paper="Chen, Collins, Zhu, Papandreou, Zoph, Schroff, Adam, Shlens: Searching for Efficient Multi-Scale "
    "Architectures for Dense Image Prediction",
    year=2018,
    summary="DeepLabv3+ with the searched Dense Prediction Cell (five separable atrous branches, rates (r_h, r_w) "
    "from (1,1) to (18,15), 0.81M params on 2048 ch) instead of ASPP; aligned Xception-71 as in the paper.",
)
def deeplabv3plus_dpc(
    num_classes: int,
    *,
    encoder: str = "xception71",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    separable: bool = True,
    aux: bool = False,
) -> nn.Module:
    """DeepLabv3+ with DPC. ``separable`` (default True, as with Xception in the paper) is for the decoder convs."""
    check_output_stride("DeepLabv3+ DPC", output_stride, (16, 8))
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    # TF's conv_rate_multiplier = 16 // output_stride: the searched rates are for output stride 16.
    return DeepLabV3PlusDPC(enc, num_classes, 16 // output_stride, separable=separable, aux=aux)
