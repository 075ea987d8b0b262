"""DeconvNet: Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation" (ICCV 2015,
arXiv 1505.04366).

A VGG16 convolution network (BN after every conv), its fully connected
layers as convolutions (fc6 = 7x7 valid conv, fc7 = 1x1), and a mirrored
deconvolution network: fc6-deconv (7x7 transposed conv back to pool5's size, 512 channels),
then per stage max-unpooling with the encoder's switches followed by 3x3
deconvolutions. BN + ReLU follow every conv/deconv except the score layer.
Layer table from the official ``HyeonwooNoh/DeconvNet`` prototxts; deconv
layers are ``nn.ConvTranspose2d`` like caffe's Deconvolution layers (3x3,
stride 1, pad 1 keeps the size) and keep their names.

Input size: the paper segments 224x224 object proposals, where pool5 is
7x7 and fc6 (7x7, no padding) gives 1x1. Here any H x W works: the encoder
pools in caffe's ceil mode with switches (as in `imseg.models.segnet`), and
a pool5 map smaller than 8x8 is zero-padded at the bottom/right to 8x8
(zero = no activation after ReLU + max pool). fc6 thus always gives at least
2x2, fc6-deconv restores the padded size, and the padding is cropped off
before unpool5. The minimum is 8 rather than the paper's 7 so fc6's output
is never 1x1: BatchNorm then trains with any batch size, and ``torch.export``
does not specialise the graph on a size-1 map. Inputs larger than 224 in
both directions (pool5 at least 8x8; CamVid's 360x480 gives 12x15) run
exactly as the paper's layers would. Padding pool5 rather than the input
keeps small inputs cheap.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import crop_padding, init_weights
from imseg.models.registry import register_model
from imseg.models.segnet import max_pool_with_switches, max_unpool_with_switches

# Deconvolution network widths after each unpooling, deepest first (deconv5_1 ... deconv1_2).
DECONV_WIDTHS: tuple[tuple[int, ...], ...] = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))
FC6_KERNEL = 7
MIN_POOL5 = FC6_KERNEL + 1  # pool5 is padded to at least 8x8 so fc6's output is at least 2x2


def pool5_padding(h: int, w: int) -> tuple[int, int, int, int]:
    """Bottom/right zero padding (F.pad order) of an h x w pool5 map up to at least 8x8.

    ``torch.sym_max`` rather than ``max`` so the padding stays symbolic
    under ``torch.export``.
    """
    return (0, torch.sym_max(w, MIN_POOL5) - w, 0, torch.sym_max(h, MIN_POOL5) - h)


def _layer_bn_relu(layer: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class DeconvNet(SegmentationModel):
    def __init__(self, encoder: Encoder, num_classes: int, fc_channels: int = 4096) -> None:
        # The switches come from the encoder's own max pools, so it must be a VGG-like
        # `features` Sequential (torchvision's vgg16_bn here).
        super().__init__(encoder)
        self.pool_positions = [i for i, m in enumerate(encoder.features) if isinstance(m, nn.MaxPool2d)]
        top = encoder.channels[-1]

        self.fc6 = _layer_bn_relu(nn.Conv2d(top, fc_channels, FC6_KERNEL), fc_channels)  # padding 0, as in the paper
        self.fc7 = _layer_bn_relu(nn.Conv2d(fc_channels, fc_channels, 1), fc_channels)
        self.fc6_deconv = _layer_bn_relu(nn.ConvTranspose2d(fc_channels, top, FC6_KERNEL), top)

        blocks = []
        in_channels = top
        for stage, widths in zip(range(len(DECONV_WIDTHS), 0, -1), DECONV_WIDTHS):
            layers = OrderedDict()
            for j, width in enumerate(widths, start=1):
                deconv = nn.ConvTranspose2d(in_channels, width, 3, padding=1)
                layers[f"deconv{stage}_{j}"] = _layer_bn_relu(deconv, width)
                in_channels = width
            blocks.append(nn.Sequential(layers))
        self.decoder = nn.ModuleList(blocks)
        self.score = nn.Conv2d(in_channels, num_classes, 1)  # seg-score: no BN / ReLU

        init_weights(nn.ModuleList([self.fc6, self.fc7, self.score]))
        # init_weights only knows Conv2d; the transposed convs get the same He init.
        for m in [self.fc6_deconv, self.decoder]:
            for t in m.modules():
                if isinstance(t, nn.ConvTranspose2d):
                    nn.init.kaiming_normal_(t.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(t.bias)
                elif isinstance(t, nn.BatchNorm2d):
                    nn.init.ones_(t.weight)
                    nn.init.zeros_(t.bias)

    def load_fc_from_classifier(self, classifier: dict[str, torch.Tensor]) -> bool:
        """Initialise fc6/fc7 from VGG's ImageNet classifier (``classifier.0`` / ``classifier.3``), as the paper does.

        VGG's first fully connected layer reads a 512x7x7 map, so it reshapes
        exactly into the 7x7 fc6 conv. Returns False (changing nothing) when
        the tensors are missing or do not fit (e.g. a slim ``fc_channels``).
        """
        w6, b6 = classifier.get("classifier.0.weight"), classifier.get("classifier.0.bias")
        w7, b7 = classifier.get("classifier.3.weight"), classifier.get("classifier.3.bias")
        fc6, fc7 = self.fc6[0], self.fc7[0]
        if any(t is None for t in (w6, b6, w7, b7)):
            return False
        if w6.numel() != fc6.weight.numel() or w7.numel() != fc7.weight.numel() or b6.numel() != fc6.bias.numel():
            return False
        with torch.no_grad():
            fc6.weight.copy_(w6.view_as(fc6.weight))
            fc6.bias.copy_(b6)
            fc7.weight.copy_(w7.view_as(fc7.weight))
            fc7.bias.copy_(b7)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches = []
        for i, module in enumerate(self.encoder.features):
            if i in self.pool_positions:
                x, s = max_pool_with_switches(x, ceil_mode=True)
                switches.append(s)
            else:
                x = module(x)
        pads = pool5_padding(*x.shape[-2:])
        if torch.compiler.is_compiling() or any(pads):  # no branch on symbolic sizes while exporting
            x = F.pad(x, pads)
        # fc6 (valid 7x7) shrinks the map by 6, fc6-deconv grows it back; then drop pool5's padding.
        x = crop_padding(self.fc6_deconv(self.fc7(self.fc6(x))), pads)
        for block, s in zip(self.decoder, reversed(switches)):
            x = block(max_unpool_with_switches(x, s))
        # The last unpool restored the input's H x W.
        return self.score(x)


@register_model(
    "deconvnet",
    published="252M params",
    paper="Noh, Hong, Han: Learning Deconvolution Network for Semantic Segmentation",
    year=2015,
    summary="VGG16-BN + fc6/fc7 as convs, mirrored by fc6-deconv and unpool + 3x3 deconv stages (BN+ReLU "
    "everywhere), 252M params; pool5 padded to >= 8x8 for any input size; fc_channels slims fc6/fc7.",
)
def deconvnet(
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    fc_channels: int = 4096,
) -> nn.Module:
    enc = build_encoder(
        "vgg16_bn", in_channels=in_channels, output_stride=32, weights=encoder_weights, keep_classifier=True
    )
    model = DeconvNet(enc, num_classes, fc_channels=fc_channels)
    # With VGG ImageNet weights, fc6/fc7 start from the ImageNet classifier as in the paper.
    model.load_fc_from_classifier(enc.classifier_state)
    enc.classifier_state = {}  # ~500 MB: not kept around
    return model
