"""SegNet, SegNet-Basic and their Bayesian variants: Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep
Convolutional Encoder-Decoder Architecture for Image Segmentation" (TPAMI 2017, arXiv 1511.00561) and
Kendall, Badrinarayanan & Cipolla, "Bayesian SegNet" (BMVC 2017, arXiv 1511.02680).

The encoder max-pools with 2x2 windows and remembers where each maximum
came from (the pooling "switches"); the decoder upsamples by putting every
value back at its switch position (max-unpooling, zeros elsewhere) and
densifies the sparse map with convolutions. Only the switches cross from
encoder to decoder, no feature maps, which keeps the decoder cheap.

Layer tables follow the authors' prototxts (``alexgkendall/SegNet-Tutorial``,
``Models/*.prototxt``):

* ``segnet``: VGG16 conv1-5 with BN + ReLU (torchvision ``vgg16_bn`` module
  names, so torchvision's ImageNet weights initialise it), a mirrored decoder
  of conv-BN-ReLU (512,512,512 | 512,512,256 | 256,256,128 | 128,64 | 64) and
  a final 3x3 conv to the classes with no BN/ReLU.
* ``segnet_basic``: input LRN, 4 x [7x7 conv 64, BN, ReLU, pool], decoder
  4 x [unpool, 7x7 conv 64, BN] with no ReLU, 1x1 classifier.
* ``bayesian_segnet`` / ``bayesian_segnet_basic``: the same nets with dropout
  p=0.5 at the central encoder/decoder units; `mc_dropout_predict`
  (imseg.uncertainty, importable from here too) samples them at test time
  (Monte-Carlo dropout).

Any input size: caffe pools in ceil mode (a 45-row map pools to 23 rows), and
its Upsample layer is told the pre-pool size (``upsample_h: 23`` etc. in the
CamVid prototxt). Here the pre-pool size is always remembered with the
switches, so 360x480 pools to 180x240, 90x120, 45x60, 23x30, 12x15 and
unpools back exactly, for every H x W.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import build_encoder
from imseg.models.layers import ConvBNAct, crop_padding, init_weights
from imseg.models.registry import register_model
from imseg.preprocessing import TORCHVISION, Preprocessing
from imseg.uncertainty import mc_dropout_predict  # noqa: F401  (its home before imseg.uncertainty)


# --------------------------------------------------------------------------- pooling with switches


class Switches(NamedTuple):
    """What max-unpooling needs from a max-pool: where the maxima were and the map they came from."""

    indices: torch.Tensor  # [B, C, h, w]: flat position (row * W + col) in the pooled map
    size: torch.Size  # (H, W) of the pooled map, including any ceil-mode padding
    pads: tuple[int, int, int, int]  # ceil-mode padding (F.pad order), removed again after unpooling


def max_pool_with_switches(x: torch.Tensor, ceil_mode: bool = True) -> tuple[torch.Tensor, Switches]:
    """2x2 stride-2 max pool that also returns the switches for `max_unpool_with_switches`.

    ``ceil_mode`` pools an odd row/column on its own, as caffe does. It is
    done by padding the map to even size with -inf rather than with
    ``F.max_pool2d(ceil_mode=True)``, whose output-size rule adds shape
    guards ``torch.export`` cannot prove for a dynamic H x W; -inf never
    wins a max, so the result (values and indices into the real positions)
    is exactly the ceil-mode one.
    """
    pads = (0, 0, 0, 0)
    if ceil_mode:
        h, w = x.shape[-2:]
        pads = (0, (w + 1) // 2 * 2 - w, 0, (h + 1) // 2 * 2 - h)
        # No branch on symbolic sizes while exporting (a zero pad is harmless).
        if torch.compiler.is_compiling() or any(pads):
            x = F.pad(x, pads, value=float("-inf"))
    y, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    return y, Switches(indices, x.shape[-2:], pads)


def max_unpool_with_switches(x: torch.Tensor, switches: Switches) -> torch.Tensor:
    """Max-unpooling: each value of ``x`` goes back to its switch position, zeros elsewhere.

    The same as ``F.max_unpool2d(x, indices, 2, output_size=...)``, written as
    a scatter because the ONNX exporter has no conversion for
    ``aten::max_unpool2d``; the output is cropped back to the size the
    pooled map had before any ceil-mode padding.
    """
    b, c = x.shape[:2]
    h, w = switches.size
    out = x.new_zeros((b, c, h * w)).scatter(2, switches.indices.flatten(2), x.flatten(2))
    return crop_padding(out.view(b, c, h, w), switches.pads)


# --------------------------------------------------------------------------- the network


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    """conv -> BN (-> ReLU), "same" padding.

    The conv keeps its bias, as in the caffe models and torchvision's
    vgg16_bn: BN makes it redundant, but keeping it leaves the layer list
    (and the parameter count) one-to-one with the published networks.
    """
    return ConvBNAct(in_channels, out_channels, kernel_size, act=relu, bias=True)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _dropout_rates(p: float, places: Sequence[bool]) -> list[float]:
    """Bayesian SegNet's dropout: ``p`` at the places marked True, none elsewhere."""
    return [p if on else 0.0 for on in places]


