"""How raw pixels become network input: the data that travels with weights.

Three conventions matter in practice and all are first-class here:

* torchvision / timm weights: RGB, scaled to 0-1, ImageNet mean/std.
* caffe VGG weights (FCN, SegNet, DeconvNet, DeepLab v1/v2 releases): BGR,
  0-255, the BGR mean 103.939/116.779/123.68 subtracted, no std.
* TensorFlow "inception" weights (EfficientNet-Lite, TF DeepLab's Xception):
  RGB scaled to [-1, 1], i.e. mean 0.5 and std 0.5 after scaling to 0-1.

Feeding one network the other's input silently costs many mIoU points, so
a `Preprocessing` is stored in every checkpoint and the same object
normalises the batch in training, evaluation and prediction.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import torch

ChannelOrder = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class Preprocessing:
    """Maps an image with values 0-255 (channels in RGB order) to model input.

    ``mean`` and ``std`` are given in the order of the channels *after*
    reordering (so for caffe weights the mean is B, G, R) and in the units
    *after* scaling.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: ChannelOrder = "RGB"
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"preprocessing channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"preprocessing mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be positive, got {self.std}")
        if self.channel_order == "BGR" and len(self.mean) != 3:
            raise ValueError("channel_order 'BGR' needs exactly 3 channels")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def num_channels(self) -> int:
        return len(self.mean)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a batch ``[B, C, H, W]`` (or one image ``[C, H, W]``) of 0-255 values."""
        if images.ndim not in (3, 4):
            raise ValueError(f"expected an image [C,H,W] or batch [B,C,H,W], got shape {tuple(images.shape)}")
        channel_dim = images.ndim - 3
        if images.shape[channel_dim] != self.num_channels:
            raise ValueError(
                f"image has {images.shape[channel_dim]} channels but the preprocessing expects {self.num_channels}"
            )
        x = images.float()
        if self.channel_order == "BGR":
            x = x.flip(channel_dim)
        shape = [1] * x.ndim
        shape[channel_dim] = self.num_channels
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x * self.scale - mean) / std

    def for_channels(self, n: int) -> "Preprocessing":
        """The same convention for ``n`` input channels (grey, RGB-NIR, ...).

        Extra channels get the mean of the existing statistics; a single
        channel gets their average. Channel reordering only exists for RGB.
        """
        if n == self.num_channels:
            return self
        avg_mean = sum(self.mean) / len(self.mean)
        avg_std = sum(self.std) / len(self.std)
        base_mean = self.mean if self.channel_order == "RGB" else self.mean[::-1]
        base_std = self.std if self.channel_order == "RGB" else self.std[::-1]
        mean = (tuple(base_mean) + (avg_mean,) * n)[:n] if n > 1 else (avg_mean,)
        std = (tuple(base_std) + (avg_std,) * n)[:n] if n > 1 else (avg_std,)
        return Preprocessing(mean, std, "RGB", self.scale)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        allowed = {"mean", "std", "channel_order", "scale"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(allowed)}")
        return cls(tuple(d["mean"]), tuple(d["std"]), d.get("channel_order", "RGB"), d.get("scale", 1 / 255))


TORCHVISION = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="RGB", scale=1 / 255)
CAFFE = Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR", scale=1.0)
INCEPTION = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="RGB", scale=1 / 255)

PRESETS: dict[str, Preprocessing] = {
    "torchvision": TORCHVISION, "imagenet": TORCHVISION, "caffe": CAFFE, "inception": INCEPTION,
}


def get_preprocessing(spec: str | Mapping[str, Any] | Preprocessing) -> Preprocessing:
    """A preset name ('torchvision', 'caffe'), a dict of fields, or a Preprocessing."""
    if isinstance(spec, Preprocessing):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown preprocessing preset {spec!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[spec]
    return Preprocessing.from_dict(spec)
