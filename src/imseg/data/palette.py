"""Colours for label maps: colorize, overlay, and colour-mask conversion.

Palettes are only for looking at masks. Training always reads index masks
(pixel value = class id); `rgb_to_index` converts a colour-coded mask once,
explicitly, when a data set ships that way.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

Palette = Sequence[Sequence[int]]
ArrayLike = Union[np.ndarray, torch.Tensor]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC palette for ``num_classes`` classes.

    The bits of the class id are spread over the high bits of R, G and B, so
    neighbouring ids get clearly different colours and class 0 is black.
    """
    palette = []
    for c in range(num_classes):
        r = g = b = 0
        cid = c
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        palette.append((r, g, b))
    return palette


def _to_numpy(x: ArrayLike | Image.Image) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _colour_table(palette: Palette) -> np.ndarray:
    """[N + 1, 3] table; the extra last row (black) is used for every other value."""
    table = np.zeros((len(palette) + 1, 3), dtype=np.uint8)
    if len(palette):
        table[:-1] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return table


def _lookup_ids(mask: np.ndarray, n: int) -> np.ndarray:
    """Class ids as table rows; ignore_index and anything outside 0..n-1 -> row n (black)."""
    if mask.ndim != 2:
        raise ValueError(f"expected a mask [H, W], got shape {mask.shape}")
    ids = mask.astype(np.int64)
    return np.where((ids >= 0) & (ids < n), ids, n)


def colorize(mask: ArrayLike, palette: Palette | None = None) -> Image.Image:
    """An index mask [H, W] as an RGB image; ignore (and any unknown value) is black.

    Without a palette, the VOC palette for ``mask.max() + 1`` classes is used.
    """
    m = _to_numpy(mask)
    if palette is None:
        valid = m[(m >= 0) & (m < 255)]
        palette = default_palette(int(valid.max()) + 1 if valid.size else 1)
    rgb = _colour_table(palette)[_lookup_ids(m, len(palette))]
    return Image.fromarray(rgb, mode="RGB")


def _image_hwc(image: ArrayLike | Image.Image) -> np.ndarray:
    """PIL image, HWC array or CHW uint8 tensor -> uint8 HWC RGB array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = _to_numpy(image)
    if isinstance(image, torch.Tensor) and arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)  # tensors are CHW
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        raise ValueError(f"overlay expects a uint8 image (0-255), got {arr.dtype}")
    return arr


def overlay(
    image: ArrayLike | Image.Image, mask: ArrayLike, palette: Palette | None = None, alpha: float = 0.5
) -> Image.Image:
    """The image with the coloured mask blended over it (``alpha`` = mask opacity).

    Ignored / unknown pixels are left as the plain image, so unlabelled areas
    stay visible instead of being painted black.
    """
    img = _image_hwc(image)
    m = _to_numpy(mask)
    if img.shape[:2] != m.shape:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]} (WxH) but mask is {m.shape[1]}x{m.shape[0]}")
    if palette is None:
        valid = m[(m >= 0) & (m < 255)]
        palette = default_palette(int(valid.max()) + 1 if valid.size else 1)
    ids = _lookup_ids(m, len(palette))
    colours = _colour_table(palette)[ids].astype(np.float32)
    blended = img.astype(np.float32) * (1 - alpha) + colours * alpha
    labelled = (ids < len(palette))[..., None]
    out = np.where(labelled, blended, img.astype(np.float32))
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def rgb_to_index(rgb: ArrayLike | Image.Image, palette: Palette, unknown: int = 255) -> np.ndarray:
    """Convert a colour-coded mask [H, W, 3] to class ids [H, W] (uint8 when they fit).

    Pixels whose colour is not in the palette get ``unknown`` (use the
    ignore_index). Save the result with ``Image.fromarray(ids, mode="L")``.
    """
    arr = np.asarray(rgb.convert("RGB")) if isinstance(rgb, Image.Image) else _to_numpy(rgb)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB mask [H, W, 3], got shape {arr.shape}")
    # Pack each colour into one int so the lookup is a single vectorised search.
    packed = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
    ids = np.full(packed.shape, unknown, dtype=np.int64)
    for cid, key in enumerate(keys):
        ids[packed == key] = cid
    fits = 0 <= unknown <= 255 and len(palette) <= 256
    return ids.astype(np.uint8) if fits else ids
