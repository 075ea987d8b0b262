"""From a batch of 0-255 images to logits at the images' own size.

One function serves training-time validation, `imseg eval`, `imseg predict`
and the Python API, so every path normalises and resizes the same way:

* ``whole``: the (optionally resized, ``eval_size``) image in one pass;
* ``slide``: overlapping windows of ``crop_size`` every ``stride`` pixels,
  run ``window_batch`` at a time, overlaps averaged (for images too large
  for memory, or models trained on crops);
* test-time augmentation: every scale in ``scales``, each also mirrored if
  ``flip``; the logits of all passes are averaged.

When a whole-image pass runs out of memory, inference falls back to sliding
windows (``crop_size`` if set, else 512x512) and warns once.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.engine.runtime import autocast
from imseg.outputs import main_logits
from imseg.preprocessing import Preprocessing

FALLBACK_WINDOW = (512, 512)


@dataclass(frozen=True)
class Inference:
    preprocessing: Preprocessing
    eval_size: tuple[int, int] | None = None
    mode: str = "whole"  # 'whole' | 'slide'
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    window_batch: int = 4
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    amp_dtype: torch.dtype | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and self.crop_size is None:
            raise ValueError("sliding-window inference needs a crop_size [H, W]")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {list(self.scales)}")
        if self.window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {self.window_batch}")
        for name in ("eval_size", "crop_size", "stride"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


def _forward(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    with autocast(x.device, amp_dtype):
        return main_logits(model(x)).float()


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)  # the last window ends exactly at the border
    return starts


def slide_logits(model: nn.Module, x: torch.Tensor, crop: Sequence[int], stride: Sequence[int] | None,
                 window_batch: int = 4, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of a normalised batch ``x`` from overlapping windows, overlaps averaged."""
    b, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride if stride is not None else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
    boxes = [(t, l) for t in _window_starts(h, ch, sh) for l in _window_starts(w, cw, sw)]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for i in range(0, len(boxes), window_batch):
        group = boxes[i : i + window_batch]
        windows = torch.cat([x[:, :, t : t + ch, l : l + cw] for t, l in group])
        logits = _forward(model, windows, amp_dtype)
        if total is None:
            total = torch.zeros(b, logits.shape[1], h, w, device=x.device)
        for j, (t, l) in enumerate(group):
            total[:, :, t : t + ch, l : l + cw] += logits[j * b : (j + 1) * b]
            count[:, :, t : t + ch, l : l + cw] += 1
    return total / count


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error) \
        or "out of memory" in str(error).lower()


def _single_pass(model: nn.Module, x: torch.Tensor, inf: Inference) -> torch.Tensor:
    if inf.mode == "slide":
        return slide_logits(model, x, inf.crop_size, inf.stride, inf.window_batch, inf.amp_dtype)
    try:
        return _forward(model, x, inf.amp_dtype)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not _is_out_of_memory(e):
            raise
        if x.is_cuda:
            torch.cuda.empty_cache()
        window = inf.crop_size or FALLBACK_WINDOW
        # Python shows a warning once per call site by default: one line, not one per batch.
        warnings.warn(f"whole-image inference at {tuple(x.shape[-2:])} ran out of memory; "
                      f"falling back to sliding windows of {tuple(window)}", RuntimeWarning, stacklevel=3)
        return slide_logits(model, x, window, None, 1, inf.amp_dtype)


def infer_logits(model: nn.Module, images: torch.Tensor, inf: Inference) -> torch.Tensor:
    """Float logits ``[B,K,H,W]`` at the images' own size for a batch of 0-255 images.

    With ``eval_size`` the network sees the batch resized to that H x W (a
    model trained at low resolution) and its logits are resized back, so
    scores are always measured against full-resolution labels. Scales are
    relative to that base size.
    """
    height, width = images.shape[-2:]
    x = inf.preprocessing(images)
    base = inf.eval_size or (height, width)
    total: torch.Tensor | None = None
    passes = 0
    for scale in inf.scales:
        size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
        xs = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True) if inf.flip else (False,):
            logits = _single_pass(model, xs.flip(-1) if flip else xs, inf)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            passes += 1
    return total / passes if passes > 1 else total


def inference_from_config(eval_cfg, preprocessing: Preprocessing, eval_size: Sequence[int] | None = None,
                          amp_dtype: torch.dtype | None = None) -> Inference:
    """An Inference from an EvalConfig (or a dict with the same keys, as stored in checkpoints)."""
    get = eval_cfg.get if isinstance(eval_cfg, dict) else lambda k, d=None: getattr(eval_cfg, k, d)
    return Inference(
        preprocessing,
        tuple(eval_size) if eval_size else None,
        mode=get("mode", "whole"),
        crop_size=get("crop_size"),
        stride=get("stride"),
        window_batch=get("window_batch", 4),
        scales=tuple(get("scales", None) or (1.0,)),
        flip=bool(get("flip", False)),
        amp_dtype=amp_dtype,
    )


