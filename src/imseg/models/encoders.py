"""Encoders (backbones) behind one contract.

``build_encoder(name, in_channels=..., output_stride=..., weights=...)``
returns an `Encoder`: a module whose ``forward(x)`` gives a list of feature
maps, with their ``channels`` and ``strides`` known as soon as it is built,
and the ``preprocessing`` its weights expect. Decoders read those lists and
never look at the encoder's name.

Output stride 16 / 8 is reached the DeepLab way: the strided layer of the
last stage(s) runs at stride 1 and every later 3x3 conv is dilated, so the
receptive field (and therefore ImageNet weights) stay valid while the maps
keep a higher resolution. ``strides`` report the real strides, e.g.
``[2, 4, 8, 16, 16]`` at output stride 16.

Torchvision encoders keep torchvision's module names (``conv1``,
``layer1.0.conv1``, ``features.0``, ...), so a torchvision ``state_dict``
file loads directly; its classifier keys are dropped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable

import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

from imseg.preprocessing import TORCHVISION, Preprocessing

OUTPUT_STRIDES = (8, 16, 32)

# Keys of the ImageNet classification head: not part of an encoder.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")

# ImageNet-1k weights for "imagenet". IMAGENET1K_V1 everywhere because those are
# the backbones torchvision's own segmentation models (FCN, DeepLabv3,
# LR-ASPP) were trained from.
_TORCHVISION_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
}


class Encoder(nn.Module):
    """Base class: a feature extractor with known channels and strides.

    Attributes:
        name: the name it was built from (``"resnet50"``, ``"timm:convnext_tiny"``).
        channels: channels of each returned feature map.
        strides: stride of each returned feature map w.r.t. the input,
            capped at ``output_stride`` (dilated stages keep their stride).
        output_stride: stride of the deepest feature map (8, 16 or 32).
        in_channels: number of input channels.
        preprocessing: how 0-255 images must be normalised for these weights.
        classifier_state: tensors of the ImageNet classifier found in the
            weights file, kept only when asked (``keep_classifier=True``) so a
            decoder can reuse them (FCN turns VGG's fc6/fc7 into convs).
    """

    name: str
    channels: list[int]
    strides: list[int]
    output_stride: int
    in_channels: int
    preprocessing: Preprocessing

    def __init__(self) -> None:
        super().__init__()
        self.classifier_state: dict[str, torch.Tensor] = {}

    # Weight loading (see load_weights): the first conv's state-dict prefix, adapted
    # when in_channels != 3, and the key prefixes of the ImageNet classification head.
    first_conv: str = "conv1"
    classifier_prefixes: tuple[str, ...] = ("fc.", "classifier.", "head.")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        """(where from, state dict) of this encoder's ImageNet weights; encoders that have some override it."""
        raise ValueError(
            f"there are no ImageNet weights to download for encoder {self.name!r}; "
            "pass the path of a weights file instead"
        )

    def normalise_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for weight files in an older key layout; the identity by default."""
        return state

    def load_weights(self, weights: str | os.PathLike, keep_classifier: bool = False) -> None:
        """Load ``"imagenet"`` or a weights file, strictly, after dropping the classifier head.

        A 3-channel first conv is adapted to ``in_channels``; with
        ``keep_classifier`` the head's tensors stay on ``classifier_state``
        (FCN turns VGG's fc6/fc7 into convolutions).
        """
        if str(weights) == "imagenet":
            source, state = self.imagenet_state()
        else:
            source, state = str(weights), read_state_dict(weights)
        state = self.normalise_state(state)
        classifier = {k: v for k, v in state.items() if k.startswith(self.classifier_prefixes)}
        state = {k: v for k, v in state.items() if k not in classifier}
        key = f"{self.first_conv}.weight"
        if key in state and state[key].ndim == 4 and state[key].shape[1] != self.in_channels:
            state[key] = _adapt_input_conv(state[key], self.in_channels)
        load_checked(self, state, source, f"encoder {self.name!r} (in_channels={self.in_channels})")
        if keep_classifier:
            self.classifier_state = classifier

    def feature_index(self, stride: int) -> int:
        """Index of the deepest feature map at ``stride`` (decoders pick their inputs with this)."""
        matches = [i for i, s in enumerate(self.strides) if s == stride]
        if not matches:
            raise ValueError(
                f"encoder {self.name!r} at output stride {self.output_stride} has no feature map at stride {stride} "
                f"(its strides are {self.strides})"
            )
        return matches[-1]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


# --------------------------------------------------------------------------- weights


def _describe_keys(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torch (``.pth``/``.pt``/...) or ``.safetensors`` weights file into a flat state dict.

    Accepts the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``)
    and strips the ``module.`` prefix DistributedDataParallel adds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} does not exist; weights must be None, 'imagenet' "
            "or the path of a .pth/.pt/.safetensors file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a weights file must never be able to run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the formats fail in many ways; say which file it was
        raise RuntimeError(f"could not read weights file {str(path)!r}: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise RuntimeError(f"weights file {str(path)!r} does not hold a state dict (found {type(state).__name__})")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def download_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Download (or take from the torch.hub cache) torchvision's ImageNet weights, checking their hash."""
    url = _TORCHVISION_WEIGHTS[name].url
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)
    except OSError as e:  # URLError, HTTPError, socket errors: all OSError
        filename = url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not download the ImageNet weights of {name!r} from {url} ({e}). "
            f"If this machine is offline, download that file on one that is online, copy it here "
            f"and pass its path instead of 'imagenet', e.g. encoder_weights='/path/to/{filename}'."
        ) from e


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a first-conv weight trained on RGB into one for ``in_channels`` inputs (timm's recipe).

    One channel: sum over RGB (a grey image then gives the response a grey
    RGB image would). More channels: repeat RGB and rescale by 3/C so the
    activations keep their magnitude.
    """
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_channels, weight.float()).to(weight.dtype)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``module.load_state_dict(state)``, strict, with one error naming every problem and the file."""
    own = module.state_dict()
    # BatchNorm's num_batches_tracked counter only matters for momentum=None;
    # weight files saved before it existed (older torchvision releases) lack it.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, encoder {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_describe_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_describe_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {_describe_keys(mismatched)}")
        raise ValueError(f"weights {source!r} do not fit {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


class _TorchvisionEncoder(Encoder):
    """Shared weight loading for encoders that keep torchvision's module names."""

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        return _TORCHVISION_WEIGHTS[self.name].url, download_imagenet_state_dict(self.name)


# --------------------------------------------------------------------------- dilation


def _set_conv_stride1_dilated(conv: nn.Conv2d, dilation: int) -> None:
    conv.stride = (1, 1)
    conv.dilation = (dilation, dilation)
    # "same" padding for the dilated kernel, so the map keeps its size.
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def dilate_stages(stages: Iterable[nn.Module], factor: int = 2, dilate_strided_conv: bool = False) -> None:
    """Remove the stride of ``stages`` (a stage and all later ones) by dilation.

    Every strided conv gets stride 1. Convs with a kernel larger than 1x1
    that come after the first strided conv get their dilation multiplied by
    ``factor``; the strided conv itself keeps its dilation (its taps were
    spaced at the previous resolution, as torchvision's ResNet does with
    ``replace_stride_with_dilation``) unless ``dilate_strided_conv``
    (torchvision's ``MobileNetV3(dilated=True)`` dilates it too).

    To reach output stride 8 call it for the last stage first, then for the
    two last stages, so the last stage ends up dilated by 4.
    """
    seen_stride = False
    for module in stages:
        for conv in module.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            strided = conv.stride != (1, 1)
            dilate = max(conv.kernel_size) > 1 and (seen_stride or (strided and dilate_strided_conv))
            if strided or dilate:
                _set_conv_stride1_dilated(conv, conv.dilation[0] * factor if dilate else conv.dilation[0])
            seen_stride = seen_stride or strided


def _dilate_last_stages(stages: list[nn.Module], output_stride: int, dilate_strided_conv: bool = False) -> None:
    """Dilate the trailing stride-2 stages of a net whose last stage ends at stride 32."""
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
    for i in range(1, n_dilated + 1):  # last stage first: see dilate_stages
        dilate_stages(stages[-i:], 2, dilate_strided_conv)


def _replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same conv for ``in_channels`` inputs, He-initialised like torchvision's backbones."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


# --------------------------------------------------------------------------- torchvision encoders


class ResNetEncoder(_TorchvisionEncoder):
    """torchvision ResNet; features after the stem (stride 2) and after each layer (4, 8, 16, 32)."""

    first_conv = "conv1"

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        super().__init__()
        builder = getattr(torchvision.models, name)
        bottleneck = name in ("resnet50", "resnet101")
        if bottleneck:
            # Exactly how torchvision builds the DeepLabv3 / FCN backbones.
            net = builder(weights=None, replace_stride_with_dilation=[False, output_stride <= 8, output_stride <= 16])
        else:
            # BasicBlock has no dilation support in torchvision: dilate by hand.
            net = builder(weights=None)
            _dilate_last_stages([net.layer3, net.layer4], output_stride)
        self.conv1 = _replace_first_conv(net.conv1, in_channels)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

        expansion = 4 if bottleneck else 1
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.channels = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
        self.preprocessing = TORCHVISION.for_channels(in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.relu(self.bn1(self.conv1(x)))
        f4 = self.layer1(self.maxpool(f2))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        return [f2, f4, f8, f16, f32]


class VGGEncoder(_TorchvisionEncoder):
    """torchvision VGG16 (optionally with BatchNorm); features after each max pool (strides 2..32).

    Output stride 16 / 8 as in DeepLab-LargeFOV: the last one / two pools
    become 3x3 stride-1 pools (padding 1) and the convs after a stride-1
    pool are dilated by 2 (by 4 after two).
    """

    first_conv = "features.0"

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        super().__init__()
        # Build only the conv part: torchvision's full VGG would first allocate
        # (and initialise) a 120M-parameter classifier we would throw away.
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=name == "vgg16_bn")
        features[0] = _replace_first_conv(features[0], in_channels)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        n_strided = {32: 5, 16: 4, 8: 3}[output_stride]
        dilation = 1
        for i, module in enumerate(features):
            if isinstance(module, nn.Conv2d) and dilation > 1:
                _set_conv_stride1_dilated(module, dilation)
            elif isinstance(module, nn.MaxPool2d) and pools.index(i) >= n_strided:
                features[i] = nn.MaxPool2d(3, stride=1, padding=1)
                dilation *= 2
        self.features = features
        self._taps = frozenset(pools)

        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.channels = [64, 128, 256, 512, 512]
        self.strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
        self.preprocessing = TORCHVISION.for_channels(in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_with_taps(self.features, x, self._taps)


def _run_with_taps(features: nn.Sequential, x: torch.Tensor, taps: frozenset[int]) -> list[torch.Tensor]:
    """Run a Sequential, collecting the outputs of the modules whose index is in ``taps``."""
    out = []
    for i, module in enumerate(features):
        x = module(x)
        if i in taps:
            out.append(x)
    return out


def _module_stride(module: nn.Module) -> int:
    stride = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


class MobileNetV3Encoder(_TorchvisionEncoder):
    """torchvision MobileNetV3; features at the last block of each stride (2, 4, 8, 16, 32).

    The stride-32 map is the final 1x1 conv (960 / 576 channels), the map
    torchvision's LR-ASPP uses as its high-level input. Output stride 16
    matches torchvision's ``mobilenet_v3_*(dilated=True)`` exactly.
    """

    first_conv = "features.0.0"

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 32) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        features = net.features
        features[0][0] = _replace_first_conv(features[0][0], in_channels)

        # Find the stages (blocks that share a stride) before dilation changes the strides.
        cumulative, block_strides = 1, []
        for block in features:
            cumulative *= _module_stride(block)
            block_strides.append(cumulative)
        starts = [i for i, s in enumerate(block_strides) if i == 0 or s != block_strides[i - 1]]
        stages = [features[a:b] for a, b in zip(starts, starts[1:] + [len(features)])]
        _dilate_last_stages(stages, output_stride, dilate_strided_conv=True)

        self.features = features
        taps = [end - 1 for end in starts[1:] + [len(features)]]  # last block of each stage
        self._taps = frozenset(taps)
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        # A block's output channels are those of its last conv (the projection of an inverted residual).
        self.channels = [[m for m in features[i].modules() if isinstance(m, nn.Conv2d)][-1].out_channels for i in taps]
        self.strides = [min(block_strides[i], output_stride) for i in taps]
        self.preprocessing = TORCHVISION.for_channels(in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_with_taps(self.features, x, self._taps)


# --------------------------------------------------------------------------- timm


def _timm_weights_location(model_name: str) -> str:
    """Where timm's default weights for ``model_name`` live, for the offline message."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is not None and cfg.hf_hub_id:
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    if cfg is not None and cfg.url:
        return cfg.url
    return "the model's weights file (see timm's pretrained_cfg)"


class TimmEncoder(Encoder):
    """Any timm model with ``features_only=True``; preprocessing comes from its ``pretrained_cfg``.

    ``weights="imagenet"`` downloads timm's default pretrained weights. A
    file must be in timm's format (what ``timm.create_model(name).state_dict()``
    saves, as in timm's Hugging Face repos); it is loaded strictly by
    `load_file`, since timm's own loader only logs mismatches when building
    a feature extractor.
    """

    def __init__(
        self, model_name: str, in_channels: int = 3, output_stride: int = 32, weights: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            raise ValueError(
                f"unknown timm model {model_name!r}; list candidates with timm.list_models('*{model_name[:8]}*')"
            )
        kwargs: dict = {"features_only": True, "in_chans": in_channels}
        if output_stride != 32:  # models without dilation support reject the argument altogether
            kwargs["output_stride"] = output_stride
        if str(weights) == "imagenet":
            try:
                self.model = timm.create_model(model_name, pretrained=True, **kwargs)
            except Exception as e:  # HF hub / URL errors come in many classes
                raise RuntimeError(
                    f"could not get the pretrained weights of timm model {model_name!r} ({type(e).__name__}: {e}). "
                    f"If this machine is offline, download {_timm_weights_location(model_name)} on one that is "
                    "online, copy it here and pass its path instead of 'imagenet' "
                    "(set HF_HUB_OFFLINE=1 to skip the download retries)."
                ) from e
        else:
            self.model = timm.create_model(model_name, pretrained=False, **kwargs)

        info = self.model.feature_info
        self.model_name = model_name
        self.name = f"timm:{model_name}"
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.channels = list(info.channels())
        # timm already reports the reduction of dilated stages as capped; min() is a safeguard.
        self.strides = [min(int(r), output_stride) for r in info.reduction()]
        cfg = self.model.pretrained_cfg
        mean, std = cfg.get("mean", TORCHVISION.mean), cfg.get("std", TORCHVISION.std)
        self.preprocessing = Preprocessing(tuple(mean), tuple(std), "RGB", 1 / 255).for_channels(in_channels)
        if weights is not None and str(weights) != "imagenet":
            self.load_file(weights)

    def load_file(self, path: str | os.PathLike) -> None:
        """Load a timm-format state dict into the feature extractor, strictly.

        Feature extractors rename top-level sequential children (``stem.0`` ->
        ``stem_0``) and drop the classification head, so file keys are matched
        after mapping "." to "_", and keys of the full model that the feature
        extractor does not use (head, final conv) are ignored. Anything else
        that does not match is an error.
        """
        import timm

        def norm(key: str) -> str:
            return key.replace(".", "_")

        state = read_state_dict(path)
        own_by_norm = {norm(k): k for k in self.model.state_dict()}
        # Keys of the full classification model that the feature extractor leaves out.
        full_keys = {norm(k) for k in timm.create_model(self.model_name, pretrained=False).state_dict()}
        dropped = full_keys - set(own_by_norm)
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if norm(key) in own_by_norm:
                mapped[own_by_norm[norm(key)]] = value
            elif norm(key) not in dropped:
                mapped[key] = value  # reported as unexpected by load_checked

        first_convs = self.model.pretrained_cfg.get("first_conv") or ()
        for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
            key = own_by_norm.get(norm(f"{conv}.weight"))
            if key in mapped and mapped[key].ndim == 4 and mapped[key].shape[1] != self.in_channels:
                mapped[key] = _adapt_input_conv(mapped[key], self.in_channels)

        load_checked(self.model, mapped, str(path), f"encoder {self.name!r} (in_channels={self.in_channels})")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


# --------------------------------------------------------------------------- factory

_ENCODERS: dict[str, type[_TorchvisionEncoder]] = {
    "resnet18": ResNetEncoder,
    "resnet34": ResNetEncoder,
    "resnet50": ResNetEncoder,
    "resnet101": ResNetEncoder,
    "vgg16": VGGEncoder,
    "vgg16_bn": VGGEncoder,
    "mobilenet_v3_large": MobileNetV3Encoder,
    "mobilenet_v3_small": MobileNetV3Encoder,
}


def register_encoder(name: str, cls: type) -> type:
    """Add an encoder class (built as ``cls(name, in_channels, output_stride)``) under ``name``.

    Model families with their own backbone (aligned Xception, DenseNet,
    HRNet) register it here so every decoder can use it by name.
    """
    if name in _ENCODERS or name.startswith("timm:"):
        raise ValueError(f"encoder {name!r} is already registered")
    _ENCODERS[name] = cls
    return cls


def list_encoders() -> list[str]:
    """The registered encoder names; any timm model also works as ``timm:<name>``."""
    import imseg.models  # noqa: F401  (families register their own backbones on import)

    return sorted(_ENCODERS)


def build_encoder(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    weights: str | os.PathLike | None = None,
    keep_classifier: bool = False,
) -> Encoder:
    """Build an encoder.

    Args:
        name: one of `list_encoders()` or ``"timm:<timm model name>"``.
        in_channels: input channels; loaded RGB weights are adapted (summed
            for 1 channel, repeated and rescaled for more).
        output_stride: 32, 16 or 8; below 32 the last stages are dilated.
        weights: None (random init), ``"imagenet"`` (downloaded with hash
            check) or the path of a ``.pth``/``.pt``/``.safetensors`` file in
            torchvision (or, for timm encoders, timm) format.
        keep_classifier: keep the ImageNet classifier tensors of the weights
            on ``encoder.classifier_state`` (torchvision encoders only).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if name.startswith("timm:"):
        return TimmEncoder(name[len("timm:"):], in_channels, output_stride, weights)
    if name not in _ENCODERS:
        import imseg.models  # noqa: F401  (families register their own backbones on import)
    if name not in _ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r}; choose one of: {', '.join(list_encoders())}, or 'timm:<timm model name>'"
        )
    encoder = _ENCODERS[name](name, in_channels, output_stride)
    if weights is not None:
        encoder.load_weights(weights, keep_classifier=keep_classifier)
    return encoder
