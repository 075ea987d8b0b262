"""PSPNet: Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network" (CVPR 2017).

A dilated ResNet (output stride 8) feeds the pyramid pooling module: the
map is average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each pooled map goes
through a 1x1 conv to C/4 channels (C/N for N bins) with BN and ReLU, is
upsampled back bilinearly and concatenated with the input map. A 3x3 conv
(512, BN, ReLU), dropout 0.1 and a 1x1 classifier give the logits, which are
upsampled to the input. With ``aux=True`` a second head on ResNet's layer3
(the paper's "res4b22" deep supervision, loss weight 0.4 in the engine)
predicts from the penultimate encoder map.

Differences from the Caffe release:
- torchvision ResNets have the 7x7 stem, not PSPNet's three 3x3 convs, so
  ImageNet weights from torchvision can be used directly.
- Upsampling uses half-pixel centres (``align_corners=False``), as every
  other model here, where Caffe's Interp layer aligns corners.
- The pooling is computed from cumulative sums instead of
  ``adaptive_avg_pool2d``: the same bins as PyTorch's adaptive pooling
  (start = floor(i*n/b), end = ceil((i+1)*n/b)), but written with symbolic
  sizes, so one exported ONNX graph serves every input size (the ONNX
  exporter fixes ``adaptive_avg_pool2d``'s bins to the example input).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import ConvBNAct, FCNHead, init_weights, resize_to
from imseg.models.registry import register_model
from imseg.outputs import SegOutput


def _window_means(x: torch.Tensor, dim: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Means of ``x`` over the windows ``[start[i], end[i])`` along ``dim`` (-2 or -1).

    Differences of a cumulative sum, in float32 so half-precision inputs
    keep their accuracy. (A pooling matrix and ``@`` would be simpler, but
    matmul's reshapes make torch.export pin the input size.)
    """
    acc = x.float().cumsum(dim)
    acc = F.pad(acc, (1, 0) if dim == -1 else (0, 0, 1, 0))  # acc[j] = sum of the first j entries
    total = acc.index_select(dim, end) - acc.index_select(dim, start)
    count = (end - start).to(total.dtype)
    return (total / (count[:, None] if dim == -2 else count)).to(x.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)``, exportable with dynamic H and W (see the module notes)."""
    for dim in (-2, -1):
        n = x.shape[dim]
        i = torch.arange(bins, device=x.device)
        # PyTorch's adaptive-pooling bins: [floor(i * n / b), ceil((i + 1) * n / b)).
        start = torch.div(i * n, bins, rounding_mode="floor")
        end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
        x = _window_means(x, dim, start, end)
    return x


class PyramidPoolingBranch(nn.Module):
    """Average-pool to ``bins`` x ``bins`` -> 1x1 conv -> BN -> ReLU (upsampled by the caller).

    The BatchNorm of the 1x1 bin sees one value per channel per image, so
    training needs a batch of at least 2 (as with ASPP's image pooling), or
    ``norm="group"`` / ``"frozen_batch"`` (imseg/models/norm.py).
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(adaptive_avg_pool(x, self.bins))


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: ``cat([x, up(branch_b(x)) for b in bins])``, C + N * C/N channels."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        if not bins or any(not isinstance(b, int) or b < 1 for b in bins):
            raise ValueError(f"bins must be positive integers, got {tuple(bins)!r}")
        branch_channels = in_channels // len(bins)  # "1/N of the original dimension" (paper, Sec. 3.3)
        self.branches = nn.ModuleList(PyramidPoolingBranch(in_channels, branch_channels, b) for b in bins)
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize_to(branch(x), size) for branch in self.branches], dim=1)


class PSPNet(SegmentationModel):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        channels: int = 512,
        dropout: float = 0.1,
        aux: bool = False,
    ) -> None:
        super().__init__(encoder)
        self.ppm = PyramidPoolingModule(encoder.channels[-1], bins)
        self.bottleneck = ConvBNAct(self.ppm.out_channels, channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # layer3 of a ResNet (1024 ch) -> 3x3 conv 256 -> BN -> ReLU -> dropout 0.1 -> 1x1: FCNHead exactly.
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        init_weights(nn.ModuleList([self.ppm, self.bottleneck, self.classifier]))
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        y = self.dropout(self.bottleneck(self.ppm(feats[-1])))
        out = resize_to(self.classifier(y), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(feats[-2]), size))


@register_model(
    "pspnet",
    paper="Zhao, Shi, Qi, Wang, Jia: Pyramid Scene Parsing Network",
    year=2017,
    summary="Dilated ResNet (OS8) + pyramid pooling (bins 1/2/3/6, 1x1 convs to C/4, upsampled and "
    "concatenated) -> 3x3 conv 512 -> classifier; optional aux head on layer3 (weight 0.4).",
)
def pspnet(
    num_classes: int,
    *,
    encoder: str = "resnet50",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    aux: bool = False,
) -> nn.Module:
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    return PSPNet(enc, num_classes, bins=tuple(bins), aux=aux)