class SegNet(SegmentationModel):
    """Encoder with pooling switches -> decoder that unpools with them -> classifier.

    Args:
        encoder: a module whose ``features`` (nn.Sequential) is the encoder;
            its ``nn.MaxPool2d`` entries mark where to pool (they are replaced
            by `max_pool_with_switches` at run time; their own settings are
            not used). Any other entry is applied as is.
        decoder: one block per pool, deepest first; block ``i`` runs right
            after unpooling with the switches of the ``i``-th deepest pool.
        classifier: maps the last decoder block's output to the logits.
        pool_dropout: dropout rate after each pool (encoder order); 0 = none.
        decoder_dropout: dropout rate after each decoder block (decoder order).
        preprocessing: needed when ``encoder`` is not an `Encoder` (SegNet-Basic's).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: Sequence[nn.Module],
        classifier: nn.Module,
        pool_dropout: Sequence[float],
        decoder_dropout: Sequence[float],
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__(encoder, preprocessing)
        self.pool_positions = [i for i, m in enumerate(encoder.features) if isinstance(m, nn.MaxPool2d)]
        n = len(self.pool_positions)
        if len(decoder) != n or len(pool_dropout) != n or len(decoder_dropout) != n:
            raise ValueError(
                f"SegNet needs one decoder block and one dropout rate per pool ({n} pools), got "
                f"{len(decoder)} blocks, {len(pool_dropout)} pool and {len(decoder_dropout)} decoder dropout rates"
            )
        self.decoder = nn.ModuleList(decoder)
        self.classifier = classifier
        self.pool_dropout = nn.ModuleList(_dropout(p) for p in pool_dropout)
        self.decoder_dropout = nn.ModuleList(_dropout(p) for p in decoder_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches: list[Switches] = []
        for i, module in enumerate(self.encoder.features):
            if i in self.pool_positions:
                x, s = max_pool_with_switches(x)
                x = self.pool_dropout[len(switches)](x)
                switches.append(s)
            else:
                x = module(x)
        for block, dropout, s in zip(self.decoder, self.decoder_dropout, reversed(switches)):
            x = dropout(block(max_unpool_with_switches(x, s)))
        # The last unpool restored the input's H x W, so the logits need no resize.
        return self.classifier(x)


# Decoder widths of SegNet, deepest block first (conv5_3_D ... conv1_2_D); conv1_1_D is the classifier.
SEGNET_DECODER: tuple[tuple[int, ...], ...] = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))
# Dropout places of Bayesian SegNet (caffe: encdrop3-5 after pool3-5, decdrop5-3 after conv5_1_D, conv4_1_D, conv3_1_D).
BAYESIAN_POOLS = (False, False, True, True, True)
BAYESIAN_DECODER = (True, True, True, False, False)
# SegNet-Basic: encdrop3-4 after pool3-4, decdrop4-3 after conv_decode4/3 (+ BN).
BAYESIAN_BASIC_POOLS = (False, False, True, True)
BAYESIAN_BASIC_DECODER = (True, True, False, False)


def _segnet_decoder() -> list[nn.Module]:
    blocks = []
    in_channels = 512
    for stage, widths in zip(range(5, 0, -1), SEGNET_DECODER):
        # caffe names: block 5 is conv5_3_D, conv5_2_D, conv5_1_D (counting down towards the output).
        layers = OrderedDict()
        for j, width in enumerate(widths):
            layers[f"conv{stage}_{3 - j if stage > 2 else 2 - j}_D"] = _conv_bn(in_channels, width, 3, relu=True)
            in_channels = width
        blocks.append(nn.Sequential(layers))
    return blocks


def _build_segnet(num_classes: int, encoder_weights: str | None, in_channels: int, dropout: float) -> nn.Module:
    """SegNet on torchvision's VGG16-BN conv layers; ``dropout`` > 0 gives Bayesian SegNet."""
    enc = build_encoder("vgg16_bn", in_channels=in_channels, output_stride=32, weights=encoder_weights)
    decoder = _segnet_decoder()
    classifier = nn.Conv2d(SEGNET_DECODER[-1][-1], num_classes, 3, padding=1)  # conv1_1_D: no BN, no ReLU
    init_weights(nn.ModuleList([*decoder, classifier]))
    return SegNet(enc, decoder, classifier, _dropout_rates(dropout, BAYESIAN_POOLS),
                  _dropout_rates(dropout, BAYESIAN_DECODER))


