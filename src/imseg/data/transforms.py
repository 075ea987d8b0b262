"""Joint image/mask augmentation on top of torchvision.transforms.v2.

The image is wrapped as ``tv_tensors.Image`` and the mask as
``tv_tensors.Mask`` so that every geometric transform moves both the same
way while colour transforms touch the image only, and masks are always
resampled with nearest-neighbour (a bilinear mask would invent labels on
class borders).

All randomness comes from torch's global RNG (torchvision v2 draws its
parameters with ``torch.rand``/``torch.randint``), so seeding torch, which
the DataLoader does per worker from its base seed, makes a run reproducible.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

if TYPE_CHECKING:
    from imseg.config import DataConfig


def _pair(size: Sequence[int] | int | None, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"{what} must be [H, W] with positive values, got {list(size)}")
    return int(size[0]), int(size[1])


class ResizeJoint(v2.Transform):
    """Resize image and mask to a fixed size and/or by a random factor.

    ``size`` (H, W) is applied first (e.g. CamVid 360x480 -> 180x240 for
    faster training); then one factor ``s ~ U(scale_range)`` multiplies both
    sides, keeping the aspect ratio. torchvision's RandomResize/ScaleJitter
    resize to a target *length* rather than by a factor of the current size,
    which only matches for a fixed input size, hence this small transform.

    The image uses bilinear + antialias; the mask uses NEAREST_EXACT, whose
    pixel-centre convention matches bilinear's (plain NEAREST is shifted by
    half a pixel when downscaling, misaligning labels and pixels).
    """

    def __init__(self, size: Sequence[int] | None = None, scale_range: Sequence[float] | None = None) -> None:
        super().__init__()
        self.size = _pair(size, "train_size")
        if scale_range is not None:
            lo, hi = (float(s) for s in scale_range)
            if not 0 < lo <= hi:
                raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
            scale_range = (lo, hi)
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = self.size if self.size is not None else v2.query_size(flat_inputs)
        if self.scale_range is not None:
            lo, hi = self.scale_range
            s = lo + (hi - lo) * float(torch.rand(()))
            h, w = max(1, round(h * s)), max(1, round(w * s))
        return {"size": [h, w]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


class JointTransform:
    """``(image uint8 [3,H,W], mask int64 [H,W]) -> (image uint8 [3,h,w], mask int64 [h,w])``.

    Training pipeline, each step optional:
      1. resize to ``train_size`` (H, W),
      2. random scale by a factor in ``scale_range``,
      3. random crop to ``crop_size`` (H, W), padding first where the image is
         smaller (image padded with 0, mask with ``ignore_index`` so padding
         never counts as a class),
      4. horizontal flip with probability 0.5,
      5. colour jitter of strength ``color_jitter`` (image only; 0 = off).

    With ``train=False`` nothing is applied: evaluation sees full-size
    samples (the engine handles ``eval_size``).
    """

    def __init__(
        self,
        train: bool,
        *,
        crop_size: Sequence[int] | None = None,
        scale_range: Sequence[float] | None = None,
        train_size: Sequence[int] | None = None,
        hflip: bool = True,
        color_jitter: float = 0.0,
        ignore_index: int = 255,
    ) -> None:
        self.train = train
        self.ignore_index = int(ignore_index)
        steps: list[v2.Transform] = []
        if train:
            if color_jitter < 0:
                raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
            if train_size is not None or scale_range is not None:
                steps.append(ResizeJoint(train_size, scale_range))
            crop = _pair(crop_size, "crop_size")
            if crop is not None:
                fill = {tv_tensors.Image: 0, tv_tensors.Mask: self.ignore_index}
                steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill=fill, padding_mode="constant"))
            if hflip:
                steps.append(v2.RandomHorizontalFlip(0.5))
            if color_jitter > 0:
                # Same proportions as torchvision's reference recipes
                # (0.4, 0.4, 0.4, 0.1): hue is far more destructive than the rest.
                s = float(color_jitter)
                steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
        self.jitters = train and color_jitter > 0
        self.pipeline = v2.Compose(steps) if steps else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pipeline is not None:
            if self.jitters and (image.dtype != torch.uint8 or image.shape[0] != 3):
                raise ValueError(f"data.color_jitter works on 8-bit RGB images, but this one is {image.shape[0]}-band "
                                 f"{str(image.dtype).replace('torch.', '')}: set data.color_jitter: 0")
            image, mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        # Plain tensors out: tv_tensor subclasses would leak into collate and
        # user code, where their unwrapping rules surprise people. The image keeps
        # its dtype: uint8 for 8-bit files, float32 for deeper ones.
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).to(torch.int64)

    def __repr__(self) -> str:
        return f"JointTransform(train={self.train}, {self.pipeline!r})"


def build_transform(cfg: "DataConfig", train: bool) -> JointTransform:
    """The JointTransform a `DataConfig` describes."""
    return JointTransform(
        train,
        crop_size=cfg.crop_size,
        scale_range=cfg.scale_range,
        train_size=cfg.train_size,
        hflip=cfg.hflip,
        color_jitter=float(cfg.color_jitter),
        ignore_index=cfg.ignore_index,
    )
