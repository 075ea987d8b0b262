"""LR-ASPP: Howard et al., "Searching for MobileNetV3" (ICCV 2019), as implemented by torchvision.

The high-level map (MobileNetV3's last conv, output stride 16) goes through
a 1x1 conv-BN-ReLU to 128 channels, gated by a sigmoid of a 1x1 conv of its
global average (a squeeze-excitation-like attention), upsampled to the
stride-8 map and classified; the stride-8 map adds its own 1x1 class
scores.

It is torchvision's model exactly: the head keeps torchvision's module
names (``classifier.cbr``, ``.scale``, ``.low_classifier``,
``.high_classifier``), and the stride-8 input is the *first* block at
stride 8 (``features[4]`` of mobilenet_v3_large, torchvision's "C2"), not
the last one (``features[6]``) that the encoder returns by default; the
builder asks for it with ``taps`` (see `torchvision_taps`).
`lraspp_from_torchvision` loads a torchvision LR-ASPP state dict file.

``detail_stride=4`` is imseg's extension (not in the paper): the head's
stride-8 scores are refined at stride 4 from the stride-4 encoder map, for
classes a few pixels wide (poles, signs, fences), at 0.14 GMACs (11%) more
at 360x480 on MobileNetV3-Large. The default (8) is torchvision's model.

``aux_strides`` is imseg's other extension, for training from random
weights: auxiliary heads (3x3 conv to 64 channels, BN, ReLU, dropout, 1x1
classifier) on the encoder's *first* tapped map at each stride (for
MobileNetV3-Large: 4 -> ``features[3]``, 8 -> ``features[4]``, 16 ->
``features[12]``, the last map before the dilated stage), scored by the
loss beside the main output (deep supervision; BiSeNet V2's "booster"
heads, Yu et al. 2021, which train from scratch). Their scores are
upsampled to the input's size, or with ``aux_output_stride=4`` to a quarter
of it, where the loss scores them against nearest-sampled labels
(`imseg.losses.labels_at`) at a sixteenth of the cost. They run in training
only: in eval mode the model returns its logits alone, so inference,
export and the weights of the main path are torchvision's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder, torchvision_taps
from imseg.models.layers import ConvBNAct, FCNHead, SeparableConvBNAct, resize_to
from imseg.outputs import SegOutput
from imseg.models.registry import create_model, register_model
from imseg.models.weights import load_checked, state_and_source


class LRASPPHead(nn.Module):
    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def context(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The attention-gated high-level features, upsampled to the stride-8 map."""
        return resize_to(self.cbr(high) * self.scale(high), low.shape[-2:])

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.scores(low, self.context(low, high))

    def scores(self, low: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.low_classifier(low) + self.high_classifier(context)


class DetailRefine(nn.Module):
    """Stride-4 refinement: residual class scores from the stride-8 context and the stride-4 encoder map.

    The head's 128-channel context, upsampled to stride 4, is concatenated
    with a 1x1 projection of the stride-4 map (as DeepLabv3+ projects its
    low-level features, there to 48 channels, here to 32 because MobileNet's
    map has only 24), mixed by one depthwise-separable 3x3 conv and
    classified; the scores are added to the upsampled stride-8 scores, so
    the branch learns a correction and starts near the plain head.
    """

    def __init__(self, fine_channels: int, context_channels: int, num_classes: int,
                 project: int = 32, mid: int = 64) -> None:
        super().__init__()
        self.project = ConvBNAct(fine_channels, project, 1)
        self.fuse = SeparableConvBNAct(context_channels + project, mid)
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, coarse: torch.Tensor, context: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        size = fine.shape[-2:]
        mixed = self.fuse(torch.cat([resize_to(context, size), self.project(fine)], dim=1))
        return resize_to(coarse, size) + self.classifier(mixed)


def first_index(encoder: Encoder, stride: int) -> int:
    """Index of the encoder's shallowest tapped map at ``stride`` (`Encoder.feature_index` gives the deepest)."""
    encoder.feature_index(stride)  # raises, naming the strides, when there is none
    return encoder.strides.index(stride)


class LRASPP(SegmentationModel):
    def __init__(self, encoder: Encoder, num_classes: int, inter_channels: int = 128, detail_stride: int = 8,
                 aux_strides: Sequence[int] = (), aux_output_stride: int = 1) -> None:
        super().__init__(encoder)
        self.low_index = encoder.feature_index(8)
        self.classifier = LRASPPHead(
            encoder.channels[self.low_index], encoder.channels[-1], num_classes, inter_channels
        )
        self.fine_index = encoder.feature_index(4) if detail_stride == 4 else None
        self.refine = (
            DetailRefine(encoder.channels[self.fine_index], inter_channels, num_classes)
            if self.fine_index is not None else None
        )
        self.aux_output_stride = aux_output_stride
        self.aux_indices = [first_index(encoder, stride) for stride in aux_strides]
        self.aux_heads = nn.ModuleList(
            FCNHead(encoder.channels[i], num_classes, inter_channels=64) for i in self.aux_indices
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        feats = self.encoder(x)
        low = feats[self.low_index]
        context = self.classifier.context(low, feats[-1])
        out = self.classifier.scores(low, context)
        if self.refine is not None:
            out = self.refine(out, context, feats[self.fine_index])
        out = resize_to(out, x.shape[-2:])
        if not (self.training and self.aux_heads):
            return out
        size = [-(-n // self.aux_output_stride) for n in x.shape[-2:]]  # ceil: a stride-s map of the input
        aux = tuple(resize_to(head(feats[i]), size) for i, head in zip(self.aux_indices, self.aux_heads))
        return SegOutput(out, aux)


@register_model(
    "lraspp",
    published="3.22M params (torchvision)",
    paper="Howard et al.: Searching for MobileNetV3",
    year=2019,
    summary="Lite R-ASPP: MobileNetV3 at output stride 16, a 128-channel 1x1 branch gated by global "
    "attention, plus 1x1 class scores from the stride-8 features. Fast on CPU; equals torchvision's.",
)
def lraspp(
    num_classes: int,
    *,
    encoder: str = "mobilenet_v3_large",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    output_stride: int = 16,
    inter_channels: int = 128,
    detail_stride: int = 8,
    aux_strides: Sequence[int] | None = None,
    aux_output_stride: int = 1,
) -> nn.Module:
    if detail_stride not in (4, 8):
        raise ValueError(f"LR-ASPP's detail_stride is 8 (torchvision's head) or 4 (a stride-4 refinement), "
                         f"got {detail_stride!r}")
    if output_stride not in (16, 32):
        # The head adds stride-8 scores to upsampled high-level scores; at 8 both would come from one stage.
        raise ValueError(f"LR-ASPP uses output_stride 16 (as torchvision) or 32, got {output_stride!r}")
    taps = torchvision_taps(encoder, output_stride)
    enc = build_encoder(
        encoder, in_channels=in_channels, output_stride=output_stride, weights=encoder_weights, taps=taps
    )
    if aux_output_stride not in (1, 2, 4, 8):
        raise ValueError(f"LR-ASPP's aux_output_stride is 1, 2, 4 or 8, got {aux_output_stride!r}")
    return LRASPP(enc, num_classes, inter_channels=inter_channels, detail_stride=detail_stride,
                  aux_strides=tuple(aux_strides or ()), aux_output_stride=aux_output_stride)


def lraspp_from_torchvision(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> nn.Module:
    """Build our ``lraspp`` from a torchvision ``lraspp_mobilenet_v3_large`` state dict (file or mapping).

    torchvision's ``backbone.N`` (MobileNetV3 ``features[N]``) becomes
    ``encoder.features.N``; the head has the same names. The number of
    classes is read from the weights. Returns the model in train mode, like
    `create_model`.
    """
    state, where = state_and_source(source)
    if "classifier.low_classifier.weight" not in state:
        raise ValueError(f"{where} is not a torchvision LR-ASPP state dict (no classifier.low_classifier.weight)")
    # features[16] is the last conv of mobilenet_v3_large; the small model ends at features[12].
    encoder = "mobilenet_v3_large" if "backbone.16.0.weight" in state else "mobilenet_v3_small"
    num_classes = state["classifier.low_classifier.weight"].shape[0]
    inter_channels = state["classifier.high_classifier.weight"].shape[1]
    model = create_model("lraspp", num_classes, encoder=encoder, inter_channels=inter_channels)
    mapped = {
        ("encoder.features." + k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()
    }
    load_checked(model, mapped, where, f"lraspp (encoder {encoder!r}, {num_classes} classes)")
    return model
