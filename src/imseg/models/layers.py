"""Building blocks shared by the decoders.

Everything here takes plain arguments (channels, kernel size, rates) and
knows nothing about encoders or model names, so any decoder can reuse it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a feature map / logits to ``size`` (H, W); a no-op when it already matches.

    ``align_corners=False`` is the half-pixel convention used by torchvision's
    segmentation models, so logits line up with the input pixels.
    """
    size = (size[0], size[1])  # no int(): under torch.export the sizes are symbolic and int() would fix them
    # Skip the no-op resize in eager mode only: while exporting, the size test
    # would specialise the graph to the example input's size.
    if not torch.compiler.is_compiling() and tuple(x.shape[-2:]) == size:
        return x
    if mode in ("nearest", "area", "nearest-exact"):
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad ``x`` on the bottom/right so H and W are multiples of ``multiple``.

    Returns the padded tensor and the padding (F.pad order: left, right,
    top, bottom) for `crop_padding`. Zero is the dataset mean after
    normalisation, so the padding looks like a neutral grey border.
    """
    h, w = x.shape[-2:]
    # Written as "ceil(h / m) * m - h" so that, under torch.export, the padded
    # size is visibly a multiple of m and the decoder's shape checks resolve.
    ph = (h + multiple - 1) // multiple * multiple - h
    pw = (w + multiple - 1) // multiple * multiple - w
    pads = (0, pw, 0, ph)
    if torch.compiler.is_compiling() or ph or pw:  # no branch on symbolic sizes while exporting
        x = F.pad(x, pads)
    return x, pads


def crop_padding(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple` on a map at the same resolution as the padded input.

    Sizes known as numbers (eager, a fixed-size export): a slice. Symbolic sizes (a dynamic-size export): a
    negative pad, since under torch.export slicing to a symbolic size adds guards it cannot prove. (ExecuTorch's
    kernels refuse negative pads; its exports have a fixed size, so they get the slice.)
    """
    left, right, top, bottom = pads
    height, width = x.shape[-2:]
    if all(isinstance(n, int) for n in (*pads, height, width)):
        return x[..., top:height - bottom, left:width - right] if any(pads) else x
    return F.pad(x, tuple(-p for p in pads))


class AtrousConv2d(nn.Conv2d):
    """A dilated convolution with "same" padding that skips the taps that can only read padding.

    With dilation ``d`` at least the feature map's height, every tap above or below the centre row reads
    the zero padding for every output pixel (output row ``i`` reads rows ``i - d`` and ``i + d``, outside
    ``[0, H)`` for all ``i`` when ``d >= H``); likewise columns and the width. DeepLab's ASPP meets this often:
    torchvision's rates 12/24/36 on the 23 x 30 map of a 360 x 480 picture at output stride 16 make the rate-36
    branch a 1x1 convolution in disguise and the rate-24 branch a 1x3 one. Dropping the dead rows and columns of
    the kernel gives the same output (up to the order of float sums) and the same gradients for the kept taps
    (the dropped ones get zero either way), for a fraction of the work. Only where the size is a known number:
    traced, or exported with a symbolic size, the full kernel runs, so one graph serves every size.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not (isinstance(h, int) and isinstance(w, int)) or torch.jit.is_tracing() or not self._same_padding():
            return super().forward(x)
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        dead_rows, dead_cols = kh > 1 and dh >= h, kw > 1 and dw >= w
        if not (dead_rows or dead_cols):
            return super().forward(x)
        # A kernel side of one tap needs no padding and no dilation. (The slices are computed from the weight:
        # exporters that want constant weights fold them, see imseg.deploy.executorch_export.)
        weight, (ph, pw) = self.weight, self.padding
        if dead_rows:
            weight, ph, dh = weight[:, :, kh // 2: kh // 2 + 1], 0, 1
        if dead_cols:
            weight, pw, dw = weight[:, :, :, kw // 2: kw // 2 + 1], 0, 1
        return F.conv2d(x, weight, self.bias, self.stride, (ph, pw), (dh, dw), self.groups)

    def _same_padding(self) -> bool:
        return (self.stride == (1, 1) and self.padding_mode == "zeros" and all(
            k % 2 == 1 and p == d * (k - 1) // 2 for k, p, d in zip(self.kernel_size, self.padding, self.dilation)))


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> ReLU (``act=False``: no ReLU), "same" padding for any dilation.

    The conv has no bias because the BatchNorm right after it would cancel it;
    ``bias=True`` keeps one where a published layer table has it (SegNet).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
        bias: bool = False,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        conv = AtrousConv2d if dilation > 1 else nn.Conv2d  # same parameters and state-dict keys either way
        layers: list[nn.Module] = [
            conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConvBNAct(nn.Sequential):
    """Depthwise-separable conv as in DeepLabv3+ (Xception-style).

    Depthwise kxk conv -> BN -> ReLU, then pointwise 1x1 -> BN -> ReLU,
    following the TensorFlow DeepLab ``split_separable_conv2d``: normalising
    and activating between the two halves trains better than a bare
    depthwise + pointwise pair.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch of ASPP: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back.

    Note: like torchvision's, the BatchNorm here sees one value per channel
    per image, so training needs a batch of at least 2, or ``norm="group"`` /
    ``"frozen_batch"`` (imseg/models/norm.py).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvBNAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        # A 1x1 map is the same value everywhere: expand is exact and cheaper than interpolate.
        return x.expand(-1, -1, *size)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabv3 / v3+).

    Branches: one 1x1 conv, one 3x3 conv per atrous rate, and image pooling;
    concatenated and projected by 1x1 conv -> BN -> ReLU -> dropout. With
    ``separable=True`` the atrous branches are depthwise-separable, as in
    DeepLabv3+ with Xception.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNAct(in_channels, out_channels, 1)]
        for rate in rates:
            if separable:
                branches.append(SeparableConvBNAct(in_channels, out_channels, 3, dilation=rate))
            else:
                branches.append(ConvBNAct(in_channels, out_channels, 3, dilation=rate))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNAct(len(branches) * out_channels, out_channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class FCNHead(nn.Sequential):
    """torchvision's auxiliary head: 3x3 conv to in/4 channels -> BN -> ReLU -> dropout 0.1 -> 1x1 classifier.

    ``inter_channels`` overrides the in/4 width (a 24-channel MobileNet map
    would otherwise get a 6-channel head).
    """

    def __init__(self, in_channels: int, num_classes: int, inter_channels: int | None = None) -> None:
        inter = max(in_channels // 4, 1) if inter_channels is None else inter_channels
        super().__init__(
            ConvBNAct(in_channels, inter, 3),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights for a ``ConvTranspose2d(channels, channels, kernel_size)`` doing bilinear upsampling.

    Each channel is upsampled independently (identity across channels), as
    in FCN's ``surgery.interp``. With stride ``f``, kernel ``2f`` and padding
    ``f // 2`` the result matches bilinear interpolation with half-pixel
    centres (``align_corners=False``) away from the borders.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def upsampling_deconv(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable ``factor``x upsampling initialised to bilinear interpolation (exact factor x size)."""
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"upsampling factor must be a power of two >= 2, got {factor}")
    deconv = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return deconv


def init_weights(module: nn.Module) -> None:
    """He init for convs and unit BatchNorm, the usual initialisation for new decoder layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