class LocalResponseNorm2d(nn.LocalResponseNorm):
    """torch's across-channel LRN, computed with a 2-D average pool instead of its 3-D one.

    The same arithmetic as ``F.local_response_norm`` on 4-D input (square, zero-pad the channel axis, average
    ``size`` neighbouring channels, ``x / (k + alpha * avg) ** beta``), but ExecuTorch's runtime has no 3-D
    average pool kernel, and XNNPACK takes a 2-D one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        squares = (x * x).reshape(n, 1, c, h * w)
        squares = F.pad(squares, (0, 0, self.size // 2, (self.size - 1) // 2))
        average = F.avg_pool2d(squares, (self.size, 1), stride=1).reshape(n, c, h, w)
        return x / (self.k + self.alpha * average) ** self.beta


class SegNetBasicEncoder(nn.Module):
    """SegNet-Basic's encoder: input LRN, then 4 x [7x7 conv 64, BN, ReLU, 2x2 max pool]."""

    def __init__(self, in_channels: int, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        # caffe's LRN (across channels) and torch's share the convention: alpha is divided by the size.
        layers: list[nn.Module] = [LocalResponseNorm2d(5, alpha=1e-4, beta=0.75, k=1.0)]
        for i in range(depth):
            layers += [*_conv_bn(in_channels if i == 0 else width, width, 7, relu=True), nn.MaxPool2d(2, 2)]
        self.features = nn.Sequential(*layers)


def _build_segnet_basic(num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    """SegNet-Basic; ``dropout`` > 0 gives Bayesian SegNet-Basic."""
    enc = SegNetBasicEncoder(in_channels)
    # conv_decode4 ... conv_decode1: no ReLU in SegNet-Basic's decoder.
    decoder = [
        nn.Sequential(OrderedDict([(f"conv_decode{i}", _conv_bn(64, 64, 7, relu=False))])) for i in range(4, 0, -1)
    ]
    classifier = nn.Conv2d(64, num_classes, 1)
    init_weights(nn.ModuleList([enc, *decoder, classifier]))
    # Trained from scratch: the torchvision convention like every other model here. The paper fed raw
    # 0-255 BGR (the input LRN then matters); see docs/models/segnet.md to reproduce that.
    return SegNet(enc, decoder, classifier, _dropout_rates(dropout, BAYESIAN_BASIC_POOLS),
                  _dropout_rates(dropout, BAYESIAN_BASIC_DECODER), TORCHVISION.for_channels(in_channels))


_PAPER = (
    "Badrinarayanan, Kendall, Cipolla: SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation"
)
_BAYES_PAPER = (
    "Kendall, Badrinarayanan, Cipolla: Bayesian SegNet: Model Uncertainty in Deep Convolutional "
    "Encoder-Decoder Architectures for Scene Understanding"
)


@register_model(
    "segnet",
    published="29.5M params",
    paper=_PAPER,
    year=2017,
    summary="VGG16-BN encoder whose max-pool indices drive max-unpooling in a mirrored conv-BN-ReLU "
    "decoder; no skip features, 3x3 classifier (29.45M params at K=11).",
)
def segnet(num_classes: int, *, encoder_weights: str | None = None, in_channels: int = 3) -> nn.Module:
    return _build_segnet(num_classes, encoder_weights, in_channels, dropout=0.0)


@register_model(
    "segnet_basic",
    published="1.425M params; CamVid test 47.7 mIoU (from scratch)",
    paper=_PAPER,
    year=2017,
    summary="The paper's small SegNet: input LRN, 4 x (7x7 conv 64, BN, ReLU, pool), 4 x (unpool, "
    "7x7 conv 64, BN) with no decoder ReLU, 1x1 classifier (1.42M params).",
)
def segnet_basic(num_classes: int, *, in_channels: int = 3) -> nn.Module:
    return _build_segnet_basic(num_classes, in_channels, dropout=0.0)


@register_model(
    "bayesian_segnet",
    published="29.5M params (SegNet's, dropout adds none)",
    paper=_BAYES_PAPER,
    year=2017,
    summary="SegNet with dropout 0.5 after pool3-5 and after decoder blocks 5-3; sample it with "
    "imseg.models.segnet.mc_dropout_predict for mean probabilities and per-pixel uncertainty.",
)
def bayesian_segnet(
    num_classes: int, *, encoder_weights: str | None = None, in_channels: int = 3, dropout: float = 0.5
) -> nn.Module:
    return _build_segnet(num_classes, encoder_weights, in_channels, dropout=dropout)


@register_model(
    "bayesian_segnet_basic",
    published="1.425M params",
    paper=_BAYES_PAPER,
    year=2017,
    summary="SegNet-Basic with dropout 0.5 after pool3-4 and after conv_decode4-3; Monte-Carlo "
    "dropout inference via imseg.models.segnet.mc_dropout_predict.",
)
def bayesian_segnet_basic(num_classes: int, *, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return _build_segnet_basic(num_classes, in_channels, dropout=dropout)
