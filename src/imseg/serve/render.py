"""What one prediction is shown as: the overlay (classes toggled off left out), the legend, the index PNG, counts.

None of this runs the model: moving the opacity slider or toggling a class
redraws from the mask already computed.
"""
from __future__ import annotations

import html
import io
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from imseg.data.palette import overlay

Colour = Sequence[int]


def overlay_image(image: Image.Image, mask: np.ndarray, palette: Sequence[Colour], alpha: float,
                  shown: Iterable[int] | None = None) -> Image.Image:
    """``image`` with the mask's colours blended in at opacity ``alpha``; classes not in ``shown`` (all when
    None) keep the plain picture, as unlabelled pixels do."""
    if shown is not None:
        hidden = np.setdiff1d(np.arange(len(palette)), np.fromiter(shown, dtype=np.int64))
        if hidden.size:
            mask = np.where(np.isin(mask, hidden), 255, mask)
    return overlay(image, mask, palette, float(alpha))


def overlay_with_legend(image: Image.Image, mask: np.ndarray, class_names: Sequence[str],
                        palette: Sequence[Colour], alpha: float, shown: Iterable[int] | None = None) -> Image.Image:
    """`overlay_image` with imseg's legend strip below it (`imseg.engine.legend`, as `imseg predict` and the
    eval report draw it), listing the classes present and shown: a saved copy still says which colour is what."""
    from imseg.engine.legend import present_classes, with_legend

    visible = set(range(len(class_names))) if shown is None else set(shown)
    listed = [c for c in present_classes([mask], len(class_names)) if c in visible]
    return with_legend(overlay_image(image, mask, palette, alpha, visible), class_names, palette, listed)


def class_counts(mask: np.ndarray, class_names: Sequence[str], palette: Sequence[Colour]) -> dict:
    """Pixels per class as JSON: every class listed (0 where absent); the counts add up to H x W."""
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=len(class_names))
    total = int(mask.size)
    classes = [{"id": i, "name": name, "colour": list(palette[i]), "pixels": int(counts[i]),
                "fraction": round(int(counts[i]) / total, 6) if total else 0.0}
               for i, name in enumerate(class_names)]
    height, width = mask.shape
    return {"width": int(width), "height": int(height), "pixels": total, "classes": classes}


def legend_html(class_names: Sequence[str], palette: Sequence[Colour], mask: np.ndarray | None = None,
                shown: Iterable[int] | None = None) -> str:
    """A table of colour, class name and (with a mask) its share of the picture; classes toggled off greyed."""
    shares = class_counts(mask, class_names, palette)["classes"] if mask is not None else None
    visible = set(range(len(class_names))) if shown is None else set(shown)
    rows = []
    for i, name in enumerate(class_names):
        r, g, b = palette[i]
        share = f"{100 * shares[i]['fraction']:.1f}%" if shares else ""
        style = "" if i in visible else ' style="opacity:0.35;text-decoration:line-through"'
        rows.append(f'<tr class="legend-row" data-class="{i}"{style}>'
                    f'<td><span class="swatch" style="background:rgb({r},{g},{b})"></span></td>'
                    f"<td>{html.escape(name)}</td><td>{share}</td></tr>")
    return ('<table class="imseg-legend"><thead><tr><th></th><th>class</th><th>of the picture</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


LEGEND_CSS = """
.imseg-legend { border-collapse: collapse; font-size: 0.9em; }
.imseg-legend td, .imseg-legend th { padding: 2px 8px; text-align: left; }
.imseg-legend .swatch { display: inline-block; width: 1.2em; height: 1.2em; border: 1px solid #555;
                        vertical-align: middle; }
"""


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def index_png(mask: np.ndarray, palette: Sequence[Colour]) -> bytes:
    """The mask as an index PNG (pixel value = class id, palette for viewers), as `imseg predict` writes it."""
    from imseg.engine.predict import mask_image

    return png_bytes(mask_image(mask, palette))
