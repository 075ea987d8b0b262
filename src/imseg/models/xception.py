"""Aligned Xception (Chollet 2017, as modified for DeepLabv3+ by Chen et al., ECCV 2018): encoders
``xception65`` and ``xception71``.

The layout follows TensorFlow DeepLab's ``core/xception.py``:

* entry flow: 3x3/2 conv 32 -> 3x3 conv 64 (BN + ReLU), then Xception
  modules of three separable convs whose *last* separable conv is strided
  (max pooling is replaced by strided separable convs);
* middle flow: 16 modules of 728 channels with an identity shortcut;
* exit flow: one strided module (728, 1024, 1024) and one module
  (1536, 1536, 2048) without shortcut whose separable convs have BN + ReLU
  after both the depthwise and the pointwise conv.

A separable conv is ReLU -> depthwise 3x3 -> BN -> pointwise 1x1 -> BN
(the ReLU comes first, so a module's input stays pre-activation for its
shortcut). Output stride 16 / 8 works as in TF's ``stack_blocks_dense``:
the module that would go past the output stride runs at stride 1 with the
current rate, every later module is dilated by the skipped stride.

Features: inside every strided module, the output of its second separable
conv (the last map before the stride, TF's ``separable_conv2_pointwise``
end point, before the next ReLU), plus the final output. For Xception-65
that is 128 ch @2, 256 ch @4 (DeepLabv3+'s low-level decoder input), 728 @8,
1024 @16, 2048 @32.

Module names are those of timm's ``xception65`` / ``xception71``
(``stem.0.conv``, ``blocks.3.stack.conv1.conv_dw``, ...), so a timm state
dict loads directly: ``weights="imagenet"`` takes timm's ``*.tf_in1k``
weights, the ImageNet checkpoints of TF DeepLab ported to PyTorch. Their
preprocessing is TF's: RGB scaled to [-1, 1] (mean 0.5, std 0.5 after /255).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from imseg.models.encoders import Encoder, register_encoder
from imseg.models.weights import timm_download_advice, timm_pretrained
from imseg.preprocessing import Preprocessing

# TF DeepLab / timm tf_in1k input convention: (2 / 255) * x - 1.
XCEPTION_PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="RGB", scale=1 / 255)

# BatchNorm epsilon of TF's xception_arg_scope (and timm's port); the momentum stays at PyTorch's 0.1
# because TF's decay 0.9997 is tuned for long 16-image-batch schedules and lags badly on short ones.
_BN_EPS = 1e-3


class _Module(NamedTuple):
    """One Xception module of the layout tables below."""

    out_channels: tuple[int, int, int]
    stride: int
    shortcut: bool = True  # 1x1-conv shortcut when the shape changes, identity otherwise; False: no shortcut
    relu_first: bool = True  # False: BN + ReLU inside each separable conv (exit/block2)


_ENTRY_65 = [_Module((128, 128, 128), 2), _Module((256, 256, 256), 2), _Module((728, 728, 728), 2)]
_ENTRY_71 = [
    _Module((128, 128, 128), 2),
    _Module((256, 256, 256), 1),
    _Module((256, 256, 256), 2),
    _Module((728, 728, 728), 1),
    _Module((728, 728, 728), 2),
]
_MIDDLE = [_Module((728, 728, 728), 1)] * 16
_EXIT = [_Module((728, 1024, 1024), 2), _Module((1536, 1536, 2048), 1, shortcut=False, relu_first=False)]

LAYOUTS: dict[str, list[_Module]] = {
    "xception65": _ENTRY_65 + _MIDDLE + _EXIT,
    "xception71": _ENTRY_71 + _MIDDLE + _EXIT,
}

# timm's names of the ported TF DeepLab ImageNet weights.
_IMAGENET_TAGS = {"xception65": "xception65.tf_in1k", "xception71": "xception71.tf_in1k"}


class ConvBN(nn.Module):
    """Conv -> BN (-> ReLU), named ``conv`` / ``bn`` like timm's ConvNormAct."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv(nn.Module):
    """Depthwise 3x3 (atrous) -> BN [-> ReLU] -> pointwise 1x1 -> BN [-> ReLU].

    TF pads strided convs explicitly by (k - 1) * rate / 2 on each side; for
    a 3x3 kernel that is a symmetric ``padding=dilation``, as here.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, act: bool) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_channels, in_channels, 3, stride, padding=dilation, dilation=dilation, groups=in_channels, bias=False
        )
        self.bn_dw = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.act_dw = nn.ReLU(inplace=True) if act else nn.Identity()
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act_pw = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_dw(self.bn_dw(self.conv_dw(x)))
        return self.act_pw(self.bn_pw(self.conv_pw(x)))


class XceptionModule(nn.Module):
    """Three separable convs (the last one strided) plus a shortcut; returns (output, feature tap)."""

    def __init__(self, in_channels: int, spec: _Module, stride: int, dilation: int) -> None:
        super().__init__()
        out_channels = spec.out_channels[-1]
        # Decided on the layout's stride, not the dilated one: the 1x1 projection stays in a module
        # that runs at stride 1 because of the output stride, so one state dict fits every output
        # stride (TF's skip_connection_type="conv"; timm drops it there).
        needs_projection = out_channels != in_channels or spec.stride != 1
        project = spec.shortcut and needs_projection
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride, act=False) if project else None
        self.identity_shortcut = spec.shortcut and not needs_projection
        self.stack = nn.Sequential()
        channels = in_channels
        for i, depth in enumerate(spec.out_channels):
            if spec.relu_first:
                # Not in place: act1 reads the module input (still needed by the shortcut) and act3
                # reads the second conv's output (the feature tap).
                self.stack.add_module(f"act{i + 1}", nn.ReLU(inplace=i == 1))
            self.stack.add_module(
                f"conv{i + 1}",
                SeparableConv(channels, depth, stride if i == 2 else 1, dilation, act=not spec.relu_first),
            )
            channels = depth
        self._tap_index = list(dict(self.stack.named_children())).index("conv2")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = tap = x
        for i, module in enumerate(self.stack):
            y = module(y)
            if i == self._tap_index:
                tap = y
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.identity_shortcut:
            y = y + x
        return y, tap


class XceptionEncoder(Encoder):
    """Aligned Xception-65 / -71; see the module docstring for the layout and the feature taps."""

    first_conv = "stem.0.conv"

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        if name not in LAYOUTS:
            raise ValueError(f"unknown Xception variant {name!r}; choose one of {sorted(LAYOUTS)}")
        stem = nn.Sequential(ConvBN(in_channels, 32, 3, stride=2), ConvBN(32, 64, 3))

        stride, dilation, channels = 2, 1, 64
        blocks, taps, tap_channels, tap_strides = [], [], [], []
        for i, spec in enumerate(LAYOUTS[name]):
            block_stride, block_dilation = spec.stride, dilation
            if spec.stride > 1:
                # The map before the stride is a feature; as in TF, the module that would pass the
                # output stride keeps the current rate and runs at stride 1, later ones are dilated.
                taps.append(i)
                tap_channels.append(spec.out_channels[1])
                tap_strides.append(stride)
                if stride * spec.stride > output_stride:
                    dilation *= spec.stride
                    block_stride = 1
                else:
                    stride *= spec.stride
            blocks.append(XceptionModule(channels, spec, block_stride, block_dilation))
            channels = spec.out_channels[-1]
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=tap_channels + [channels],
            strides=tap_strides + [stride],
            output_stride=output_stride,
            preprocessing=XCEPTION_PREPROCESSING.for_channels(in_channels),
        )
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self._taps = frozenset(taps)
        _init_tf_xception(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x, tap = block(x)
            if i in self._taps:
                feats.append(tap)
        feats.append(x)
        return feats

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        """timm's ``*.tf_in1k`` port of TF DeepLab's ImageNet weights (timm's key names, like ours)."""
        tag = _IMAGENET_TAGS[self.name]
        return f"timm:{tag}", timm_pretrained(tag, timm_download_advice(tag)).state_dict()


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """TF's ``truncated_normal_initializer``: N(0, std^2) redrawn wherever it falls beyond 2 std.

    Rejection sampling (about 5% of the values are redrawn per round) gives
    the same distribution as ``nn.init.trunc_normal_`` several times faster,
    which matters for building the 38M-weight Xception-65.
    """
    if tensor.is_meta:  # shapes only (profiling, config checks): there are no values to draw
        return tensor
    flat = tensor.view(-1)
    flat.normal_(0.0, std)
    redraw = (flat.abs() > 2 * std).nonzero().squeeze(1)
    while redraw.numel():
        values = torch.randn(redraw.numel(), dtype=flat.dtype, device=flat.device) * std
        flat[redraw] = values
        redraw = redraw[values.abs() > 2 * std]
    return tensor


def _init_tf_xception(module: nn.Module) -> None:
    """TF DeepLab's Xception init: truncated normal (std 0.09) for every conv, unit BN."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            truncated_normal_(m.weight, std=0.09)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


register_encoder("xception65", XceptionEncoder)
register_encoder("xception71", XceptionEncoder)
