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
classified. Every aggregated map is deeply supervised in the paper (Fig. 3:
each is upsampled to H x W x C and given a cross-entropy loss): with
``aux=True`` the first one's 1x1 classifier is returned as
``SegOutput.aux``, the second one's is the main output, and the loss scores
both with the same terms (imseg.losses.CompositeLoss, weight
``loss.aux_weight`` on the aux map). The boundary-aware loss is a loss
term (``boundary_aware`` in imseg.losses), not part of the model.

The DenseNet encoders live with the other torchvision encoders
(torchvision_encoders.py): torchvision's ``densenet121/161/169/201`` and
the paper's ``densenet264``, built with torchvision's DenseNet class
(growth 32, blocks 6/12/64/48), for which no ImageNet weights exist.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.densenet import _DenseBlock

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import ConvBNAct, init_weights, resize_to
from imseg.models.registry import register_model
from imseg.outputs import SegOutput

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
