"""The DeepLab family: v1 (LargeFOV), v2 (ASPP), v3 and v3+ (Chen, Papandreou, Kokkinos, Murphy,
Yuille, Zhu, Schroff, Adam; ICLR 2015, TPAMI 2017, arXiv 2017, ECCV 2018).

All four put a dilated (atrous) encoder at output stride 8 or 16 and read
multi-scale context off its last map:

* ``deeplabv1``: VGG16 with DeepLab's pooling (3x3 stride-2 pools with
  padding 1; pool4 and pool5 at stride 1, conv5 dilated by 2; output stride
  8) and the LargeFOV head: fc6 3x3 dilation 12 (1024 ch) -> fc7 1x1 1024
  -> fc8 1x1 to the classes, ReLU + dropout 0.5 after fc6/fc7. ~20.5M
  parameters. Logits are bilinearly upsampled (the CRF is post-processing
  and not part of the network).
* ``deeplabv2``: four parallel atrous branches (rates 6/12/18/24 at output
  stride 8) whose class scores are *summed*. On ResNet-101 (the released
  model) each branch is one 3x3 atrous conv straight to the classes; with
  ``branch_channels=1024`` each branch is a LargeFOV head (fc6-fc7-fc8), the
  VGG16 "ASPP-L" model.
* ``deeplabv3``: ASPP with batch norm (1x1, three 3x3 atrous convs at rates
  6/12/18 at OS16 or 12/24/36 at OS8, image pooling; 256 ch each) ->
  concat -> 1x1 256 -> dropout 0.1 -> 1x1 to the classes. Multi-grid
  (1, 2, 4) in the last stage of ResNet-50/101/152 by default (the paper's
  77.21 setting; ``multi_grid=None`` turns it off), optional auxiliary FCN
  head.
  `deeplabv3_from_torchvision` loads torchvision's ``deeplabv3_*`` weights.
* ``deeplabv3plus``: ASPP on the encoder, then a decoder that upsamples to
  the stride-4 map, concatenates its 1x1 48-channel projection and refines
  with two 3x3 256 convs (depthwise-separable with ``separable=True``, as
  in the paper's Xception model). `DeepLabV3PlusBase` is shared with the
  DPC model (dpc.py), which replaces ASPP by the Dense Prediction Cell.

ASPP dropout is 0.1 (TensorFlow DeepLab's keep_prob 0.9), not torchvision's 0.5.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder, check_output_stride, torchvision_taps
from imseg.models.layers import ASPP, ConvBNAct, FCNHead, SeparableConvBNAct, init_weights, resize_to
from imseg.models.registry import create_model, register_model
from imseg.models.torchvision_encoders import ResNetEncoder
from imseg.models.weights import load_checked, state_and_source
from imseg.outputs import SegOutput


def _scaled_rates(rates: Sequence[int], reference_stride: int, output_stride: int) -> tuple[int, ...]:
    """Atrous rates given at ``reference_stride``, rescaled so they span the same image area at ``output_stride``."""
    return tuple(max(1, int(r) * reference_stride // output_stride) for r in rates)


def _normal_init(conv: nn.Conv2d, std: float = 0.01) -> None:
    """The classifier init of the DeepLab releases (caffe gaussian / TF truncated normal, std 0.01)."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


# --------------------------------------------------------------------------- v1 / v2


def use_deeplab_pooling(encoder: nn.Module) -> None:
    """Replace 2x2 stride-2 max pools by DeepLab's 3x3 stride-2 pools with padding 1.

    The DeepLab VGG16 prototxts pool with 3x3 windows (overlapping, so no
    pixel is dropped at odd sizes; a map of size n becomes ceil(n / 2)).
    Pools have no weights, so ImageNet VGG weights stay valid. Encoders
    without 2x2 pools (ResNet, MobileNet) are unchanged.
    """
    for parent in encoder.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d) and child.kernel_size in (2, (2, 2)) and child.stride in (2, (2, 2)):
                setattr(parent, name, nn.MaxPool2d(3, stride=2, padding=1))


