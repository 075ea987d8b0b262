"""A colour key under a picture: which colour is which class, from the model's own metadata.

`with_legend` is the one drawing routine for every picture imseg shows
classes in (prediction overlays, the eval report's gallery, the web app), so
a colour means the same class everywhere. Entries flow left to right and
wrap at the picture's width; by default only the classes present in the
mask(s) are listed, so a 32-class key does not bury a 3-class street scene.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SWATCH = 12  # px: the colour square
GAP = 10  # px: between entries
PAD = 6  # px: around the legend


def present_classes(masks: Iterable[np.ndarray], num_classes: int) -> list[int]:
    """The class ids (0..num_classes-1) found in any of ``masks``, ascending; ignore values are left out."""
    found: set[int] = set()
    for mask in masks:
        values = np.unique(np.asarray(mask))
        found.update(int(v) for v in values if 0 <= v < num_classes)
    return sorted(found)


def with_legend(image: Image.Image, class_names: Sequence[str], palette: Sequence[Sequence[int]],
                classes: Iterable[int] | None = None) -> Image.Image:
    """``image`` (RGB) with a legend strip below it: a swatch of each class's colour and its name.

    ``classes`` picks the ids to list (e.g. `present_classes` of the mask); None lists every class.
    Returns a new image as wide as ``image``.
    """
    ids = list(range(len(class_names))) if classes is None else [i for i in classes if 0 <= i < len(class_names)]
    strip = legend_strip(class_names, palette, ids, image.width)
    out = Image.new("RGB", (image.width, image.height + strip.height), "white")
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(strip, (0, image.height))
    return out


def legend_strip(class_names: Sequence[str], palette: Sequence[Sequence[int]], ids: Sequence[int],
                 width: int) -> Image.Image:
    """The legend alone: entries for ``ids``, wrapped to ``width`` pixels."""
    font = ImageFont.load_default()
    line = max(SWATCH, _text_height(font)) + 4
    positions, x, y = [], PAD, PAD
    for i in ids:
        entry = SWATCH + 4 + int(font.getlength(class_names[i]))
        if x > PAD and x + entry > width - PAD:  # wrap; an entry wider than the picture gets its own line
            x, y = PAD, y + line
        positions.append((i, x, y))
        x += entry + GAP
    strip = Image.new("RGB", (max(width, 1), y + line + PAD if ids else 0), "white")
    draw = ImageDraw.Draw(strip)
    for i, x, y in positions:
        colour = tuple(int(v) for v in palette[i]) if i < len(palette) else (0, 0, 0)
        draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=colour, outline=(90, 90, 90))
        draw.text((x + SWATCH + 4, y + (SWATCH - _text_height(font)) // 2), class_names[i], fill="black", font=font)
    return strip


def _text_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Hg")
    return bottom - top
