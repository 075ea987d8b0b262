"""Auto-DeepLab: Liu, Chen, Schroff, Adam, Hua, Yuille & Fei-Fei, "Auto-DeepLab: Hierarchical Neural
Architecture Search for Semantic Image Segmentation" (CVPR 2019).

The searched network, fixed, as the official TensorFlow code builds it
(tensorflow/models research/deeplab/core ``nas_network.hnasnet`` and
``nas_cell.NASBaseCell``): a 3-conv stem to stride 4, then 12 cells whose
resolution follows the searched path ``[0,0,0,1,2,1,2,2,3,3,2,1]`` (level
l = stride 4 * 2**l), ending at output stride 8. Each cell has F * 2**level
filters per op and outputs the concatenation of its 5 blocks. On top: ReLU,
DeepLabv3 ASPP (256 channels, image pooling) and the DeepLabv3+ decoder
with Cell_2 (stride 4) as the low-level features.

Every op of the genotype (B1..B5 = block outputs; h0 = previous cell, h1 =
the one before, both after the cell's 1x1 pre-processing):

    B1 = atrous5x5(h1) + sep3x3(h0)
    B2 = sep3x3(h1)    + atrous3x3(h0)
    B3 = sep3x3(B2)    + sep3x3(h1)
    B4 = sep5x5(B3)    + sep5x5(B1)
    B5 = sep5x5(B2)    + atrous5x5(B4)

Choices where the sources leave a gap (see docs/models/hrnet_autodeeplab_fdnet.md):
ASPP rates 12/24/36 (the DeepLab convention at output stride 8; the paper's
value is a command-line flag), regular (not separable) 3x3 convs in ASPP
and decoder (that is what reproduces the published parameter counts),
BatchNorm eps 1e-3 as TF but PyTorch's default momentum, and every
resolution change resized to the size the path's stride gives for the
input (which equals TF's ``(d - 1) * scale + 1`` on its 8k+1 crop sizes).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.deeplab import DeepLabV3Plus
from imseg.models.encoders import Encoder
from imseg.models.registry import register_variant
from imseg.preprocessing import Preprocessing

# Level of each of the 12 cells (0 = stride 4, 1 = 8, 2 = 16, 3 = 32): the TF ``hnasnet`` backbone.
PATH = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
# The 10 ops in TF order (left, right of each block): (kind, kernel, input). Input 0 = h0 (H^(l-1)),
# 1 = h1 (H^(l-2)), 2 + b = output of block b. TF: operations + hiddenstate_indices [1,0,1,0,3,1,4,2,3,5].
GENOTYPE = (
    ("atrous", 5, 1), ("sep", 3, 0),
    ("sep", 3, 1), ("atrous", 3, 0),
    ("sep", 3, 3), ("sep", 3, 1),
    ("sep", 5, 4), ("sep", 5, 2),
    ("sep", 5, 3), ("atrous", 5, 5),
)  # fmt: skip
# The decoder's low-level features: TF's end point for stride 4 (``Cell_2``).
LOW_LEVEL_CELL = 2
# From scratch, TF DeepLab's input convention: 2 * (x / 255) - 1.
AUTODEEPLAB_PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB", 1 / 255)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF nas_arg_scope: epsilon 1e-3. Its decay 0.9997 (momentum 3e-4) only suits million-step schedules;
    # PyTorch's 0.1 lets the running statistics follow within a few hundred steps.
    return nn.BatchNorm2d(channels, eps=1e-3)


def _resize_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """TF ``resize_bilinear`` (align_corners=True), the resampling of every NAS cell."""
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)


def _relu_conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """The cell's input pre-processing: ReLU -> 1x1 conv -> BN (not in place: cell outputs are read twice)."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False), _bn(out_channels))


