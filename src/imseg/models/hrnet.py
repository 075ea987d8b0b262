"""HRNetV2: Wang, Sun, Cheng, Jiang, Deng, Zhao, Liu, Mu, Tan, Wang, Liu & Xiao, "Deep High-Resolution
Representation Learning for Visual Recognition" (TPAMI 2020; arXiv 1908.07919, 2019), with the optional
OCR head of Yuan, Chen & Wang, "Object-Contextual Representations for Semantic Segmentation" (ECCV 2020).

The backbone keeps a stride-4 branch alive through the whole network and
adds a branch at half the resolution (twice the width) per stage; after
every module the branches exchange information (higher -> lower resolution
by repeated 3x3 stride-2 conv + BN, lower -> higher by 1x1 conv + BN and a
bilinear upsample; the terms are summed and ReLU'd). The HRNetV2 head
upsamples every branch to stride 4, concatenates them and classifies with
1x1 conv -> BN -> ReLU -> 1x1 conv.

Module names follow the official code (HRNet/HRNet-Semantic-Segmentation,
``lib/models/seg_hrnet.py`` and ``seg_hrnet_ocr.py``): ``conv1``, ``bn1``,
``conv2``, ``bn2``, ``layer1``, ``transition1``, ``stage2`` ... inside
``model.encoder``, and ``last_layer`` (or ``aux_head``, ``conv3x3_ocr``,
``ocr_distri_head``, ``cls_head``) at the top, so the official ImageNet
weights load into the encoder as they are and an official segmentation
checkpoint loads after prefixing its backbone keys with ``encoder.``.
timm's ``hrnet_*`` classification models use the same names, which is how
``encoder_weights="imagenet"`` gets them.

Interpolation uses ``align_corners=True`` everywhere, as the official
models (``MODEL.ALIGN_CORNERS: True``) were trained with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder, build_encoder, register_encoder
from imseg.models.layers import ConvBNAct, init_weights
from imseg.models.registry import register_variant
from imseg.models.weights import timm_pretrained
from imseg.outputs import SegOutput
from imseg.preprocessing import TORCHVISION


def resize_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the official HRNet convention); a no-op when sizes match.

    The same-size shortcut is skipped while exporting, where the test would
    fix the graph to the example input's size.
    """
    size = (size[0], size[1])
    if not torch.compiler.is_compiling() and tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class HRNetConfig:
    """One HRNet variant, as in the official ``experiments/*.yaml`` (``MODEL.EXTRA``)."""

    width: int  # channels of the stride-4 branch; branch b has width * 2**b
    stage1_blocks: int  # bottlenecks in stage 1
    modules: tuple[int, int, int]  # HighResolutionModules in stages 2, 3, 4
    blocks: int  # basic blocks per branch in every module
    timm_name: str  # timm's classification model with these names and shapes (ImageNet weights)
    stage1_planes: int = 64  # planes of the stage-1 bottlenecks (4x that out); Small-v1 has 32


HRNET_CONFIGS: dict[str, HRNetConfig] = {
    # W18-Small-v2 (seg_hrnet_w18_small_v2 yaml): stage 1 has 2 bottlenecks, stages 2-4 have 1/3/2 modules of 2 blocks.
    "hrnetv2_w18_small": HRNetConfig(18, 2, (1, 3, 2), 2, "hrnet_w18_small_v2.ms_in1k"),
    # W18-Small-v1 (seg_hrnet_w18_small_v1 yaml, timm's hrnet_w18_small): branches 16/32/64/128 despite the name,
    # stage 1 one bottleneck of 32 planes (128 out), stages 2-4 one module each of 2 blocks.
    "hrnetv2_w18_small_v1": HRNetConfig(16, 1, (1, 1, 1), 2, "hrnet_w18_small.ms_in1k", stage1_planes=32),
    "hrnetv2_w18": HRNetConfig(18, 4, (1, 4, 3), 4, "hrnet_w18.ms_in1k"),
    "hrnetv2_w32": HRNetConfig(32, 4, (1, 4, 3), 4, "hrnet_w32.ms_in1k"),
    "hrnetv2_w48": HRNetConfig(48, 4, (1, 4, 3), 4, "hrnet_w48.ms_in1k"),
}