class LargeFOVHead(nn.Module):
    """DeepLab's fc6 (3x3, dilation ``rate``) -> fc7 (1x1) -> fc8 (1x1 to classes), ReLU + dropout between."""

    def __init__(
        self, in_channels: int, num_classes: int, rate: int, fc_channels: int = 1024, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, fc_channels, 3, padding=rate, dilation=rate)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        init_weights(nn.ModuleList([self.fc6, self.fc7]))
        _normal_init(self.fc8)

    def load_from_vgg_classifier(self, classifier: Mapping[str, torch.Tensor]) -> bool:
        """Initialise fc6/fc7 from VGG16's ImageNet classifier, thinned as in DeepLab.

        VGG's fc6 (4096 x 512x7x7) is decimated in space to 3x3 (taps 0, 3,
        6) and both layers keep every (4096 / fc_channels)-th filter: DeepLab
        kept 1024 of the 4096 filters (a random subset in the paper; a regular
        subsample here, so the result is reproducible). Returns False, and
        changes nothing, when the classifier does not fit.
        """
        w6, b6 = classifier.get("classifier.0.weight"), classifier.get("classifier.0.bias")
        w7, b7 = classifier.get("classifier.3.weight"), classifier.get("classifier.3.bias")
        if any(t is None for t in (w6, b6, w7, b7)):
            return False
        rows, in_channels = w6.shape[0], self.fc6.in_channels
        channels = self.fc6.out_channels
        if w6.shape[1] != in_channels * 49 or rows % channels or w7.shape != (rows, rows):
            return False
        step = rows // channels
        with torch.no_grad():
            self.fc6.weight.copy_(w6.view(rows, in_channels, 7, 7)[::step, :, ::3, ::3])
            self.fc6.bias.copy_(b6[::step])
            self.fc7.weight.copy_(w7[::step, ::step, None, None])
            self.fc7.bias.copy_(b7[::step])
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.fc8(x)


class DeepLabV2(SegmentationModel):
    """Encoder -> parallel atrous branches on its last map, class scores summed -> bilinear upsampling.

    DeepLab v1 LargeFOV is the one-branch case (a single LargeFOV head at rate 12).
    """

    def __init__(self, encoder: Encoder, branches: Sequence[nn.Module]) -> None:
        super().__init__(encoder)
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)[-1]
        out = self.branches[0](f)
        for branch in self.branches[1:]:
            out = out + branch(f)
        return resize_to(out, x.shape[-2:])


def _init_from_vgg_classifier(encoder: Encoder, heads: Sequence[LargeFOVHead]) -> None:
    # Only VGG weights carry classifier.0/3 in the right shapes; anything else leaves the random init.
    for head in heads:
        head.load_from_vgg_classifier(encoder.classifier_state)
    encoder.classifier_state = {}  # VGG's classifier is ~500 MB: do not keep it around


@register_model(
    "deeplabv1",
    published="20.5M params; VOC val 62.25 mIoU (67.64 with CRF)",
    paper="Chen, Papandreou, Kokkinos, Murphy, Yuille: Semantic Image Segmentation with Deep Convolutional "
    "Nets and Fully Connected CRFs (DeepLab-LargeFOV)",
    year=2015,
    summary="VGG16 at output stride 8 (stride-1 pool4/pool5, dilated conv5) with a thin fc6 (3x3, dilation "
    "12, 1024 ch) -> fc7 -> fc8 head and bilinear upsampling; 20.5M parameters. No CRF.",
)
def deeplabv1(
    num_classes: int,
    *,
    encoder: str = "vgg16",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    rate: int = 12,
    fc_channels: int = 1024,
) -> nn.Module:
    enc = build_encoder(
        encoder, in_channels=in_channels, output_stride=8, weights=encoder_weights, keep_classifier=True
    )
    use_deeplab_pooling(enc)
    head = LargeFOVHead(enc.channels[-1], num_classes, rate, fc_channels)
    _init_from_vgg_classifier(enc, [head])
    return DeepLabV2(enc, [head])