class SepConvOp(nn.Sequential):
    """``separable_kxk_2``: two repeats of ReLU -> depthwise kxk -> pointwise 1x1 -> BN; stride on the first."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        layers: list[nn.Module] = []
        for repeat in range(2):
            layers += [
                nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size, stride if repeat == 0 else 1, kernel_size // 2,
                          groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                _bn(channels),
            ]  # fmt: skip
        super().__init__(*layers)


class AtrousConvOp(nn.Module):
    """``atrous_kxk``: ReLU -> regular kxk conv with rate 2 -> BN.

    At stride 2 TF instead halves the map bilinearly (align_corners) and
    uses rate 1; the halved size is ceil(d / 2), the same as a stride-2 conv.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        rate = 1 if stride == 2 else 2
        padding = rate * (kernel_size // 2)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=padding, dilation=rate, bias=False)
        self.bn = _bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if self.stride == 2:
            h, w = x.shape[-2:]
            x = _resize_aligned(x, ((h + 1) // 2, (w + 1) // 2))
        return self.bn(self.conv(x))


class Cell(nn.Module):
    """One Auto-DeepLab cell with f filters per op; output = concat of its 5 blocks (5f channels)."""

    def __init__(self, prev_channels: int, prev_prev_channels: int, filters: int, stride: int, resize_h1: bool) -> None:
        super().__init__()
        self.resize_h1 = resize_h1
        self.preprocess0 = _relu_conv_bn(prev_channels, filters)
        # TF uses h1 as it is when it already has f channels (never the case on this path, but kept exact).
        self.preprocess1 = (
            _relu_conv_bn(prev_prev_channels, filters) if prev_prev_channels != filters else nn.Identity()
        )
        ops = []
        for kind, kernel, source in GENOTYPE:
            op_stride = stride if source < 2 else 1  # only ops on the cell inputs reduce the resolution
            ops.append((SepConvOp if kind == "sep" else AtrousConvOp)(filters, kernel, op_stride))
        self.ops = nn.ModuleList(ops)
        self.out_channels = 5 * filters

    def forward(self, h0: torch.Tensor, h1: torch.Tensor, keep_prob: torch.Tensor | None = None) -> torch.Tensor:
        if self.resize_h1:
            h1 = _resize_aligned(h1, h0.shape[-2:])
        states = [self.preprocess0(h0), self.preprocess1(h1)]
        for block in range(5):
            total = None
            for k in (2 * block, 2 * block + 1):
                y = self.ops[k](states[GENOTYPE[k][2]])
                if keep_prob is not None:
                    y = drop_path(y, keep_prob)
                total = y if total is None else total + y
            states.append(total)
        return torch.cat(states[2:], dim=1)


def drop_path(x: torch.Tensor, keep_prob: torch.Tensor) -> torch.Tensor:
    """Zero whole samples with probability 1 - keep_prob, rescaling the kept ones (TF ``_apply_drop_path``)."""
    mask = torch.floor(keep_prob + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x * mask / keep_prob


class AutoDeepLabBackbone(Encoder):
    """Stem + the 12 searched cells; returns [Cell_2 (stride 4), ReLU(Cell_11) (stride 8)].

    Scheduled drop path (off at ``drop_path_keep_prob=1``): in training, op
    outputs of cell i are dropped per sample with keep probability
    ``1 - ratio * (i + 1) / 12 * (1 - keep_prob)``, where ratio = min(1,
    step / total_steps) grows linearly with the number of training forward
    passes so far (the buffer ``drop_path_step``, saved in checkpoints).
    """

    def __init__(
        self,
        name: str,
        filters: int,
        in_channels: int = 3,
        drop_path_keep_prob: float = 1.0,
        drop_path_total_steps: int = 500_000,
    ) -> None:
        if not 0.0 < drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob!r}")
        if drop_path_total_steps < 1:
            raise ValueError(f"drop_path_total_steps must be positive, got {drop_path_total_steps!r}")
        # A cell at level l outputs its 5 blocks of filters * 2**l channels each.
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[5 * filters * 2 ** PATH[LOW_LEVEL_CELL], 5 * filters * 2 ** PATH[-1]],
            strides=[4 * 2 ** PATH[LOW_LEVEL_CELL], 4 * 2 ** PATH[-1]],
            output_stride=4 * 2 ** PATH[-1],
            preprocessing=AUTODEEPLAB_PREPROCESSING.for_channels(in_channels),
        )
        # Stem (TF _nas_stem): the pre-ReLU stride-2 map is cell 0's h1, the stride-4 map its h0.
        self.stem0 = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False), _bn(64), nn.ReLU(inplace=True))
        self.stem1 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, bias=False), _bn(64))
        self.stem2 = nn.Sequential(nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1, bias=False), _bn(128))

        cells = []
        # (channels, level) of h0 and h1; the stem's stride-2 map is level -1.
        prev, prev_prev = (128, 0), (64, -1)
        self.upsample_before: list[bool] = []
        for level in PATH:
            stride = 2 if level == prev[1] + 1 else 1
            if abs(level - prev[1]) > 1:
                raise ValueError(f"the cell path may only move one level at a time, got {PATH}")
            # h0 arrives at the cell's level (upsampled first when the path goes down) or one above it (stride 2).
            h0_level = level - 1 if stride == 2 else level
            filters_l = filters * 2**level
            cells.append(Cell(prev[0], prev_prev[0], filters_l, stride, resize_h1=prev_prev[1] != h0_level))
            self.upsample_before.append(level == prev[1] - 1)
            prev_prev, prev = prev, (cells[-1].out_channels, level)
        self.cells = nn.ModuleList(cells)

        self.drop_path_keep_prob = drop_path_keep_prob
        self.drop_path_total_steps = drop_path_total_steps
        if drop_path_keep_prob < 1.0:
            self.register_buffer("drop_path_step", torch.zeros((), dtype=torch.long))

    def _keep_probs(self) -> list[torch.Tensor | None]:
        if not self.training or self.drop_path_keep_prob >= 1.0:
            return [None] * len(self.cells)
        ratio = (self.drop_path_step.float() / self.drop_path_total_steps).clamp(max=1.0)
        self.drop_path_step += 1
        n = len(self.cells)
        return [1 - ratio * ((i + 1) / n) * (1 - self.drop_path_keep_prob) for i in range(n)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = self.stem1(self.stem0(x))
        h0 = self.stem2(h1)
        sizes = {0: h0.shape[-2:]}  # spatial size of each level, known before the path comes back down to it
        low = h0
        for i, (cell, keep, level, up) in enumerate(zip(self.cells, self._keep_probs(), PATH, self.upsample_before)):
            if up:
                h0 = _resize_aligned(h0, sizes[level])
            out = cell(h0, h1, keep)
            sizes[level] = out.shape[-2:]
            h1, h0 = h0, out
            if i == LOW_LEVEL_CELL:
                low = out
        return [low, F.relu(h0)]


_PAPER = (
    "Liu, Chen, Schroff, Adam, Hua, Yuille, Fei-Fei: Auto-DeepLab: Hierarchical Neural Architecture Search "
    "for Semantic Image Segmentation"
)
# S / M / L differ only in F, the filters per op of a stride-4 cell: one builder signature, one row each.
_VARIANTS = {
    "autodeeplab_s": (20, dict(
        published="10.15M params; Cityscapes val 79.74 mIoU",
        summary="Searched network-level path (12 cells, strides 4..32, output stride 8) and cell, F=20, "
        "trained from scratch with ASPP + DeepLabv3+ decoder (10.15M params published).",
    )),
    "autodeeplab_m": (32, dict(
        published="21.62M params; Cityscapes val 80.04 mIoU",
        summary="Auto-DeepLab-M: the searched 12-cell path and cell with F=32, ASPP + DeepLabv3+ decoder, "
        "output stride 8 (21.62M params published).",
    )),
    "autodeeplab_l": (48, dict(
        published="44.42M params; Cityscapes val 80.33 mIoU",
        summary="Auto-DeepLab-L: the searched 12-cell path and cell with F=48, ASPP + DeepLabv3+ decoder, "
        "output stride 8 (44.42M params published).",
    )),
}  # fmt: skip


def _autodeeplab_builder(name: str, filters: int) -> Callable[..., DeepLabV3Plus]:
    def build(
        num_classes: int,
        *,
        in_channels: int = 3,
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        drop_path_keep_prob: float = 1.0,
        drop_path_total_steps: int = 500_000,
    ) -> DeepLabV3Plus:
        backbone = AutoDeepLabBackbone(name, filters, in_channels, drop_path_keep_prob, drop_path_total_steps)
        return DeepLabV3Plus(backbone, num_classes, aspp_rates=tuple(aspp_rates), separable=False, aux=False)

    return build


for _name, (_filters, _facts) in _VARIANTS.items():
    register_variant(_name, _autodeeplab_builder(_name, _filters), paper=_PAPER, year=2019, **_facts)
