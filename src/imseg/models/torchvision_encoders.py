"""torchvision backbones behind the encoder contract: ResNet-18/34/50/101, VGG16 (-BN), MobileNetV3, DenseNet.

They keep torchvision's module names (``conv1``, ``layer1.0.conv1``,
``features.0``, ...), so a torchvision ``state_dict`` file loads directly;
its classifier keys are dropped. Output stride 16 / 8 by dilation (see
surgery.py); ``strides`` report the real strides, e.g. ``[2, 4, 8, 16, 16]``
at output stride 16.

``taps`` (timm's ``out_indices``, torchvision's ``return_layers``) chooses
which maps ``forward`` returns: ResNet's stem and four stages (0-4), any
module of VGG's or MobileNetV3's ``features`` Sequential. By default every
encoder returns one map per stride, the deepest one at that stride; the
encoder keeps them as ``encoder.taps``.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg
from torchvision.models.densenet import DenseNet

from imseg.models.encoder_base import Encoder, check_taps
from imseg.models.surgery import dilate_conv, dilate_last_stages, replace_first_conv
from imseg.models.weight_registry import TORCHVISION_IMAGENET
from imseg.models.weights import download_state_dict
from imseg.preprocessing import TORCHVISION

# ImageNet-1k weights for "imagenet" (IMAGENET1K_V1; the table lives in weight_registry.py).
TORCHVISION_WEIGHTS = {
    name: TORCHVISION_IMAGENET[name]
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "vgg16_bn",
                 "mobilenet_v3_large", "mobilenet_v3_small", "densenet121", "densenet161", "densenet169", "densenet201")
}


class TorchvisionEncoder(Encoder):
    """Shared weight loading for encoders that keep torchvision's module names."""

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        # torch.hub's download checks the SHA-256 prefix the registry also records for these files.
        url = TORCHVISION_WEIGHTS[self.name].url
        return url, download_state_dict(url, f"the ImageNet weights of {self.name!r}")


def run_with_taps(features: nn.Sequential, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    """Run a Sequential up to its last tap, collecting the outputs of the modules whose index is in ``taps``."""
    out = []
    for i, module in enumerate(features):
        x = module(x)
        if i in taps:
            out.append(x)
        if i == taps[-1]:
            break
    return out


def _out_channels(features: nn.Sequential) -> list[int]:
    """Channels after each module of a conv chain: those of the last conv so far."""
    channels, current = [], 0
    for module in features:
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        current = convs[-1].out_channels if convs else current
        channels.append(current)
    return channels


class ResNetEncoder(TorchvisionEncoder):
    """torchvision ResNet; features after the stem (stride 2) and after each layer (4, 8, 16, 32).

    Taps 0-4 are the stem and layer1-4.
    """

    first_conv = "conv1"

    def __init__(
        self, name: str, in_channels: int = 3, output_stride: int = 32, taps: Sequence[int] | None = None
    ) -> None:
        builder = getattr(torchvision.models, name)
        bottleneck = name in ("resnet50", "resnet101")
        if bottleneck:
            # Exactly how torchvision builds the DeepLabv3 / FCN backbones.
            net = builder(weights=None, replace_stride_with_dilation=[False, output_stride <= 8, output_stride <= 16])
        else:
            # BasicBlock has no dilation support in torchvision: dilate by hand.
            net = builder(weights=None)
            dilate_last_stages([net.layer3, net.layer4], output_stride)
        expansion = 4 if bottleneck else 1
        taps = (0, 1, 2, 3, 4) if taps is None else check_taps(taps, 5, name)
        channels = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[channels[i] for i in taps],
            strides=[min(2 ** (i + 1), output_stride) for i in taps],
            output_stride=output_stride,
            preprocessing=TORCHVISION.for_channels(in_channels),
        )
        self.conv1 = replace_first_conv(net.conv1, in_channels)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.relu(self.bn1(self.conv1(x)))
        f4 = self.layer1(self.maxpool(f2))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        feats = [f2, f4, f8, f16, f32]
        return [feats[i] for i in self.taps]


