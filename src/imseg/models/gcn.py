"""GCN: Peng, Zhang, Yu, Luo & Sun, "Large Kernel Matters -- Improve Semantic Segmentation by Global
Convolutional Network" (CVPR 2017).

Each ResNet stage output (res-2..res-5, strides 4..32) goes through a
Global Convolutional Network module: two branches, (k x 1 -> 1 x k) and
(1 x k -> k x 1), each straight to class scores, summed -- a separable
stand-in for a dense k x k kernel, with no BatchNorm and no ReLU so it
stays linear like the large kernel it replaces. A Boundary Refinement
block (S + conv3x3(ReLU(conv3x3(S))), no BatchNorm) follows.

Decoding, FCN-4s style, entirely on K-channel score maps: from 1/32, a
learned x2 deconvolution, add the next finer score map, BR; repeated down
to 1/4; then deconv x2 -> BR -> deconv x2 -> BR to the input resolution.
In all 4 GCN, 4 + 3 + 2 BR and 5 deconvolutions.

Choices the paper leaves open (see docs/models/context.md): the deconvs
are 4x4 stride-2 transposed convs initialised to bilinear upsampling (and
learned); convs have biases. To give the deconvs exactly their skip's size
for any input, the input is zero-padded to a multiple of 32 (so every
stage exactly halves) and the logits cropped back, as FCN-8s does here.
"""
from __future__ import annotations

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import crop_padding, pad_to_multiple, upsampling_deconv
from imseg.models.registry import register_model


class GlobalConvolution(nn.Module):
    """The GCN module: (k x 1 -> 1 x k) + (1 x k -> k x 1), each to ``out_channels``; linear on purpose."""

    def __init__(self, in_channels: int, out_channels: int, k: int = 15) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(
                f"the GCN kernel size k must be a positive odd integer (the paper uses 3..15, 25), got {k!r}"
            )
        p = k // 2
        self.k = k
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (k, 1), padding=(p, 0)),
            nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, p)),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, p)),
            nn.Conv2d(out_channels, out_channels, (k, 1), padding=(p, 0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    """BR: S + conv3x3(ReLU(conv3x3(S))), a residual block on the score map, no BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # acts on conv1's fresh output, never on the identity
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class GCN(SegmentationModel):
    def __init__(self, encoder: Encoder, num_classes: int, k: int = 15) -> None:
        super().__init__(encoder)
        if encoder.output_stride != 32:
            raise ValueError(f"GCN needs an encoder at output stride 32, got {encoder.output_stride}")
        # res-2 .. res-5, fine to coarse.
        self.indices = [encoder.feature_index(s) for s in (4, 8, 16, 32)]
        self.gcn = nn.ModuleList(GlobalConvolution(encoder.channels[i], num_classes, k) for i in self.indices)
        self.br_score = nn.ModuleList(BoundaryRefinement(num_classes) for _ in self.indices)
        # 1/32 -> 1/16 -> 1/8 -> 1/4, each followed by "add the finer score, BR".
        self.up_fuse = nn.ModuleList(upsampling_deconv(num_classes, 2) for _ in range(3))
        self.br_fuse = nn.ModuleList(BoundaryRefinement(num_classes) for _ in range(3))
        # 1/4 -> 1/2 -> 1/1, each followed by BR.
        self.up_final = nn.ModuleList(upsampling_deconv(num_classes, 2) for _ in range(2))
        self.br_final = nn.ModuleList(BoundaryRefinement(num_classes) for _ in range(2))
        # The paper gives no initialisation: GCN/BR convs keep PyTorch's default (fan-in scaled,
        # which keeps the linear GCN's score maps at a sane scale); the deconvs start bilinear.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 32)  # every stage then halves exactly: deconv x2 == skip size
        feats = self.encoder(x)
        scores = [br(gcn(feats[i])) for i, gcn, br in zip(self.indices, self.gcn, self.br_score)]
        y = scores[-1]
        for up, br, score in zip(self.up_fuse, self.br_fuse, reversed(scores[:-1])):
            y = br(up(y) + score)
        for up, br in zip(self.up_final, self.br_final):
            y = br(up(y))
        return crop_padding(y, pads)


@register_model(
    "gcn",
    published="VOC test 82.2, Cityscapes test 76.9 mIoU (ResNet-152)",
    paper="Peng, Zhang, Yu, Luo, Sun: Large Kernel Matters -- Improve Semantic Segmentation by Global "
    "Convolutional Network",
    year=2017,
    summary="ResNet stages -> Global Convolutional Network modules (separable k x k, k=15) and Boundary "
    "Refinement on class-score maps, fused coarse-to-fine with learned x2 deconvs to full resolution.",
)
def gcn(
    num_classes: int,
    *,
    encoder: str = "resnet101",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    k: int = 15,
) -> nn.Module:
    # The GCN decoder fuses four undilated stages (strides 4..32): no output_stride argument.
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=32, weights=encoder_weights)
    return GCN(enc, num_classes, k=k)