# Keys of the ImageNet classification head of HRNet-Image-Classification / timm: not part of the backbone.
HRNET_CLASSIFIER_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks followed by the all-to-all fusion.

    Its conv-BN(-ReLU) layers are `ConvBNAct`: a Sequential whose conv, BN
    and ReLU sit at indices 0/1/2, as in the official code's Sequentials.
    """

    def __init__(self, channels: Sequence[int], num_blocks: int) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels)
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module] = []
            for j in range(n):
                if j > i:  # lower resolution -> branch i: 1x1 conv + BN, upsampled in forward
                    row.append(ConvBNAct(channels[j], channels[i], 1, act=False))
                elif j == i:  # the official code stores None; Identity has no parameters either, so keys match
                    row.append(nn.Identity())
                else:  # higher resolution -> branch i: i - j stride-2 3x3 convs, ReLU between them, none after
                    steps = [ConvBNAct(channels[j], channels[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(ConvBNAct(channels[j], channels[i], 3, 2, act=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + resize_aligned(row[j](xs[j]), xs[i].shape[-2:])
                else:
                    y = y + row[j](xs[j])
            out.append(self.relu(y))
        return out


class _Stage(nn.Sequential):
    """HighResolutionModules in sequence (a list of branch maps in, a list out)."""

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        for module in self:
            xs = module(xs)
        return xs


def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Official ``_make_transition_layer``: adapt existing branches, spawn new ones by stride-2 convs from the last."""
    layers: list[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(ConvBNAct(pre[i], c, 3) if c != pre[i] else nn.Identity())
        else:
            n_new = i + 1 - len(pre)
            steps = [ConvBNAct(pre[-1], c if k == n_new - 1 else pre[-1], 3, 2) for k in range(n_new)]
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNetEncoder(Encoder):
    """The HRNet backbone; returns its four branches (strides 4, 8, 16, 32; widths C, 2C, 4C, 8C).

    HRNet's native output stride is 32. Output stride 16 / 8 (for decoders
    that want it) follows the DeepLab recipe: every conv that would halve
    the resolution into a branch beyond the output stride runs at stride 1,
    and every 3x3 conv reading a map that lost k strides is dilated by 2**k,
    so ImageNet weights keep their receptive fields; ``strides`` then read
    e.g. ``[4, 8, 16, 16]``.

    ``load_weights`` accepts ``"imagenet"`` (timm's copy of the official
    ImageNet weights, ``ms_in1k``) or a file in the official / timm format
    (the ImageNet classification head's keys, ``incre_modules``,
    ``downsamp_modules``, ``final_layer``, ``classifier``, are ignored).
    """

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        cfg = HRNET_CONFIGS[name]
        nominal = [4 * 2**b for b in range(4)]
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[cfg.width * 2**b for b in range(4)],
            strides=[min(s, output_stride) for s in nominal],
            output_stride=output_stride,
            preprocessing=TORCHVISION.for_channels(in_channels),
        )
        self.config = cfg
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        planes = cfg.stage1_planes
        out = planes * Bottleneck.expansion
        downsample = nn.Sequential(nn.Conv2d(64, out, 1, bias=False), nn.BatchNorm2d(out))
        self.layer1 = nn.Sequential(
            Bottleneck(64, planes, downsample=downsample),
            *[Bottleneck(out, planes) for _ in range(cfg.stage1_blocks - 1)],
        )
        pre = [out]
        for stage, n_modules in zip((2, 3, 4), cfg.modules):
            cur = [cfg.width * 2**b for b in range(stage)]
            setattr(self, f"transition{stage - 1}", _transition(pre, cur))
            setattr(self, f"stage{stage}", _Stage(*[HighResolutionModule(cur, cfg.blocks) for _ in range(n_modules)]))
            pre = cur
        init_weights(self)
        if output_stride != 32:
            self._dilate([s // r for s, r in zip(nominal, self.strides)])

    def _dilate(self, dilation: list[int]) -> None:
        """Trade the strides into branches beyond the output stride for dilation (``dilation[b]`` per branch)."""

        def adjust(conv: nn.Conv2d, src: int, dst: int) -> None:
            # A conv reading branch src's map and writing branch dst's: it strides only if dst is really
            # coarser, and its taps are spaced like src's map at its nominal resolution.
            conv.stride = (2, 2) if dilation[dst] == dilation[src] and dst > src else (1, 1)
            if conv.kernel_size[0] > 1:
                conv.dilation = conv.padding = (dilation[src], dilation[src])

        def convs(module: nn.Module) -> list[nn.Conv2d]:
            return [m for m in module.modules() if isinstance(m, nn.Conv2d)]

        for n_pre, stage in ((1, self.stage2), (2, self.stage3), (3, self.stage4)):
            transition = getattr(self, f"transition{n_pre}")
            for i, t in enumerate(transition):
                for k, conv in enumerate(convs(t)):
                    if i < n_pre:  # an existing branch's 3x3 channel adapter
                        adjust(conv, i, i)
                    else:  # a new branch: a chain of stride-2 convs from the last existing one
                        adjust(conv, n_pre - 1 + k, n_pre + k)
            for module in stage:
                for b, branch in enumerate(module.branches):
                    for conv in convs(branch):
                        adjust(conv, b, b)
                for i, row in enumerate(module.fuse_layers):
                    for j, layer in enumerate(row[:i]):  # higher -> lower resolution: a chain of stride-2 convs
                        for k, conv in enumerate(convs(layer)):
                            adjust(conv, j + k, j + k + 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            # Existing branches go through their (usually identity) transition; a new one grows from the last.
            xs = stage([t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)])
        return xs

    classifier_prefixes = HRNET_CLASSIFIER_PREFIXES

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        """The ImageNet weights of timm's HRNet classifier with the same names (timm downloads them)."""
        tag = self.config.timm_name
        advice = (f"save timm.create_model({tag.split('.')[0]!r}, pretrained=True).state_dict() on one that is "
                  "online (or download the official hrnetv2_*_imagenet_pretrained.pth) and pass the file's path "
                  "instead of 'imagenet'")
        return f"timm:{tag}", timm_pretrained(tag, advice).state_dict()


for _name in HRNET_CONFIGS:
    register_encoder(_name, HRNetEncoder)


# --------------------------------------------------------------------------- OCR


def _bn_relu(channels: int) -> nn.Sequential:
    """openseg's ``ModuleHelper.BNReLU``: a Sequential, hence the ``.1.0.weight`` keys of the official OCR head."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class SpatialGather(nn.Module):
    """Object region representations: per class, the pixel features averaged with weights softmax-over-pixels(logit).

    Returns ``[B, C, K, 1]``. The softmax runs over the spatial positions
    (dim 2 of the flattened logits), as in the OCR paper and the official
    master code (one old commit of seg_hrnet_ocr.py normalised over classes).
    """

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.flatten(2), dim=2)  # B x K x HW
        context = torch.matmul(probs, feats.flatten(2).transpose(1, 2))  # B x K x C
        return context.transpose(1, 2).unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    """Pixel-region relation: each pixel attends over the K region representations (scaled dot product)."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels

        def two_convs() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, key_channels, 1, bias=False),
                _bn_relu(key_channels),
                nn.Conv2d(key_channels, key_channels, 1, bias=False),
                _bn_relu(key_channels),
            )

        self.f_pixel = two_convs()  # query
        self.f_object = two_convs()  # key
        self.f_down = nn.Sequential(nn.Conv2d(in_channels, key_channels, 1, bias=False), _bn_relu(key_channels))
        self.f_up = nn.Sequential(nn.Conv2d(key_channels, in_channels, 1, bias=False), _bn_relu(in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        query = self.f_pixel(x).flatten(2).transpose(1, 2)  # B x HW x k
        key = self.f_object(proxy).flatten(2)  # B x k x K
        value = self.f_down(proxy).flatten(2).transpose(1, 2)  # B x K x k
        sim = F.softmax(torch.matmul(query, key) * self.key_channels**-0.5, dim=-1)
        context = torch.matmul(sim, value).transpose(1, 2)  # B x k x HW
        return self.f_up(context.reshape(context.shape[0], self.key_channels, h, w))


class SpatialOCR(nn.Module):
    """concat[object context, pixel features] -> 1x1 conv -> BN -> ReLU -> Dropout2d."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False),
            _bn_relu(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


# --------------------------------------------------------------------------- model


class HRNetV2(SegmentationModel):
    """HRNetV2 head (or the OCR head) on the concatenation of all encoder maps upsampled to the finest one."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        ocr: bool = False,
        aux: bool = False,
        ocr_mid_channels: int = 512,
        ocr_key_channels: int = 256,
    ) -> None:
        super().__init__(encoder)
        if aux and not ocr:
            raise ValueError(
                "HRNetV2 has no auxiliary head; aux=True needs ocr=True (the soft object-region head is the aux output)"
            )
        self.ocr = ocr
        self.aux = aux
        c = sum(encoder.channels)
        if ocr:
            # seg_hrnet_ocr.py; the 1x1 / 3x3 convs followed by BN keep the official (redundant) biases.
            self.conv3x3_ocr = nn.Sequential(
                nn.Conv2d(c, ocr_mid_channels, 3, padding=1), nn.BatchNorm2d(ocr_mid_channels), nn.ReLU(inplace=True)
            )
            self.ocr_gather_head = SpatialGather()
            self.ocr_distri_head = SpatialOCR(ocr_mid_channels, ocr_key_channels, ocr_mid_channels, dropout=0.05)
            self.cls_head = nn.Conv2d(ocr_mid_channels, num_classes, 1)
            self.aux_head = nn.Sequential(
                nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, num_classes, 1)
            )
            init_weights(nn.ModuleList([self.conv3x3_ocr, self.ocr_distri_head, self.cls_head, self.aux_head]))
        else:
            # seg_hrnet.py last_layer (FINAL_CONV_KERNEL 1), with the official bias on the first conv.
            self.last_layer = nn.Sequential(
                nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, num_classes, 1)
            )
            init_weights(self.last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        size = x.shape[-2:]
        xs = self.encoder(x)
        finest = xs[0].shape[-2:]
        feats = torch.cat([xs[0]] + [resize_aligned(f, finest) for f in xs[1:]], dim=1)
        if not self.ocr:
            return resize_aligned(self.last_layer(feats), size)
        # The soft object regions are needed for the main output too, so the aux head always runs.
        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, out_aux)
        out = resize_aligned(self.cls_head(self.ocr_distri_head(feats, context)), size)
        if not self.aux:
            return out
        return SegOutput(out, resize_aligned(out_aux, size))


