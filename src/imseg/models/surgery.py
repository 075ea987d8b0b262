"""Layer surgery on backbones: trading strides for dilation, swapping the first conv.

Output stride 16 / 8 is reached the DeepLab way: the strided layer of the
last stage(s) runs at stride 1 and every later 3x3 conv is dilated, so the
receptive field (and therefore ImageNet weights) stay valid while the maps
keep a higher resolution. None of these functions changes a parameter's
shape or a state-dict key: one weights file fits every output stride.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn


def dilate_conv(conv: nn.Conv2d, dilation: int) -> None:
    """Make ``conv`` run at stride 1 with ``dilation``, with "same" padding for the dilated kernel."""
    conv.stride = (1, 1)
    conv.dilation = (dilation, dilation)
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def dilate_stages(stages: Iterable[nn.Module], factor: int = 2, dilate_strided_conv: bool = False) -> None:
    """Remove the stride of ``stages`` (a stage and all later ones) by dilation.

    Every strided conv gets stride 1. Convs with a kernel larger than 1x1
    that come after the first strided conv get their dilation multiplied by
    ``factor``; the strided conv itself keeps its dilation (its taps were
    spaced at the previous resolution, as torchvision's ResNet does with
    ``replace_stride_with_dilation``) unless ``dilate_strided_conv``
    (torchvision's ``MobileNetV3(dilated=True)`` dilates it too).

    To reach output stride 8 call it for the last stage first, then for the
    two last stages, so the last stage ends up dilated by 4.
    """
    seen_stride = False
    for module in stages:
        for conv in module.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            strided = conv.stride != (1, 1)
            dilate = max(conv.kernel_size) > 1 and (seen_stride or (strided and dilate_strided_conv))
            if strided or dilate:
                dilate_conv(conv, conv.dilation[0] * factor if dilate else conv.dilation[0])
            seen_stride = seen_stride or strided


def dilate_last_stages(stages: list[nn.Module], output_stride: int, dilate_strided_conv: bool = False) -> None:
    """Dilate the trailing stride-2 stages of a net whose last stage ends at stride 32."""
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
    for i in range(1, n_dilated + 1):  # last stage first: see dilate_stages
        dilate_stages(stages[-i:], 2, dilate_strided_conv)


def module_stride(module: nn.Module) -> int:
    """The product of the strides of every conv in ``module`` (its downsampling, for a chain of convs)."""
    stride = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


def cumulative_strides(blocks: Iterable[nn.Module]) -> list[int]:
    """The stride w.r.t. the input after each block of a chain (``[2, 2, 4, 4, 8, ...]``)."""
    cumulative, strides = 1, []
    for block in blocks:
        cumulative *= module_stride(block)
        strides.append(cumulative)
    return strides


def replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same conv for ``in_channels`` inputs, He-initialised like torchvision's backbones."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
