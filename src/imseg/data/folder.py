"""Any data set laid out as a folder of images and a folder of index masks.

::

    root/images/<stem>.jpg|png|tif|bmp     RGB images
    root/masks/<stem>.png                  index masks (pixel value = class id)
    root/train.txt, val.txt (optional)     one stem per line

Images and masks are paired by file stem. ``image_dir`` / ``mask_dir`` may
contain ``{split}`` for layouts such as ``images/train``, ``images/val``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .base import DataError, SegmentationDataset, Transform, list_some
from .palette import default_palette

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Lossless formats only: JPEG compression smears class ids across borders.
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


def _index_by_stem(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    """stem -> file for the files in ``folder`` with one of ``extensions``."""
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions and not path.name.startswith("."):
            if path.stem in found:
                clashes.append(f"{found[path.stem].name} / {path.name}")
            found[path.stem] = path
    if clashes:
        raise DataError(f"{what} folder {folder} has several files with the same stem: {list_some(clashes)}")
    return found


def read_stem_list(list_file: Path) -> list[str]:
    """Stems from a split list file: one per line, blank lines and '#' comments skipped.

    A line may also name a file (``a.jpg`` or ``images/a.jpg``); only its stem is used.
    """
    if not list_file.is_file():
        raise DataError(f"split list file {list_file} does not exist")
    stems = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            stems.append(Path(line.split()[0]).stem)
    return stems


class FolderDataset(SegmentationDataset):
    """Images and index masks paired by stem, optionally restricted to a split list.

    Parameters:
        root: data set folder.
        class_names: one name per class (``num_classes = len(class_names)``).
        image_dir, mask_dir: folders relative to ``root`` (``{split}`` is replaced by ``split``).
        split: split name, used for ``{split}`` and in messages.
        split_file: list file of stems (relative to ``root`` or absolute); None = every image.
        palette: colours per class; default the VOC palette.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        class_names: Sequence[str],
        *,
        image_dir: str = "images",
        mask_dir: str = "masks",
        split: str = "train",
        split_file: str | os.PathLike | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = 255,
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} does not exist or is not a folder (data.root / --data-root)")
        self.image_dir = self.root / image_dir.format(split=split)
        self.mask_dir = self.root / mask_dir.format(split=split)
        for folder, key in ((self.image_dir, "image_dir"), (self.mask_dir, "mask_dir")):
            if not folder.is_dir():
                raise DataError(f"{key} folder {folder} does not exist (set data.{key}, relative to data.root)")

        images = _index_by_stem(self.image_dir, IMAGE_EXTENSIONS, "image")
        masks = _index_by_stem(self.mask_dir, MASK_EXTENSIONS, "mask")

        if split_file is not None:
            list_path = Path(split_file).expanduser()
            list_path = list_path if list_path.is_absolute() else self.root / list_path
            stems = read_stem_list(list_path)
            if not stems:
                raise DataError(f"split {split!r} is empty: list file {list_path} names no images")
            unknown = [s for s in stems if s not in images]
            if unknown:
                raise DataError(
                    f"split {split!r} ({list_path}) names {len(unknown)} stem(s) with no image in "
                    f"{self.image_dir}: {list_some(unknown)}"
                )
        else:
            stems = sorted(images)
            if not stems:
                raise DataError(
                    f"split {split!r} is empty: no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                    f"in {self.image_dir}"
                )

        without_mask = [images[s].name for s in stems if s not in masks]
        if without_mask:
            hint = ""
            if any((self.mask_dir / f"{Path(n).stem}{ext}").exists() for n in without_mask for ext in (".jpg", ".jpeg")):
                hint = " (JPEG masks were found: JPEG is lossy and corrupts class ids; save masks as PNG)"
            raise DataError(
                f"{len(without_mask)} image(s) in {self.image_dir} have no mask "
                f"({'/'.join(e[1:] for e in MASK_EXTENSIONS)} with the same stem) in {self.mask_dir}: "
                f"{list_some(without_mask)}{hint}"
            )

        super().__init__(
            [(images[s], masks[s]) for s in stems],
            class_names,
            palette if palette else default_palette(len(class_names)),
            ignore_index=ignore_index,
            transform=transform,
        )

    def __repr__(self) -> str:
        return f"FolderDataset(split={self.split!r}, {len(self)} samples, root={str(self.root)!r})"
