"""`imseg check-data`: read every image and mask of a data set once and say what is wrong with it.

Given a config (its data section, every split) or a folder of images and
masks, it reports: the pairs found and the files left unpaired, image/mask
size mismatches, the mask encoding (index, palette, colour, 16-bit, SBD
.mat), the label values with their pixel share and the number of images
holding each, values that are neither a class nor the ignore index (file,
value, count), a reduce_zero_label guess with its reason, images repeated
across splits (by content hash), per-band mean/std, and suggested
``num_classes``, ``ignore_index`` and class weights. The findings go to the
console, ``report.md`` (with a class-share chart) and ``check-data.json``;
errors make the exit status 1. ``write_classes`` writes a class table of the
colours found in colour masks, to name and use as ``data.classes``.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import DataError, list_some, load_image, load_mask_colours
from .classes import write_class_table
from .folder import IMAGE_EXTENSIONS, MASK_EXTENSIONS

_SOURCE_LIMIT = 20  # findings of one kind listed before "and N more"


@dataclass
class Survey:
    """Everything counted while reading the files."""

    splits: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    encodings: Counter = field(default_factory=Counter)
    value_pixels: Counter = field(default_factory=Counter)  # raw mask value (or packed colour) -> pixels
    value_images: Counter = field(default_factory=Counter)
    label_pixels: Counter = field(default_factory=Counter)  # class id after the dataset's mapping -> pixels
    label_image_pixels: Counter = field(default_factory=Counter)  # pixels of the images holding that class
    hashes: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    band_sum: np.ndarray | None = None
    band_sq: np.ndarray | None = None
    band_n: int = 0
    image_modes: Counter = field(default_factory=Counter)
    colour_masks: bool = False

    def add_bands(self, pixels: np.ndarray) -> None:
        # Every second row and column: the statistics of a photo barely move, the cost falls 4x.
        flat = pixels[::2, ::2].reshape(-1, pixels.shape[-1]).astype(np.float64)
        if self.band_sum is None or self.band_sum.shape[0] != flat.shape[1]:
            if self.band_sum is not None:
                self.warnings.append("images have different band counts; band statistics use the last count")
            self.band_sum, self.band_sq, self.band_n = np.zeros(flat.shape[1]), np.zeros(flat.shape[1]), 0
        self.band_sum += flat.sum(0)
        self.band_sq += (flat * flat).sum(0)
        self.band_n += flat.shape[0]


def _mask_kind_and_values(path: Path) -> tuple[str, np.ndarray]:
    """The mask's encoding and its raw values: class ids, or colours packed as r<<16|g<<8|b."""
    if path.suffix.lower() == ".mat":
        from .base import _load_mat_labels

        return "SBD .mat", _load_mat_labels(path)
    with Image.open(path) as img:
        mode = img.mode
        if mode == "P":
            return "palette", np.asarray(img).astype(np.int64)
        if mode in ("L", "1"):
            return "index", np.asarray(img).astype(np.int64)
        if mode.startswith("I"):
            return "16-bit index", np.asarray(img).astype(np.int64)
    rgb = load_mask_colours(path).astype(np.int64)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return "index (saved as RGB)", rgb[..., 0]
    return "colour", (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _image_mode_and_pixels(path: Path) -> tuple[str, np.ndarray]:
    """PIL's mode and the pixels; TIFFs PIL cannot open (multi-band, 16-bit RGB) through the data reader."""
    try:
        with Image.open(path) as img:
            return img.mode, np.asarray(img)
    except OSError:  # PIL's UnidentifiedImageError included
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
    pixels = load_image(path)
    return f"{pixels.shape[-1]}-band {pixels.dtype} TIFF", pixels


def _survey_image(survey: Survey, split: str, image_path: Path) -> tuple[int, int] | None:
    try:
        data = image_path.read_bytes()
        mode, pixels = _image_mode_and_pixels(image_path)
    except (OSError, DataError) as e:
        survey.errors.append(f"image {image_path} cannot be read: {e}")
        return None
    survey.image_modes[mode] += 1
    survey.hashes[hashlib.sha1(data).hexdigest()].append((split, str(image_path)))
    survey.add_bands(pixels if pixels.ndim == 3 else pixels[..., None])
    return pixels.shape[0], pixels.shape[1]


def _survey_mask(survey: Survey, dataset: Any, mask_path: Path, size: tuple[int, int] | None) -> None:
    try:
        kind, raw = _mask_kind_and_values(mask_path)
    except (OSError, DataError) as e:
        survey.errors.append(f"mask {mask_path} cannot be read: {e}")
        return
    survey.encodings[kind] += 1
    survey.colour_masks |= kind == "colour"
    if size is not None and raw.shape != size:
        survey.errors.append(f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
                             f"{size[1]}x{size[0]}")
    for v, c in _value_counts(raw):
        survey.value_pixels[v] += c
        survey.value_images[v] += 1
    if dataset is not None:
        _survey_labels(survey, dataset, mask_path, None if kind == "colour" else raw)


def _value_counts(raw: np.ndarray) -> list[tuple[int, int]]:
    if raw.size and raw.min() >= 0 and raw.max() < 1 << 16:  # a bincount is 10x faster than a sort
        counts = np.bincount(raw.ravel())
        return [(int(v), int(counts[v])) for v in np.flatnonzero(counts)]
    values, counts = np.unique(raw, return_counts=True)
    return list(zip(values.tolist(), counts.tolist()))


def _survey_labels(survey: Survey, dataset: Any, mask_path: Path, raw: np.ndarray | None) -> None:
    """Class ids as the dataset reads them (label map, class table applied); what it would refuse."""
    try:
        labels = dataset.map_labels(dataset._raw_labels(mask_path) if raw is None else raw, mask_path)
    except DataError as e:
        survey.errors.append(str(e))
        return
    bad = (labels < 0) | (labels >= dataset.num_classes)
    bad &= labels != dataset.ignore_index
    if bad.any():
        values, counts = np.unique(labels[bad], return_counts=True)
        listed = [f"{v} ({c} px)" for v, c in zip(values.tolist(), counts.tolist())]
        survey.errors.append(f"mask {mask_path}: values {list_some(listed)} are neither a class id "
                             f"(0..{dataset.num_classes - 1}) nor ignore_index ({dataset.ignore_index})")
    valid = labels[(labels >= 0) & (labels < dataset.num_classes)]
    counts = np.bincount(valid.ravel(), minlength=dataset.num_classes)
    for c in np.flatnonzero(counts).tolist():
        survey.label_pixels[c] += int(counts[c])
        survey.label_image_pixels[c] += int(valid.size)


def survey_pairs(pairs_by_split: dict[str, list[tuple[Path, Path]]], datasets: dict[str, Any]) -> Survey:
    survey = Survey()
    for split, pairs in pairs_by_split.items():
        survey.splits[split] = len(pairs)
        for image_path, mask_path in pairs:
            size = _survey_image(survey, split, image_path)
            _survey_mask(survey, datasets.get(split), mask_path, size)
    for copies in survey.hashes.values():
        splits = sorted({s for s, _ in copies})
        if len(splits) > 1:
            survey.errors.append(f"the same image is in splits {splits}: {list_some([p for _, p in copies])}")
        elif len(copies) > 1:
            survey.warnings.append(f"the same image appears {len(copies)} times in split {splits[0]!r}: "
                                   f"{list_some([p for _, p in copies])}")
    return survey


def pairs_from_config(path: str | Path, survey_errors: list[str]) -> tuple[dict, dict, Any]:
    """Pairs and datasets of every split of the config's data section (a split that fails is an error)."""
    from imseg.config import load_config

    from .build import build_dataset

    cfg = load_config(path)
    pairs, datasets = {}, {}
    for split in dict.fromkeys([cfg.data.train_split, cfg.data.val_split, cfg.data.test_split]):
        if not split:
            continue
        try:
            ds = build_dataset(cfg.data, split, train=False)
        except DataError as e:
            survey_errors.append(f"split {split!r}: {e}")
            continue
        pairs[split], datasets[split] = list(ds.files), ds
    return pairs, datasets, cfg.data


def pairs_from_folder(root: str | Path, image_dir: str, mask_dir: str, prefix: str, suffix: str,
                      survey: Survey) -> dict[str, list[tuple[Path, Path]]]:
    """Images and masks of a folder paired by stem; unpaired files on either side are listed."""
    from .folder import _index_by_stem, read_stem_list, _resolve_stem

    root = Path(root).expanduser()
    folders = {"image": root / image_dir, "mask": root / mask_dir}
    for what, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist (--{what}-dir, relative to {root})")
    images = _index_by_stem(folders["image"], IMAGE_EXTENSIONS, "image")
    masks = _index_by_stem(folders["mask"], MASK_EXTENSIONS + (".mat",), "mask")
    stem_of_mask = {f"{prefix}{s}{suffix}": s for s in images}
    unpaired_images = [images[s].name for s in images if f"{prefix}{s}{suffix}" not in masks]
    unpaired_masks = [m.name for name, m in masks.items() if name not in stem_of_mask]
    if unpaired_images:
        survey.errors.append(f"{len(unpaired_images)} image(s) have no mask {prefix}<stem>{suffix}.png in "
                             f"{folders['mask']}: {list_some(unpaired_images)}")
    if unpaired_masks:
        survey.warnings.append(f"{len(unpaired_masks)} mask(s) have no image in {folders['image']}: "
                               f"{list_some(unpaired_masks)}")
    paired = [s for s in images if f"{prefix}{s}{suffix}" in masks]
    lists = {name: root / f"{name}.txt" for name in ("train", "val", "test") if (root / f"{name}.txt").is_file()}
    if not lists:
        return {"all": [(images[s], masks[f"{prefix}{s}{suffix}"]) for s in sorted(paired)]}
    out = {}
    for name, path in lists.items():
        stems = [_resolve_stem(line, images) for line in read_stem_list(path)]
        unknown = [s for s in stems if s not in paired]
        if unknown:
            survey.errors.append(f"split list {path} names {len(unknown)} image(s) without an image/mask pair: "
                                 f"{list_some(unknown)}")
        out[name] = [(images[s], masks[f"{prefix}{s}{suffix}"]) for s in stems if s in paired]
    return out


def colour_table_from(survey: Survey, path: Path) -> Path:
    """A CSV class table of the colours found in colour masks, most frequent first (name them, then use)."""
    if not survey.colour_masks:
        raise DataError("--write-classes: no colour masks were found (the masks hold class ids already)")
    colours = [(k >> 16, (k >> 8) & 255, k & 255) for k, _ in survey.value_pixels.most_common()]
    return write_class_table(Path(path), colours)
