"""FCN: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015).

Two families live here.

**FCN-32s / 16s / 8s (VGG16), as released in shelhamer/fcn.berkeleyvision.org.**
The ImageNet classifier becomes convolutional (fc6 = 7x7 conv, pad 0; fc7 =
1x1 conv; each followed by ReLU and dropout 0.5), ``score_fr`` turns it into
class scores at stride 32, and transposed convs initialised to bilinear
interpolation bring them back to the input, fusing scores predicted from
pool4 (16s, 8s) and pool3 (8s) on the way:

* 32s: score_fr -> 32x (upscore)
* 16s: score_fr -> 2x (upscore2) + score_pool4 -> 16x (upscore16)
* 8s:  ... 16s fusion -> 2x (upscore_pool4) + score_pool3 -> 8x (upscore8)
* 8s at-once (voc-fcn8s-atonce): 8s with pool4 scaled x0.01 and pool3
  x0.0001 by fixed Scale layers before their score layers, trained in one
  stage instead of 32s -> 16s -> 8s.

The 2x upsamplers are learned (paper sec. 4.2, 4.3: "intermediate upsampling
layers are initialized to bilinear upsampling, and then learned"); the final
32x / 16x / 8x ones are fixed bilinear ("final layer deconvolutional filters
are fixed to bilinear interpolation"), so they are buffers, not parameters.
(The released prototxts fix the 2x ones too, lr_mult 0; the paper's text is
followed here.) Every score layer starts at zero, as in the paper (sec. 4.3,
"zero-initialized") and the released nets (Caffe's default filler): with
score_fr at zero the layers below it get no gradient on the very first step
and learn from the second on; score_pool4 / score_pool3 at zero make a fresh
16s / 8s compute exactly its coarser parent.

Geometry (``geometry="caffe"``, the default for VGG encoders) is the
released nets' own: conv1_1 pads by 100, pools round up (Caffe's ceil mode),
fc6 has no padding, the deconvs have none either, and every fusion crops
with the fixed offsets Caffe's ``coord_map`` computes for VGG16: score_pool4
at 5, score_pool3 at 9, the final scores at 19 (32s), 27 (16s), 31 (8s).
The pad of 100 makes the fc6 map large enough for any input (even 1x1) and
the offsets put every output pixel exactly over its input pixel, so logits
come back at the input's H x W for any size with no resizing.

With another encoder (ResNet, MobileNet, timm) there is no such released
geometry: ``geometry="padded"`` (the default there) pads the input to a
multiple of 32, gives fc6 padding 3 and every deconv padding factor/2 so each
produces exactly factor x its input, and crops the padding back off.

**FCN on a dilated ResNet-50/101, as in torchvision** (``fcn_resnet50``,
``fcn_resnet101``): output stride 8, an FCNHead (3x3 conv to in/4 channels ->
BN -> ReLU -> dropout 0.1 -> 1x1) on layer4, bilinear resize to the input,
optionally an auxiliary FCNHead on layer3. `load_torchvision_fcn` loads a
torchvision ``fcn_resnet*`` state dict (e.g. the COCO-with-VOC-labels release).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder
from imseg.models.layers import FCNHead, bilinear_kernel, crop_padding, init_weights, pad_to_multiple, resize_to
from imseg.models.registry import register_variant
from imseg.models.torchvision_encoders import VGGEncoder
from imseg.models.weights import adapt_first_conv, load_checked, state_and_source
from imseg.outputs import SegOutput
from imseg.preprocessing import Preprocessing

GEOMETRIES = ("caffe", "padded")

# The caffe FCN releases subtract this BGR mean (voc-fcn*/net.py, solve.py), on 0-255 pixels,
# with no std. Models loaded with caffe-converted FCN weights must use it instead of the
# torchvision preprocessing their VGG encoder defaults to.
FCN_CAFFE_PREPROCESSING = Preprocessing(
    mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0), channel_order="BGR", scale=1.0
)

# conv1_1's padding in the caffe nets, and the crop offsets that caffe.coord_map derives from
# VGG16's layer geometry with it (each layer maps coordinates by an affine x -> a*x + b):
#   pool5 cell q sits at input 32q - 83.5, fc6 (7x7, pad 0) cell at 32q + 12.5,
#   upscore2 output y at 16y - 11.5 and pool4 cell z at 16z - 91.5       -> z = y + 5
#   upscore_pool4 output t at 8t - 23.5 and pool3 cell w at 8w - 95.5    -> w = t + 9
#   final outputs o at input o - 19 (32x), o - 27 (16x), o - 31 (8x).
CONV1_PAD = 100
POOL4_OFFSET = 5
POOL3_OFFSET = 9


def _crop(x: torch.Tensor, offset: int, size: Sequence[int]) -> torch.Tensor:
    """``x[..., offset:offset + h, offset:offset + w]`` (Caffe's Crop layer with one offset for both axes).

    Through `crop_padding` (a slice at known sizes, a negative pad at symbolic ones; see there). OpenVINO's
    CPU plugin misjudges such a pad's output size under dynamic shapes (docs/deploy.md: export with --static).
    """
    height, width = x.shape[-2:]
    return crop_padding(x, (offset, width - offset - size[1], offset, height - offset - size[0]))


def _scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Caffe's fixed Scale layer (lr 0) of FCN-8s at-once; no op at all for the other nets."""
    return x if scale == 1.0 else x * scale


class FixedBilinearUpsample(nn.Module):
    """A transposed conv frozen at bilinear interpolation, like Caffe's Deconvolution with lr_mult 0.

    The kernel is a (non-persistent) buffer: it is not a parameter (it never
    learns and nothing is left without a gradient), and it is rebuilt from
    ``factor`` rather than stored in checkpoints. Each class channel is
    upsampled on its own (groups = channels), which computes exactly what
    FCN's identity-across-channels ``surgery.interp`` kernel does, 1/channels
    of the work.
    """

    def __init__(self, channels: int, factor: int, padding: int) -> None:
        super().__init__()
        self.factor, self.padding, self.channels = factor, padding, channels
        kernel = bilinear_kernel(1, 2 * factor).expand(channels, 1, -1, -1).contiguous()
        self.register_buffer("weight", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.factor, padding=self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, padding={self.padding}"


class FCN(SegmentationModel):
    """What FCN-32s, 16s and 8s share: the encoder, fc6/fc7, score_fr, the geometry and ``forward``.

    Subclasses add their skip layers and write the fusion out in ``fuse``.
    """

    final_factor: int  # the last, fixed bilinear upsampling
    final_offset: int  # where the input starts in its output, caffe geometry
    # Fixed factors on pool4 / pool3 before their score layers (1: none); only FCN-8s at-once scales.
    pool4_scale: float = 1.0
    pool3_scale: float = 1.0

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        geometry: str | None = None,
    ) -> None:
        super().__init__(encoder)
        if encoder.output_stride != 32:
            raise ValueError(f"FCN needs an encoder at output stride 32, got {encoder.output_stride}")
        if geometry is None:
            geometry = "caffe" if isinstance(encoder, VGGEncoder) else "padded"
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES} or None (the encoder's default), got {geometry!r}")
        if geometry == "caffe":
            if not isinstance(encoder, VGGEncoder):
                raise ValueError(
                    f"geometry='caffe' (conv1_1 pad 100 and the released crop offsets) is VGG16's; "
                    f"encoder {encoder.name!r} needs geometry='padded'"
                )
            _use_caffe_geometry(encoder)
        self.geometry = geometry
        self._caffe = geometry == "caffe"
        self.num_classes = num_classes
        self.i8, self.i16, self.i32 = (encoder.feature_index(s) for s in (8, 16, 32))

        # fc6 / fc7 as convolutions ("convolutionalised" classifier). In the caffe geometry fc6
        # has no padding (the pad 100 at conv1_1 already made room for its 7x7 window).
        self.fc6 = nn.Conv2d(encoder.channels[self.i32], fc_channels, 7, padding=0 if self._caffe else 3)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # Zero, as the paper (sec. 4.3) and the released nets (Caffe's default filler) have it: fc7 and
        # below get their first gradient on the second step, once score_fr has moved.
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)

    # -- building blocks for the subclasses

    def _skip_score(self, stride: int) -> nn.Conv2d:
        """A 1x1 score layer on the stride-``stride`` map, zero-initialised as in the paper."""
        conv = nn.Conv2d(self.encoder.channels[self.encoder.feature_index(stride)], self.num_classes, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    def _learned_upsample(self) -> nn.ConvTranspose2d:
        """The 2x fusion upsampler: learnable, bilinear at start, no bias (kernel 4, stride 2)."""
        deconv = nn.ConvTranspose2d(
            self.num_classes, self.num_classes, 4, stride=2, padding=0 if self._caffe else 1, bias=False
        )
        with torch.no_grad():
            deconv.weight.copy_(bilinear_kernel(self.num_classes, 4))
        return deconv

    def _final_upsample(self) -> FixedBilinearUpsample:
        f = self.final_factor
        return FixedBilinearUpsample(self.num_classes, f, padding=0 if self._caffe else f // 2)

    def _add_pool4_skip(self) -> None:
        """The 16s skip (also the first of 8s): a learned 2x upsampler of score_fr and the pool4 scores."""
        self.upscore2 = self._learned_upsample()
        self.score_pool4 = self._skip_score(16)

    def _fuse_pool4(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """upscore2(score_fr) + score_pool4: the 16s fusion, class scores at stride 16."""
        y = self.upscore2(self._scores(feats[self.i32]))  # stride 32 -> 16
        pool4 = _scaled(feats[self.i16], self.pool4_scale)
        return y + self._align(self.score_pool4(pool4), POOL4_OFFSET, y)

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - overridden
        """Class scores at the (padded) input resolution from the encoder maps."""
        raise NotImplementedError(f"{type(self).__name__} must implement fuse")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x, pads = self._begin(x)
        return self._end(self.fuse(self.encoder(x)), size, pads)

    def _begin(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Padding before the encoder: none in the caffe geometry (conv1_1 pads itself)."""
        if self._caffe:
            return x, (0, 0, 0, 0)
        return pad_to_multiple(x, 32)

    def _scores(self, f32: torch.Tensor) -> torch.Tensor:
        """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> score_fr: class scores at stride 32."""
        y = self.drop6(self.relu(self.fc6(f32)))
        y = self.drop7(self.relu(self.fc7(y)))
        return self.score_fr(y)

    def _align(self, skip: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
        """Crop a skip score map onto the upsampled coarser scores it is added to."""
        return _crop(skip, offset, like.shape[-2:]) if self._caffe else skip

    def _end(self, y: torch.Tensor, size: Sequence[int], pads: tuple[int, int, int, int]) -> torch.Tensor:
        """Cut the full-resolution scores back to the input's H x W."""
        return _crop(y, self.final_offset, size) if self._caffe else crop_padding(y, pads)

    def load_fc_from_classifier(self, classifier: dict[str, torch.Tensor]) -> bool:
        """Initialise fc6/fc7 from a VGG ImageNet classifier (``classifier.0`` / ``classifier.3``).

        VGG's first fully connected layer reads a 512x7x7 map, so its weight
        reshapes exactly into the 7x7 fc6 conv; this is FCN's "net surgery".
        Returns False (and changes nothing) when the shapes do not fit.
        """
        w6, b6 = classifier.get("classifier.0.weight"), classifier.get("classifier.0.bias")
        w7, b7 = classifier.get("classifier.3.weight"), classifier.get("classifier.3.bias")
        if any(t is None for t in (w6, b6, w7, b7)):
            return False
        if w6.numel() != self.fc6.weight.numel() or w7.numel() != self.fc7.weight.numel():
            return False
        with torch.no_grad():
            self.fc6.weight.copy_(w6.view_as(self.fc6.weight))
            self.fc6.bias.copy_(b6)
            self.fc7.weight.copy_(w7.view_as(self.fc7.weight))
            self.fc7.bias.copy_(b7)
        return True


def _use_caffe_geometry(encoder: VGGEncoder) -> None:
    """Turn a torchvision-layout VGG16 into the caffe FCN trunk: conv1_1 pad 100, pools that round up.

    Neither changes a weight or a state-dict key, so ImageNet (or
    caffe-converted) weights stay valid. Rounding up matters: floor-mode
    pools drop the last row/column of odd-sized maps, and the logits near the
    bottom/right edges would then differ from the released nets'.
    """
    encoder.features[0].padding = (CONV1_PAD, CONV1_PAD)
    for i, module in enumerate(encoder.features):
        if isinstance(module, nn.MaxPool2d):
            encoder.features[i] = CaffeMaxPool()


class CaffeMaxPool(nn.Module):
    """2x2 stride-2 max pooling that rounds the output size up, as Caffe's pooling does.

    Same result as ``nn.MaxPool2d(2, 2, ceil_mode=True)``, written as a
    one-row/column pad with -inf and a floor-mode pool: ceil mode makes
    torch.export guard on the parity of every map size (the graph would only
    serve some H x W), the pad does not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 2)


class FCN32s(FCN):
    """FCN-32s: score_fr upsampled 32x by a fixed bilinear deconv."""

    final_factor, final_offset = 32, 19

    def __init__(self, encoder: Encoder, num_classes: int, **kwargs) -> None:
        super().__init__(encoder, num_classes, **kwargs)
        self.upscore = self._final_upsample()

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.upscore(self._scores(feats[self.i32]))


class FCN16s(FCN):
    """FCN-16s: 2x upsampled score_fr + score_pool4, then 16x."""

    final_factor, final_offset = 16, 27

    def __init__(self, encoder: Encoder, num_classes: int, **kwargs) -> None:
        super().__init__(encoder, num_classes, **kwargs)
        self._add_pool4_skip()
        self.upscore16 = self._final_upsample()

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.upscore16(self._fuse_pool4(feats))  # stride 16 -> 1


class FCN8s(FCN):
    """FCN-8s: the 16s fusion, 2x + score_pool3, then 8x."""

    final_factor, final_offset = 8, 31

    def __init__(self, encoder: Encoder, num_classes: int, **kwargs) -> None:
        super().__init__(encoder, num_classes, **kwargs)
        self._add_pool4_skip()
        self.upscore_pool4 = self._learned_upsample()
        self.score_pool3 = self._skip_score(8)
        self.upscore8 = self._final_upsample()

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.upscore_pool4(self._fuse_pool4(feats))  # stride 16 -> 8
        pool3 = _scaled(feats[self.i8], self.pool3_scale)
        y = y + self._align(self.score_pool3(pool3), POOL3_OFFSET, y)
        return self.upscore8(y)  # stride 8 -> 1


class FCN8sAtOnce(FCN8s):
    """FCN-8s "at-once" (voc-fcn8s-atonce): pool4 x 0.01 and pool3 x 0.0001 before their score layers.

    With its skips scaled down the released net was trained in one stage
    (lr 1e-10, 300K iterations) rather than 32s -> 16s -> 8s. Same layers
    and state-dict keys as `FCN8s`.
    """

    pool4_scale, pool3_scale = 0.01, 1e-4


_PAPER = "Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation"

# The four released nets differ only in their skips: one builder signature, one row each.
_VGG_FCNS: dict[str, tuple[type[FCN], dict[str, str]]] = {
    "fcn32s": (FCN32s, dict(
        published="134M params; VOC seg11valid 63.6 mIoU (reference code)",
        summary="VGG16 with its classifier turned into convolutions (fc6 7x7, fc7 1x1); class scores at "
        "stride 32 upsampled 32x by a fixed bilinear deconv. Caffe geometry (pad 100, crop 19).",
    )),
    "fcn16s": (FCN16s, dict(
        published="134M params; VOC seg11valid 65.0 mIoU (reference code)",
        summary="FCN-32s plus a pool4 skip: learned 2x upsampling of the stride-32 scores, added to "
        "zero-initialised pool4 scores, then a fixed 16x bilinear upsampling.",
    )),
    "fcn8s": (FCN8s, dict(
        published="134M params; VOC seg11valid 65.5 mIoU (reference code), VOC2012 test 62.2",
        summary="VGG16 with its classifier turned into convolutions; learned 2x/2x upsampling fusing "
        "pool4 and pool3 scores, fixed 8x bilinear. fc_channels=4096 is the paper's; smaller gives a slim variant.",
    )),
    "fcn8s_atonce": (FCN8sAtOnce, dict(
        published="134M params; VOC seg11valid 65.4 mIoU (reference code, trained in one stage)",
        summary="FCN-8s trained at once (released voc-fcn8s-atonce): pool4 scaled x0.01 and pool3 x0.0001 "
        "before their zero-initialised score layers, so all skips train together from the start.",
    )),
}  # fmt: skip


def _vgg_fcn_builder(cls: type[FCN]) -> Callable[..., FCN]:
    def build(
        num_classes: int,
        *,
        encoder: str = "vgg16",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        fc_channels: int = 4096,
        geometry: str | None = None,
    ) -> FCN:
        enc = build_encoder(
            encoder, in_channels=in_channels, output_stride=32, weights=encoder_weights, keep_classifier=True
        )
        model = cls(enc, num_classes, fc_channels=fc_channels, geometry=geometry)
        # With VGG ImageNet weights, fc6/fc7 start from the ImageNet classifier as in the paper.
        if not model.load_fc_from_classifier(enc.classifier_state) and "classifier.0.weight" in enc.classifier_state:
            warnings.warn(
                f"the weights' VGG classifier does not fit fc6/fc7 with fc_channels={fc_channels} "
                "(ImageNet VGG16 needs 4096): fc6/fc7 start from random weights",
                stacklevel=2,
            )
        enc.classifier_state = {}  # VGG's classifier is ~500 MB: do not keep it around
        # The preprocessing is the encoder's (torchvision: RGB, ImageNet mean/std). Weights converted
        # from the caffe releases need FCN_CAFFE_PREPROCESSING instead.
        return model

    return build


for _name, (_cls, _facts) in _VGG_FCNS.items():
    register_variant(_name, _vgg_fcn_builder(_cls), paper=_PAPER, year=2015, **_facts)


# --------------------------------------------------------------------------- torchvision's FCN-ResNet


class DilatedFCN(SegmentationModel):
    """torchvision's FCN: FCNHead on the deepest map of a dilated encoder, bilinear resize to the input.

    Module names: ``encoder`` (torchvision: ``backbone``), ``classifier``,
    ``aux_classifier``; `load_torchvision_fcn` maps between them.
    """

    def __init__(self, encoder: Encoder, num_classes: int, aux: bool = False) -> None:
        super().__init__(encoder)
        self.classifier = FCNHead(encoder.channels[-1], num_classes)
        # torchvision's auxiliary head sits on layer3, the map before the last.
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        init_weights(self.classifier)
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        out = resize_to(self.classifier(feats[-1]), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(feats[-2]), size))


# torchvision's FCNHead is a flat Sequential (conv, bn, relu, dropout, conv): the indices of its
# modules with weights, in order.
_TORCHVISION_HEAD_INDICES = ("0", "1", "4")


def _head_key_map(head: nn.Module) -> dict[str, str]:
    """torchvision FCNHead index -> our FCNHead module path, matched by order of the weighted modules."""
    ours = [name for name, m in head.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    return dict(zip(_TORCHVISION_HEAD_INDICES, ours))


def load_torchvision_fcn(model: DilatedFCN, weights: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load a torchvision ``fcn_resnet50`` / ``fcn_resnet101`` state dict (or file) into ``model``, strictly.

    ``backbone.*`` becomes ``encoder.*`` and the heads' flat indices become
    ours. A file with an auxiliary head loads into a model without one (the
    aux head only serves training); the reverse is an error, as is any other
    missing, unexpected or misshapen key. With ``in_channels`` other than 3
    the RGB first conv is adapted as for encoder weights.
    """
    state, source = state_and_source(weights)
    heads = {"classifier": model.classifier, "aux_classifier": model.aux_classifier}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            key = "encoder." + key[len("backbone."):]
        else:
            head, _, rest = key.partition(".")
            if head == "aux_classifier" and model.aux_classifier is None:
                continue
            if heads.get(head) is not None:
                index, _, tensor = rest.partition(".")
                key = f"{head}.{_head_key_map(heads[head]).get(index, index)}.{tensor}"
        mapped[key] = value
    adapt_first_conv(mapped, "encoder.conv1.weight", model.encoder.in_channels)
    load_checked(model, mapped, source, f"{type(model).__name__} (aux={model.aux_classifier is not None})")


_TV_SUMMARY = (
    "torchvision's FCN: dilated {} at output stride 8, FCNHead (3x3 conv to 512, BN, ReLU, dropout 0.1, 1x1), "
    "bilinear upsampling; aux FCNHead on layer3. Loads torchvision weights via load_torchvision_fcn."
)
# name: (encoder, its name in the summary, what torchvision publishes)
_DILATED_FCNS = {
    "fcn_resnet50": (
        "resnet50", "ResNet-50", "35.3M params with aux; COCO-val2017 (VOC classes) 60.5 mIoU (torchvision)"
    ),
    "fcn_resnet101": (
        "resnet101", "ResNet-101", "54.3M params with aux; COCO-val2017 (VOC classes) 63.7 mIoU (torchvision)"
    ),
}


def _dilated_fcn_builder(encoder: str) -> Callable[..., DilatedFCN]:
    def build(
        num_classes: int,
        *,
        encoder_weights: str | None = None,
        in_channels: int = 3,
        output_stride: int = 8,
        aux: bool = False,
    ) -> DilatedFCN:
        enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
        return DilatedFCN(enc, num_classes, aux=aux)

    return build


for _name, (_encoder, _title, _published) in _DILATED_FCNS.items():
    register_variant(_name, _dilated_fcn_builder(_encoder), paper=_PAPER, year=2015,
                     summary=_TV_SUMMARY.format(_title), published=_published)