_PAPER = (
    "Wang, Sun, Cheng, Jiang, Deng, Zhao, Liu, Mu, Tan, Wang, Liu, Xiao: Deep High-Resolution Representation "
    "Learning for Visual Recognition (ocr=True: Yuan, Chen, Wang: Object-Contextual Representations for "
    "Semantic Segmentation, ECCV 2020)"
)
# The variants differ in their HRNET_CONFIGS row: one builder signature, one registry entry each.
_VARIANTS = {
    "hrnetv2_w18_small": dict(
        published="3.9M params (v2, Cityscapes)",
        summary="HRNetV2-W18-Small-v2: 4 parallel branches (18/36/72/144) fused repeatedly, all upsampled to "
        "stride 4 and concatenated for a 1x1 head (3.9M params); ocr=True adds the OCR head.",
    ),
    "hrnetv2_w18_small_v1": dict(
        published="1.5M params (v1, Cityscapes)",
        summary="HRNetV2-W18-Small-v1: 4 parallel branches (16/32/64/128; one module per stage, 2 blocks per "
        "branch) fused, all upsampled to stride 4 and concatenated (240 ch) for a 1x1 head (1.5M params).",
    ),
    "hrnetv2_w18": dict(
        summary="HRNetV2-W18: 4 parallel branches (18/36/72/144; 1/4/3 modules of 4 blocks) fused repeatedly, "
        "concatenated at stride 4 for a 1x1 head; ocr=True adds the OCR head.",
    ),
    "hrnetv2_w32": dict(
        summary="HRNetV2-W32: 4 parallel branches (32/64/128/256; 1/4/3 modules of 4 blocks) fused repeatedly, "
        "concatenated at stride 4 for a 1x1 head; ocr=True adds the OCR head.",
    ),
    "hrnetv2_w48": dict(
        published="65.9M params; Cityscapes val 80.9 mIoU (81.6 with OCR)",
        summary="HRNetV2-W48: 4 parallel branches (48/96/192/384; 1/4/3 modules of 4 blocks) fused repeatedly, "
        "concatenated at stride 4 for a 1x1 head (65.9M params); ocr=True adds the OCR head (W48+OCR).",
    ),
}


def _hrnet_builder(name: str) -> Callable[..., HRNetV2]:
    def build(
        num_classes: int,
        *,
        encoder_weights: str | None = None,
        in_channels: int = 3,
        ocr: bool = False,
        aux: bool = False,
    ) -> HRNetV2:
        encoder = build_encoder(name, in_channels=in_channels, weights=encoder_weights)
        return HRNetV2(encoder, num_classes, ocr=ocr, aux=aux)

    return build


for _name, _facts in _VARIANTS.items():
    register_variant(_name, _hrnet_builder(_name), paper=_PAPER, year=2019, **_facts)