class FeaturesEncoder(TorchvisionEncoder):
    """An encoder that is one Sequential, torchvision's ``features``; its taps index the modules.

    ``downsamplers``: the modules that halve the resolution (nominally: at
    output stride 16 / 8 the last ones run at stride 1, and the reported
    strides are capped there).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        output_stride: int,
        features: nn.Sequential,
        downsamplers: Sequence[int],
        taps: Sequence[int],
    ) -> None:
        channels = _out_channels(features)
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[channels[i] for i in taps],
            strides=[min(2 ** bisect_right(downsamplers, i), output_stride) for i in taps],
            output_stride=output_stride,
            preprocessing=TORCHVISION.for_channels(in_channels),
        )
        self.features = features
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_with_taps(self.features, x, self.taps)


class VGGEncoder(FeaturesEncoder):
    """torchvision VGG16 (optionally with BatchNorm); features after each max pool (strides 2..32).

    Output stride 16 / 8 as in DeepLab-LargeFOV: the last one / two pools
    become 3x3 stride-1 pools (padding 1) and the convs after a stride-1
    pool are dilated by 2 (by 4 after two).
    """

    first_conv = "features.0"

    def __init__(
        self, name: str, in_channels: int = 3, output_stride: int = 32, taps: Sequence[int] | None = None
    ) -> None:
        # Build only the conv part: torchvision's full VGG would first allocate
        # (and initialise) a 120M-parameter classifier we would throw away.
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=name == "vgg16_bn")
        features[0] = replace_first_conv(features[0], in_channels)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        n_strided = {32: 5, 16: 4, 8: 3}[output_stride]
        dilation = 1
        for i, module in enumerate(features):
            if isinstance(module, nn.Conv2d) and dilation > 1:
                dilate_conv(module, dilation)
            elif isinstance(module, nn.MaxPool2d) and pools.index(i) >= n_strided:
                features[i] = nn.MaxPool2d(3, stride=1, padding=1)
                dilation *= 2
        taps = pools if taps is None else check_taps(taps, len(features), name)
        super().__init__(name, in_channels, output_stride, features, pools, taps)


class MobileNetV3Encoder(FeaturesEncoder):
    """torchvision MobileNetV3; features at the last block of each stride (2, 4, 8, 16, 32).

    The stride-32 map is the final 1x1 conv (960 / 576 channels), the map
    torchvision's LR-ASPP uses as its high-level input. Output stride 16
    matches torchvision's ``mobilenet_v3_*(dilated=True)`` exactly. A
    block's channels are its last conv's (the inverted residual's projection).
    """

    first_conv = "features.0.0"
    # Where each stride begins in ``features``: the stages are features[b[k]:b[k + 1]], at stride 2 ** (k + 1).
    STAGE_BOUNDS = {"mobilenet_v3_large": (0, 2, 4, 7, 13, 17), "mobilenet_v3_small": (0, 1, 2, 4, 9, 13)}

    def __init__(
        self, name: str, in_channels: int = 3, output_stride: int = 32, taps: Sequence[int] | None = None
    ) -> None:
        features = getattr(torchvision.models, name)(weights=None).features
        features[0][0] = replace_first_conv(features[0][0], in_channels)
        bounds = self.STAGE_BOUNDS[name]
        dilate_last_stages([features[a:b] for a, b in zip(bounds, bounds[1:])], output_stride, dilate_strided_conv=True)
        taps = self.default_taps(name) if taps is None else check_taps(taps, len(features), name)
        super().__init__(name, in_channels, output_stride, features, bounds[:-1], taps)

    @classmethod
    def default_taps(cls, name: str) -> tuple[int, ...]:
        """The last block of each stage."""
        return tuple(end - 1 for end in cls.STAGE_BOUNDS[name][1:])

    @classmethod
    def torchvision_taps(cls, name: str, output_stride: int) -> tuple[int, ...]:
        """The taps of torchvision's segmentation models: the stride-8 map is the *first* block at stride 8.

        torchvision's LR-ASPP and DeepLabV3 read MobileNetV3 at its strided
        blocks ("C_n", ``_is_cn``), e.g. ``features[4]`` for stride 8 of the
        large model, where the default taps the last one (``features[6]``).
        Same channels, different depth; matching torchvision matters for
        loading its weights. At output stride 8 the stride-8 map is the
        encoder's deepest and stays the last block.
        """
        taps = list(cls.default_taps(name))
        if output_stride > 8:
            taps[2] = cls.STAGE_BOUNDS[name][2]
        return tuple(taps)


# torchvision's DenseNets have ImageNet weights (in TORCHVISION_WEIGHTS); DenseNet-264 (FDNet's) has none.
DENSENETS = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264")
# DenseNet-264 (Huang et al., Table 1): DenseNet-BC, growth rate 32, blocks of 6/12/64/48 layers.
_DENSENET264 = {"growth_rate": 32, "block_config": (6, 12, 64, 48), "num_init_features": 64}

# torchvision's own DenseNet weight files still use the pre-0.4 key names ("norm.1" for "norm1")
# and, being older than BatchNorm's num_batches_tracked, lack that buffer.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class _AvgPool2x2Stride1(nn.Module):
    """The dilated stand-in for a transition's 2x2 stride-2 average pool: the same 2x2 means at every position.

    The bottom/right border is replicated so the map keeps its size.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)


