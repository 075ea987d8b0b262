"""`build_dataset`: a DataConfig and a split name -> a ready dataset."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from .base import DataError, SegmentationDataset
from .benchmarks import BENCHMARKS
from .camvid import CamVid
from .classes import ClassTable, read_class_table
from .folder import FolderDataset
from .palette import default_palette
from .transforms import build_transform

if TYPE_CHECKING:
    from imseg.config import DataConfig


def _build_camvid(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    # CamVid's classes and palette are fixed; class_names/palette in the
    # config are for folder data sets.
    return CamVid(
        cfg.root,
        split,
        transform=build_transform(cfg, train),
        ignore_index=cfg.ignore_index,
    )


def _classes(cfg: DataConfig, root: str) -> tuple[list[str], list | None, ClassTable | None]:
    """Class names, palette and colour table: from ``data.classes`` if set, else ``data.class_names``."""
    if cfg.classes is None:
        if not cfg.class_names:
            raise DataError("the folder dataset needs data.class_names (one name per class id 0..N-1), or "
                            "data.classes: a class table of names and mask colours")
        return list(cfg.class_names), cfg.palette or None, None
    table = read_class_table(cfg.classes, root)
    if cfg.class_names and list(cfg.class_names) != list(table.names):
        raise DataError(f"data.class_names {cfg.class_names} differ from the names of {table.source} "
                        f"{list(table.names)}: give one of them")
    return list(table.names), [list(c) for c in table.colours], table


def _build_folder(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    root = cfg.root
    if not root:
        raise DataError("the folder dataset needs data.root (or --data-root): the folder holding images/ and masks/")
    class_names, palette, table = _classes(cfg, root)
    splits = dict(cfg.splits or {})
    if splits and split not in splits:
        raise DataError(f"split {split!r} is not in data.splits; available: {sorted(splits)}")
    image_dir = cfg.image_dir
    if not splits and (Path(root).expanduser() / f"{split}.txt").is_file():
        splits[split] = f"{split}.txt"  # the lists `imseg split` writes
    if split not in splits and "{split}" not in image_dir and split != cfg.train_split:
        warnings.warn(
            f"split {split!r} of {root} has no list (data.splits, or {split}.txt in the data folder) and no "
            f"images/{{split}} folder: it is every image of the folder, the training images included, so its "
            f"scores measure fit, not generalisation; `imseg split {root}` writes train/val/test lists",
            UserWarning, stacklevel=2)
    return FolderDataset(
        root,
        class_names,
        image_dir=image_dir,
        mask_dir=cfg.mask_dir,
        split=split,
        # No split lists: every split is the whole folder (or images/{split}), with the warning above.
        split_file=splits.get(split),
        palette=palette,
        ignore_index=cfg.ignore_index,
        transform=build_transform(cfg, train),
        mask_prefix=cfg.mask_prefix,
        mask_suffix=cfg.mask_suffix,
        label_map=cfg.label_map,
        reduce_zero_label=cfg.reduce_zero_label,
        colour_table=table,
        unknown_colors=cfg.unknown_colors,
    )


def _build_raster(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    from .folder import _index_by_stem, _resolve_stem, read_stem_list
    from .raster import RASTER_EXTENSIONS, RasterScenes

    root = Path(cfg.root or "").expanduser()
    if not cfg.root or not root.is_dir():
        raise DataError(f"the raster dataset needs data.root: a folder holding {cfg.image_dir}/ and {cfg.mask_dir}/")
    class_names, palette, table = _classes(cfg, str(root))
    folders = [root / cfg.image_dir.format(split=split), root / cfg.mask_dir.format(split=split)]
    for folder, key in zip(folders, ("image_dir", "mask_dir")):
        if not folder.is_dir():
            raise DataError(f"{key} folder {folder} does not exist (set data.{key}, relative to data.root)")
    images, labels = (_index_by_stem(f, RASTER_EXTENSIONS, what) for f, what in zip(folders, ("image", "label")))
    list_file = (cfg.splits or {}).get(split) or (f"{split}.txt" if (root / f"{split}.txt").is_file() else None)
    stems = [_resolve_stem(line, images) for line in read_stem_list(root / list_file)] if list_file else sorted(images)
    missing = [s for s in stems if s not in images or s not in labels]
    if missing or not stems:
        raise DataError(f"raster split {split!r}: {len(missing)} scene(s) lack an image or label raster in "
                        f"{folders[0]} / {folders[1]}: {missing[:5]}" if missing else f"no rasters in {folders[0]}")
    return RasterScenes([(images[s], labels[s]) for s in stems], class_names, palette or default_palette(len(class_names)),
                        window=cfg.crop_size,
                        train=train, windows_per_epoch=cfg.windows_per_epoch, ignore_index=cfg.ignore_index,
                        label_map=cfg.label_map, reduce_zero_label=cfg.reduce_zero_label, colour_table=table,
                        unknown_colors=cfg.unknown_colors)


DATASETS: dict[str, Callable[["DataConfig", str, bool], SegmentationDataset]] = {
    "camvid": _build_camvid,
    "folder": _build_folder,
    "raster": _build_raster,
    **BENCHMARKS,
}


def build_dataset(cfg: DataConfig | Mapping, split: str, train: bool) -> SegmentationDataset:
    """The dataset ``cfg.name`` for ``split``, with training augmentation if ``train``.

    ``cfg`` is the config's `DataConfig` (a mapping of its fields is checked
    and converted, for the Python API). Evaluation datasets (``train=False``)
    return full-size samples without augmentation.
    """
    from imseg.config import DataConfig, data_config

    if isinstance(cfg, Mapping):
        cfg = data_config(cfg)
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"build_dataset takes a DataConfig or a mapping of its fields, got {type(cfg).__name__}")
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r} (data.name); choose one of {sorted(DATASETS)}")
    return DATASETS[cfg.name](cfg, split, train)


def resolve_sample_cache(cfg: DataConfig) -> bool:
    """Whether training keeps decoded samples in memory (``data.cache``; None: when ``num_workers`` is 0).

    A DataLoader worker is a separate process that ends with its epoch, so
    its cache would be refilled every epoch, once per worker: only the
    in-process loader (``num_workers: 0``, the CPU recipes' choice) keeps it.
    """
    if cfg.cache is None:
        return cfg.num_workers == 0
    if cfg.cache and cfg.num_workers > 0:
        raise DataError(f"data.cache: true needs data.num_workers: 0 (got {cfg.num_workers}): each DataLoader "
                        "worker would decode into its own copy and lose it at the end of every epoch")
    return bool(cfg.cache)