@register_model(
    "deeplabv2",
    published="VOC test 79.7 mIoU (ResNet-101, COCO, multi-scale, CRF)",
    paper="Chen, Papandreou, Kokkinos, Murphy, Yuille: DeepLab: Semantic Image Segmentation with Deep "
    "Convolutional Nets, Atrous Convolution, and Fully Connected CRFs",
    year=2017,
    summary="ASPP as in the released ResNet-101 model: four 3x3 atrous convs (rates 6/12/18/24 at OS8) straight "
    "to class scores, summed. branch_channels=1024 on vgg16 gives the ASPP-L (fc6-fc7-fc8 branches) model.",
)
def deeplabv2(
    num_classes: int,
    *,
    encoder: str = "resnet101",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 8,
    rates: tuple[int, ...] = (6, 12, 18, 24),
    branch_channels: int | None = None,
) -> nn.Module:
    check_output_stride("DeepLab v2", output_stride, (8, 16))
    enc = build_encoder(
        encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights, keep_classifier=True
    )
    use_deeplab_pooling(enc)
    # The paper's rates are for output stride 8; at 16 they are halved to cover the same image area.
    scaled = _scaled_rates(rates, 8, output_stride)
    channels = enc.channels[-1]
    branches: list[nn.Module]
    if branch_channels is None:
        branches = [nn.Conv2d(channels, num_classes, 3, padding=r, dilation=r) for r in scaled]
        for conv in branches:
            _normal_init(conv)
    else:
        branches = [LargeFOVHead(channels, num_classes, r, branch_channels) for r in scaled]
    _init_from_vgg_classifier(enc, [b for b in branches if isinstance(b, LargeFOVHead)])
    return DeepLabV2(enc, branches)


# --------------------------------------------------------------------------- v3


# DeepLabv3's best setting (Table 3 and the 77.21 on VOC val): block4's three units at rates x (1, 2, 4).
PAPER_MULTI_GRID = (1, 2, 4)


def apply_multi_grid(encoder: Encoder, grid: Sequence[int]) -> None:
    """DeepLabv3's multi-grid: unit i of ResNet's last stage gets rate (stage rate) x grid[i].

    The stage rate is 32 / output stride (2 at OS16, 4 at OS8), so (1, 2, 4)
    gives rates (2, 4, 8) at OS16 and (4, 8, 16) at OS8. Every 3x3 conv of a
    unit takes the rate (the one of a bottleneck, both of a basic block).
    """
    if not isinstance(encoder, ResNetEncoder):
        raise ValueError(f"multi_grid is defined for ResNet encoders (the units of layer4), not {encoder.name!r}; "
                         "pass multi_grid=None")
    units = list(encoder.layer4)
    if len(grid) != len(units):
        raise ValueError(f"multi_grid needs one rate per unit of {encoder.name}'s layer4 ({len(units)} units), got "
                         f"{tuple(grid)}; pass {len(units)} rates or multi_grid=None")
    stage_rate = 32 // encoder.output_stride
    for unit, g in zip(units, grid):
        for conv in unit.modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                rate = stage_rate * int(g)
                conv.dilation, conv.padding = (rate, rate), (rate, rate)