class DenseNetEncoder(TorchvisionEncoder):
    """torchvision DenseNet-BC; features at strides 2, 4, 8, 16, 32.

    The stride-2 map is the stem's ReLU; the stride-4/8/16 maps are the
    BN-ReLU'd outputs of dense blocks 1-3 (the first half of each
    transition, as segmentation_models_pytorch taps them) and the stride-32
    map is ReLU(norm5) after dense block 4, so every map is normalised.
    Output stride 16 / 8: the last one / two transitions pool with stride 1
    (`_AvgPool2x2Stride1`) and the 3x3 convs of the dense blocks after them
    are dilated by 2 / 4. The transitions' 2x2 pools floor odd sizes, as in
    torchvision (``ceil_mode`` would put a size guard in exported graphs).
    Module names are torchvision's (``features.denseblock1...``).
    """

    first_conv = "features.conv0"

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        if name == "densenet264":
            net = DenseNet(**_DENSENET264)
        else:
            net = getattr(torchvision.models, name)(weights=None)
        features = net.features
        features.conv0 = replace_first_conv(features.conv0, in_channels)
        transitions = [features.transition1, features.transition2, features.transition3]
        blocks = [features.denseblock2, features.denseblock3, features.denseblock4]
        n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
        dilation = 1
        for transition, block in list(zip(transitions, blocks))[len(transitions) - n_dilated:]:
            transition.pool = _AvgPool2x2Stride1()
            dilation *= 2
            for layer in block.children():
                layer.conv2.dilation = (dilation, dilation)
                layer.conv2.padding = (dilation, dilation)
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[features.conv0.out_channels, *[t.norm.num_features for t in transitions],
                      features.norm5.num_features],
            strides=[min(s, output_stride) for s in (2, 4, 8, 16, 32)],
            output_stride=output_stride,
            preprocessing=TORCHVISION.for_channels(in_channels),
        )
        self.features = features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features
        x = f.relu0(f.norm0(f.conv0(x)))
        out = [x]
        x = f.denseblock1(f.pool0(x))
        for transition, block in (
            (f.transition1, f.denseblock2),
            (f.transition2, f.denseblock3),
            (f.transition3, f.denseblock4),
        ):
            x = transition.relu(transition.norm(x))
            out.append(x)
            x = block(transition.pool(transition.conv(x)))
        out.append(F.relu(f.norm5(x)))
        return out

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        if self.name not in TORCHVISION_WEIGHTS:
            raise ValueError(
                f"there are no ImageNet weights for encoder {self.name!r} in torchvision; "
                "pass the path of a weights file in torchvision's DenseNet format instead"
            )
        return super().imagenet_state()

    def normalise_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # torchvision's DenseNet files predate its module names ("norm.1" for "norm1");
        # the missing num_batches_tracked counters are filled in by load_checked.
        renamed = {}
        for key, value in state.items():
            match = _LEGACY_KEY.match(key)
            renamed[match.group(1) + match.group(2) if match else key] = value
        return renamed


TORCHVISION_ENCODERS: dict[str, type[TorchvisionEncoder]] = {
    "resnet18": ResNetEncoder,
    "resnet34": ResNetEncoder,
    "resnet50": ResNetEncoder,
    "resnet101": ResNetEncoder,
    "vgg16": VGGEncoder,
    "vgg16_bn": VGGEncoder,
    "mobilenet_v3_large": MobileNetV3Encoder,
    "mobilenet_v3_small": MobileNetV3Encoder,
    **{name: DenseNetEncoder for name in DENSENETS},
}


def torchvision_taps(name: str, output_stride: int) -> tuple[int, ...] | None:
    """The taps torchvision's segmentation models read from encoder ``name``; None where they are the default."""
    if TORCHVISION_ENCODERS.get(name) is MobileNetV3Encoder:
        return MobileNetV3Encoder.torchvision_taps(name, output_stride)
    return None
