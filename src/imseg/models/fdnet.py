"""FDNet: Zhen, Wang, Zhou, Fang & Quan, "Learning Fully Dense Neural Networks for Image Semantic
Segmentation" (AAAI 2019). No official code exists and only the paper's figure caption and notes were
available, so most of the structure below is our reading of it (docs/models/hrnet_autodeeplab_fdnet.md).

A DenseNet encoder (dense blocks 1-4; the paper's DenseNet-264 is
``encoder="densenet264"``, torchvision's DenseNet-121 is the default
because it has ImageNet weights) at output stride 16 ("FDNet-16s"). The
decoder is "fully dense": before each decoder stage an adaptive aggregation
module resizes the maps of *all* previous blocks (encoder blocks 1-4, then
also decoder block 5) to the stage's resolution, concatenates them and
compresses them with a 1x1 conv. Two aggregations, as in the paper's
figure: the first (stride 8) feeds dense block 5, itself followed by a
compressing 1x1 conv; the second (stride 4) gathers blocks 1-5 and is
classified. Every aggregated map is deeply supervised in the paper; here
the first one's 1x1 classifier is the ``aux`` output (the contract has one
aux tensor), the second one's is the main output. The boundary-aware loss
is a loss, not part of the model.

This module also registers torchvision's DenseNets (``densenet121``,
``densenet161``, ``densenet169``, ``densenet201``) and the paper's
``densenet264`` (no ImageNet weights anywhere) as encoders.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseBlock

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder, register_encoder
from imseg.models.layers import ConvBNAct, init_weights, resize_to
from imseg.models.registry import register_model
from imseg.models.surgery import replace_first_conv
from imseg.models.weight_registry import TORCHVISION_IMAGENET
from imseg.models.weights import download_state_dict
from imseg.outputs import SegOutput
from imseg.preprocessing import TORCHVISION

# ImageNet-1k weights of torchvision's DenseNets (registered in weight_registry.py);
# DenseNet-264 (the paper's) has none.
_DENSENET_WEIGHTS = {
    name: TORCHVISION_IMAGENET[name] for name in ("densenet121", "densenet161", "densenet169", "densenet201")
}
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


class DenseNetEncoder(Encoder):
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
        if self.name not in _DENSENET_WEIGHTS:
            raise ValueError(
                f"there are no ImageNet weights for encoder {self.name!r} in torchvision; "
                "pass the path of a weights file in torchvision's DenseNet format instead"
            )
        url = _DENSENET_WEIGHTS[self.name].url
        return url, download_state_dict(url, f"the ImageNet weights of {self.name!r}")

    def normalise_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # torchvision's DenseNet files predate its module names ("norm.1" for "norm1");
        # the missing num_batches_tracked counters are filled in by load_checked.
        renamed = {}
        for key, value in state.items():
            match = _LEGACY_KEY.match(key)
            renamed[match.group(1) + match.group(2) if match else key] = value
        return renamed


for _name in (*_DENSENET_WEIGHTS, "densenet264"):
    register_encoder(_name, DenseNetEncoder)


# --------------------------------------------------------------------------- FDNet


class AggregationModule(nn.Module):
    """Adaptive aggregation: resize every input map to one size, concatenate, compress by 1x1 conv-BN-ReLU.

    Resizing is bilinear both ways (an exact 2x2 mean when halving; the
    paper does not say which resampling it uses).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.compress = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, maps: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        return self.compress(torch.cat([resize_to(m, size) for m in maps], dim=1))


class FDNet(SegmentationModel):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        decoder_channels: int = 256,
        decoder_block_layers: int = 6,
        growth_rate: int = 32,
        aux: bool = False,
    ) -> None:
        super().__init__(encoder)
        # The encoder's "blocks": every map from stride 4 on (the stem's stride-2 map is not a dense block).
        self.block_indices = [i for i, s in enumerate(encoder.strides) if s >= 4]
        # Resolutions of the two aggregations, taken from the encoder maps at strides 8 and 4.
        self.size_index8 = encoder.feature_index(8)
        self.size_index4 = encoder.feature_index(4)
        block_channels = sum(encoder.channels[i] for i in self.block_indices)

        self.aggregate1 = AggregationModule(block_channels, decoder_channels)
        # Dense block 5: torchvision's DenseNet-BC layers (BN-ReLU-1x1 to 4k, BN-ReLU-3x3 to k).
        self.denseblock5 = _DenseBlock(
            decoder_block_layers, decoder_channels, bn_size=4, growth_rate=growth_rate, drop_rate=0
        )
        self.compress5 = ConvBNAct(decoder_channels + decoder_block_layers * growth_rate, decoder_channels, 1)
        self.aggregate2 = AggregationModule(block_channels + decoder_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_classifier = nn.Conv2d(decoder_channels, num_classes, 1) if aux else None
        init_weights(
            nn.ModuleList([self.aggregate1, self.denseblock5, self.compress5, self.aggregate2, self.classifier])
        )
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        blocks = [feats[i] for i in self.block_indices]
        agg1 = self.aggregate1(blocks, feats[self.size_index8].shape[-2:])
        block5 = self.compress5(self.denseblock5(agg1))
        agg2 = self.aggregate2(blocks + [block5], feats[self.size_index4].shape[-2:])
        out = resize_to(self.classifier(agg2), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(agg1), size))


@register_model(
    "fdnet",
    paper="Zhen, Wang, Zhou, Fang, Quan: Learning Fully Dense Neural Networks for Image Semantic Segmentation",
    year=2019,
    summary="DenseNet encoder (output stride 16) + fully dense decoder: each stage aggregates the resized maps of "
    "all previous blocks (1x1-compressed); deep supervision as aux. Decoder details are our reading (unverified).",
)
def fdnet(
    num_classes: int,
    *,
    encoder: str = "densenet121",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    decoder_channels: int = 256,
    decoder_block_layers: int = 6,
    growth_rate: int = 32,
    aux: bool = False,
) -> nn.Module:
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    return FDNet(enc, num_classes, decoder_channels=decoder_channels, decoder_block_layers=decoder_block_layers,
                 growth_rate=growth_rate, aux=aux)
