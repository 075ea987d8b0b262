"""Any data set laid out as a folder of images and a folder of masks.

::

    root/images/<stem>.jpg|png|tif|bmp|webp      images
    root/masks/<prefix><stem><suffix>.png        index masks (pixel value = class id), or colour
                                                 masks with a class table (data.classes)
    root/train.txt, val.txt (optional)           one image name per line

Images and masks are paired by file stem, with the mask's ``mask_prefix`` /
``mask_suffix`` (``_L``, ``_mask``, ``_gtFine_labelIds``). ``image_dir`` /
``mask_dir`` may contain ``{split}`` for layouts such as ``images/train`` +
``annotations/train`` or ``train/`` + ``train_labels/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .base import DataError, SegmentationDataset, Transform, list_some
from .palette import default_palette

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
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
    """The names in a split list file: one per line, blank lines and '#' comments skipped.

    A line names an image by stem (``frame.0001``, ``street 1``: dots and
    spaces are part of names) or by file (``a.jpg``, ``images/a.jpg``: the
    folder and a known image extension are dropped). A line of two names
    (``image mask``, as some benchmark lists have) keeps both; see
    `_resolve_stem`.
    """
    if not list_file.is_file():
        raise DataError(f"split list file {list_file} does not exist")
    names = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def _stem_of(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in IMAGE_EXTENSIONS else name


def _resolve_stem(line: str, images: dict[str, Path]) -> str:
    """The image stem a list line names: the whole line if it is one, else its first word."""
    whole = _stem_of(line)
    if whole in images or len(line.split()) == 1:
        return whole
    return _stem_of(line.split()[0])


class FolderDataset(SegmentationDataset):
    """Images and masks paired by stem, optionally restricted to a split list.

    Parameters:
        root: data set folder.
        class_names: one name per class (``num_classes = len(class_names)``).
        image_dir, mask_dir: folders relative to ``root`` (``{split}`` is replaced by ``split``).
        split: split name, used for ``{split}`` and in messages.
        split_file: list file of names (relative to ``root`` or absolute); None = every image.
        palette: colours per class; default the VOC palette.
        mask_prefix, mask_suffix: the mask of image ``<stem>.jpg`` is ``<prefix><stem><suffix>.png``.
        **labels: ``label_map``, ``reduce_zero_label``, ``colour_table``, ``unknown_colors``
            (see `SegmentationDataset`).
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
        mask_prefix: str = "",
        mask_suffix: str = "",
        **labels: Any,
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
        stems = self._split_stems(images, split_file)
        pairs = _pair(stems, images, masks, self.mask_dir, mask_prefix, mask_suffix)
        super().__init__(pairs, class_names, palette if palette else default_palette(len(class_names)),
                         ignore_index=ignore_index, transform=transform, **labels)

    def _split_stems(self, images: dict[str, Path], split_file: str | os.PathLike | None) -> list[str]:
        if split_file is None:
            if not images:
                raise DataError(f"split {self.split!r} is empty: no images "
                                f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {self.image_dir}")
            return sorted(images)
        list_path = Path(split_file).expanduser()
        list_path = list_path if list_path.is_absolute() else self.root / list_path
        stems = [_resolve_stem(line, images) for line in read_stem_list(list_path)]
        if not stems:
            raise DataError(f"split {self.split!r} is empty: list file {list_path} names no images")
        unknown = [s for s in stems if s not in images]
        if unknown:
            raise DataError(f"split {self.split!r} ({list_path}) names {len(unknown)} image(s) not in "
                            f"{self.image_dir}: {list_some(unknown)}")
        return stems

    def __repr__(self) -> str:
        return f"FolderDataset(split={self.split!r}, {len(self)} samples, root={str(self.root)!r})"


def _pair(stems: Sequence[str], images: dict[str, Path], masks: dict[str, Path], mask_dir: Path,
          prefix: str, suffix: str) -> list[tuple[Path, Path]]:
    """(image, mask) per stem; an image without its mask fails, showing the mask name it looked for."""
    missing = [s for s in stems if f"{prefix}{s}{suffix}" not in masks]
    if missing:
        looked = f"{prefix}{missing[0]}{suffix}" + "{" + ",".join(MASK_EXTENSIONS) + "}"
        hint = ""
        if any((mask_dir / f"{prefix}{s}{suffix}{ext}").exists() for s in missing for ext in (".jpg", ".jpeg")):
            hint = " (JPEG masks were found: JPEG is lossy and corrupts class ids; save masks as PNG)"
        elif not prefix and not suffix and masks:
            hint = (f"; the masks there are named like {next(iter(masks))}: set data.mask_suffix / "
                    f"data.mask_prefix to pair them")
        raise DataError(
            f"{len(missing)} image(s) in {images[missing[0]].parent} have no mask in {mask_dir}: "
            f"{list_some([images[s].name for s in missing])} (for {images[missing[0]].name} it looked for "
            f"{looked}){hint}")
    return [(images[s], masks[f"{prefix}{s}{suffix}"]) for s in stems]