class DeepLabV3(SegmentationModel):
    """Encoder -> ASPP (256) [-> torchvision's extra 3x3 conv] -> 1x1 classifier -> bilinear upsampling."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        aspp_rates: Sequence[int] = (6, 12, 18),
        head_conv: bool = False,
        aux: bool = False,
        aux_index: int = -2,
    ) -> None:
        super().__init__(encoder)
        self.aspp = ASPP(encoder.channels[-1], 256, aspp_rates, dropout=0.1)
        self.head = ConvBNAct(256, 256, 3) if head_conv else None
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux_index = aux_index
        self.aux_classifier = FCNHead(encoder.channels[aux_index], num_classes) if aux else None
        new = (self.aspp, self.head, self.classifier, self.aux_classifier)
        init_weights(nn.ModuleList([m for m in new if m is not None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        y = self.aspp(feats[-1])
        if self.head is not None:
            y = self.head(y)
        out = resize_to(self.classifier(y), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(feats[self.aux_index]), size))


@register_model(
    "deeplabv3",
    published="VOC val 77.21 mIoU (ResNet-101, OS16, multi-grid (1, 2, 4), image pooling); torchvision R-101 "
    "with aux: 61.0M params",
    paper="Chen, Papandreou, Schroff, Adam: Rethinking Atrous Convolution for Semantic Image Segmentation",
    year=2017,
    summary="Dilated ResNet (OS16 or 8, multi-grid (1, 2, 4) in the last stage) + ASPP with batch norm and image "
    "pooling (rates 6/12/18 at OS16); optional aux head. Loads torchvision's deeplabv3_* weights.",
)
def deeplabv3(
    num_classes: int,
    *,
    encoder: str = "resnet101",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: tuple[int, ...] | Literal["paper"] | None = "paper",
    aspp_rates: tuple[int, ...] | None = None,
    head_conv: bool = False,
    aux: bool = False,
    aux_stride: int | None = None,
) -> nn.Module:
    """DeepLabv3.

    Args:
        multi_grid: per-unit rate multipliers of ResNet's last stage, one
            rate per unit (ResNet-18/34 have 2), ResNet encoders only.
            ``"paper"`` (the default): the paper's best setting (1, 2, 4)
            (the 77.21 on VOC val) where the encoder has a three-unit
            ResNet last stage, nothing elsewhere; ``None``: off
            (torchvision's config).
        aspp_rates: the three atrous rates; default (6, 12, 18) at OS16,
            doubled at OS8. torchvision uses (12, 24, 36) at every OS.
        head_conv: torchvision's extra 3x3 256 conv-BN-ReLU between ASPP and
            the classifier (not in the paper; needed for its weights).
        aux_stride: the auxiliary FCN head reads the encoder map at this
            stride; None: the penultimate map (ResNet layer3, as torchvision).
            torchvision's MobileNetV3 model uses 8 (the first stride-8 block).
    """
    check_output_stride("DeepLabv3", output_stride, (16, 8))
    # torchvision reads MobileNetV3's stride-8 map at the first block of the stage (the default for others).
    taps = torchvision_taps(encoder, output_stride)
    enc = build_encoder(
        encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights, taps=taps
    )
    if multi_grid == "paper":
        # The paper's grid exists only for a three-unit ResNet last stage; other encoders keep their own rates.
        fits = isinstance(enc, ResNetEncoder) and len(enc.layer4) == len(PAPER_MULTI_GRID)
        multi_grid = PAPER_MULTI_GRID if fits else None
    if multi_grid is not None:
        apply_multi_grid(enc, multi_grid)
    rates = tuple(aspp_rates) if aspp_rates is not None else _scaled_rates((6, 12, 18), 16, output_stride)
    aux_index = -2 if aux_stride is None else enc.feature_index(aux_stride)
    return DeepLabV3(enc, num_classes, rates, head_conv=head_conv, aux=aux, aux_index=aux_index)


# torchvision DeepLabV3 state-dict prefixes -> ours (first match wins). Their ASPP / FCNHead are flat
# Sequentials; ours nest conv-BN-ReLU in ConvBNAct, and the encoder replaces ``backbone``.
_TORCHVISION_DEEPLABV3_KEYS = (
    ("classifier.0.convs.4.1.", "aspp.convs.4.1.0."),
    ("classifier.0.convs.4.2.", "aspp.convs.4.1.1."),
    ("classifier.0.convs.", "aspp.convs."),
    ("classifier.0.project.0.", "aspp.project.0.0."),
    ("classifier.0.project.1.", "aspp.project.0.1."),
    ("classifier.1.", "head.0."),
    ("classifier.2.", "head.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.0.", "aux_classifier.0.0."),
    ("aux_classifier.1.", "aux_classifier.0.1."),
    ("aux_classifier.4.", "aux_classifier.2."),
)


def _remap(key: str, rules: Sequence[tuple[str, str]]) -> str:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def deeplabv3_from_torchvision(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> nn.Module:
    """Build our ``deeplabv3`` from a torchvision DeepLabV3 state dict (a file or a mapping).

    Works for ``deeplabv3_resnet50``, ``deeplabv3_resnet101`` and
    ``deeplabv3_mobilenet_v3_large``, with or without ``aux_loss``. The
    configuration is read from the weights and set to torchvision's: ResNet
    at OS8 / MobileNetV3 at OS16, ASPP rates (12, 24, 36), the extra 3x3 head
    conv, aux head on ResNet layer3 / MobileNetV3 features[4]. Returns the
    model in train mode, like `create_model`; in eval mode its logits equal
    torchvision's ``model(x)["out"]``.
    """
    state, where = state_and_source(source)
    if "classifier.4.weight" not in state or "classifier.0.project.0.weight" not in state:
        raise ValueError(f"{where} is not a torchvision DeepLabV3 state dict (no classifier.0.project / classifier.4)")
    num_classes = state["classifier.4.weight"].shape[0]
    aux = any(k.startswith("aux_classifier.") for k in state)
    if "backbone.layer4.0.conv1.weight" in state:
        units = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3."))
        encoder = {6: "resnet50", 23: "resnet101"}.get(units)
        if encoder is None:
            raise ValueError(f"{where}: a ResNet with {units} units in layer3 is neither ResNet-50 nor ResNet-101")
        config = {"output_stride": 8, "aux_stride": None}
        backbone = "encoder."
    elif "backbone.16.0.weight" in state:
        encoder, config, backbone = "mobilenet_v3_large", {"output_stride": 16, "aux_stride": 8}, "encoder.features."
    else:
        raise ValueError(f"{where}: unknown DeepLabV3 backbone (expected ResNet-50/101 or MobileNetV3-Large)")
    model = create_model(
        "deeplabv3", num_classes, encoder=encoder, multi_grid=None, aspp_rates=(12, 24, 36), head_conv=True, aux=aux,
        **config,
    )
    rules = (("backbone.", backbone),) + _TORCHVISION_DEEPLABV3_KEYS
    mapped = {_remap(k, rules): v for k, v in state.items()}
    load_checked(model, mapped, where, f"deeplabv3 (encoder {encoder!r}, {num_classes} classes, aux={aux})")
    return model


# --------------------------------------------------------------------------- v3+


class DeepLabV3PlusBase(SegmentationModel, abc.ABC):
    """Encoder -> context module on its last map (256 ch) -> DeepLabv3+ decoder at stride 4.

    Subclasses add the context module (ASPP, DPC) and say how to apply it in `context`.
    Decoder: the stride-4 map -> 1x1 conv 48; the context output resized to
    it; concat -> two 3x3 256 convs (separable with ``separable``) -> 1x1
    classifier -> bilinear upsampling to the input.
    """

    def __init__(self, encoder: Encoder, num_classes: int, separable: bool = False, aux: bool = False) -> None:
        super().__init__(encoder)
        self.low_index = encoder.feature_index(4)
        low_channels = encoder.channels[self.low_index]
        conv3x3 = SeparableConvBNAct if separable else ConvBNAct
        self.low_project = ConvBNAct(low_channels, 48, 1)
        self.decoder = nn.Sequential(conv3x3(256 + 48, 256, 3), conv3x3(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        # Auxiliary loss head on the penultimate encoder map (ResNet layer3), as torchvision does.
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        init_weights(nn.ModuleList([self.low_project, self.decoder, self.classifier]))
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    @abc.abstractmethod
    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The 256-channel context features of the encoder's last map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        low = feats[self.low_index]
        y = resize_to(self.context(feats[-1]), low.shape[-2:])
        y = self.decoder(torch.cat([y, self.low_project(low)], dim=1))
        out = resize_to(self.classifier(y), size)
        if self.aux_classifier is None:
            return out
        return SegOutput(out, resize_to(self.aux_classifier(feats[-2]), size))


class DeepLabV3Plus(DeepLabV3PlusBase):
    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        aspp_rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        aux: bool = False,
    ) -> None:
        super().__init__(encoder, num_classes, separable=separable, aux=aux)
        self.aspp = ASPP(encoder.channels[-1], 256, aspp_rates, separable=separable, dropout=0.1)
        init_weights(self.aspp)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(x)


@register_model(
    "deeplabv3plus",
    published="43.48M params (Xception-71, separable ASPP and decoder, Cityscapes; Auto-DeepLab Table 2); "
    "Cityscapes val 79.55 mIoU (Xception-71)",
    paper="Chen, Zhu, Papandreou, Schroff, Adam: Encoder-Decoder with Atrous Separable Convolution "
    "for Semantic Image Segmentation",
    year=2018,
    summary="Dilated encoder + ASPP (rates 6/12/18 at OS16, image pooling) with a light decoder that "
    "refines with the stride-4 features; optional depthwise-separable ASPP/decoder and aux head.",
)
def deeplabv3plus(
    num_classes: int,
    *,
    encoder: str = "resnet50",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    separable: bool = False,
    aux: bool = False,
) -> nn.Module:
    """DeepLabv3+. The paper's models are ``encoder="xception65"`` (VOC) or ``"xception71"`` (the Cityscapes
    79.55 and the 43.48M quoted by Auto-DeepLab), with ``separable=True``."""
    check_output_stride("DeepLabv3+", output_stride, (16, 8))
    enc = build_encoder(encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights)
    rates = _scaled_rates((6, 12, 18), 16, output_stride)
    return DeepLabV3Plus(enc, num_classes, aspp_rates=rates, separable=separable, aux=aux)
