"""`build_dataset`: a DataConfig and a split name -> a ready dataset."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

from .base import DataError, SegmentationDataset
from .camvid import CamVid
from .folder import FolderDataset
from .transforms import build_transform


def _build_camvid(cfg: Any, split: str, train: bool) -> SegmentationDataset:
    # CamVid's classes and palette are fixed; class_names/palette in the
    # config are for folder data sets.
    return CamVid(
        getattr(cfg, "root", None),
        split,
        transform=build_transform(cfg, train),
        ignore_index=int(getattr(cfg, "ignore_index", 255)),
    )


def _build_folder(cfg: Any, split: str, train: bool) -> SegmentationDataset:
    root = getattr(cfg, "root", None)
    if not root:
        raise DataError("the folder dataset needs data.root (or --data-root): the folder holding images/ and masks/")
    class_names = list(getattr(cfg, "class_names", None) or [])
    if not class_names:
        raise DataError("the folder dataset needs data.class_names: one name per class id 0..N-1")
    splits = dict(getattr(cfg, "splits", None) or {})
    if splits and split not in splits:
        raise DataError(f"split {split!r} is not in data.splits; available: {sorted(splits)}")
    image_dir = getattr(cfg, "image_dir", "images")
    if not splits and (Path(root).expanduser() / f"{split}.txt").is_file():
        splits[split] = f"{split}.txt"  # the lists `imseg split` writes
    if split not in splits and "{split}" not in image_dir and split != getattr(cfg, "train_split", "train"):
        warnings.warn(
            f"split {split!r} of {root} has no list (data.splits, or {split}.txt in the data folder) and no "
            f"images/{{split}} folder: it is every image of the folder, the training images included, so its "
            f"scores measure fit, not generalisation; `imseg split {root}` writes train/val/test lists",
            UserWarning, stacklevel=2)
    return FolderDataset(
        root,
        class_names,
        image_dir=image_dir,
        mask_dir=getattr(cfg, "mask_dir", "masks"),
        split=split,
        # No split lists: every split is the whole folder (or images/{split}), with the warning above.
        split_file=splits.get(split),
        palette=getattr(cfg, "palette", None) or None,
        ignore_index=int(getattr(cfg, "ignore_index", 255)),
        transform=build_transform(cfg, train),
    )


DATASETS: dict[str, Callable[[Any, str, bool], SegmentationDataset]] = {
    "camvid": _build_camvid,
    "folder": _build_folder,
}


def build_dataset(cfg: Any, split: str, train: bool) -> SegmentationDataset:
    """The dataset ``cfg.name`` for ``split``, with training augmentation if ``train``.

    ``cfg`` is a DataConfig or anything with the same attributes (a
    SimpleNamespace in tests). Evaluation datasets (``train=False``) return
    full-size samples without augmentation.
    """
    name = getattr(cfg, "name", "camvid")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (data.name); choose one of {sorted(DATASETS)}")
    return DATASETS[name](cfg, split, train)
