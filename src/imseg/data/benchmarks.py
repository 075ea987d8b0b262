"""The standard benchmarks in their official layouts: Pascal VOC 2012 (+ SBD), Cityscapes, ADE20K, COCO-Stuff.

Each reads the files exactly as the download unpacks them and decodes the
labels the way the benchmark defines them (DATASETS.md in ../shared has
the layouts, encodings and sources):

* ``voc``: ``VOCdevkit/VOC2012``: ``JPEGImages``, palette PNGs in
  ``SegmentationClass`` (the stored index is the class; 255 borders are
  ignored), lists in ``ImageSets/Segmentation``. Split ``train_aug`` adds
  SBD (``data.sbd_root``: ``benchmark_RELEASE``; its ``cls/*.mat`` class
  maps): VOC train plus every SBD image outside VOC train and val, 10,582
  images on the full data.
* ``cityscapes``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, label ids mapped to the 19
  train ids (255 ignored).
* ``ade20k``: ``ADEChallengeData2016/images/{training,validation}`` and
  ``annotations/...``; 0 is "other objects" (ignored), k is class k-1.
* ``coco_stuff``: ``images/{train2017,val2017}`` and the stuffthingmaps in
  ``annotations/...``; the 171 used values map to train ids 0..170.

A folder that is not laid out as expected fails naming the folder it looked
for and the layout it expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from . import benchmark_classes as bc
from .base import DataError, SegmentationDataset, list_some
from .palette import default_palette
from .transforms import build_transform

if TYPE_CHECKING:
    from imseg.config import DataConfig


def _root(cfg: DataConfig, name: str, inner: Iterable[str], marker: str, layout: str) -> Path:
    """``data.root``, or the folder under it named in ``inner``, whichever holds ``marker``."""
    if not cfg.root:
        raise DataError(f"the {name} dataset needs data.root (or --data-root): {layout}")
    root = Path(cfg.root).expanduser()
    for candidate in [root, *(root / sub for sub in inner)]:
        if (candidate / marker).is_dir():
            return candidate
    raise DataError(f"{root} is not laid out as {name}: no {marker}/ folder in it; expected {layout}")


def _read_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{what} split list {path} does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _existing(pairs: list[tuple[Path, Path]], what: str) -> list[tuple[Path, Path]]:
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} listed file(s) are missing: {list_some(missing)}")
    if not pairs:
        raise DataError(f"{what}: the split holds no images")
    return pairs


def _dataset(cfg: DataConfig, train: bool, pairs, names, palette, **labels) -> SegmentationDataset:
    return SegmentationDataset(pairs, names, palette, ignore_index=cfg.ignore_index,
                               transform=build_transform(cfg, train), **labels)


# ------------------------------------------------------------------ Pascal VOC 2012 and SBD

VOC_LAYOUT = ("VOCdevkit/VOC2012 with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt "
              "(VOCtrainval_11-May-2012.tar)")


def _voc_pairs(voc: Path, split: str) -> list[tuple[Path, Path]]:
    stems = _read_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "VOC")
    return [(voc / "JPEGImages" / f"{s}.jpg", voc / "SegmentationClass" / f"{s}.png") for s in stems]


def _sbd_extra_pairs(cfg: DataConfig, voc: Path) -> list[tuple[Path, Path]]:
    """SBD images in neither VOC train nor VOC val (mmseg's aug.txt), sorted for a reproducible order."""
    if not cfg.sbd_root:
        raise DataError("split train_aug needs data.sbd_root: the SBD folder benchmark_RELEASE (benchmark.tgz), "
                        "holding dataset/img, dataset/cls and dataset/{train,val}.txt")
    sbd = Path(cfg.sbd_root).expanduser()
    sbd = sbd / "dataset" if (sbd / "dataset").is_dir() else sbd
    if not (sbd / "cls").is_dir():
        raise DataError(f"data.sbd_root {cfg.sbd_root} has no dataset/cls/ folder: expected benchmark_RELEASE "
                        f"with dataset/img, dataset/cls and dataset/{{train,val}}.txt")
    voc_stems = set(_read_list(voc / "ImageSets/Segmentation/train.txt", "VOC"))
    voc_stems |= set(_read_list(voc / "ImageSets/Segmentation/val.txt", "VOC"))
    sbd_stems = set(_read_list(sbd / "train.txt", "SBD")) | set(_read_list(sbd / "val.txt", "SBD"))
    return [(sbd / "img" / f"{s}.jpg", sbd / "cls" / f"{s}.mat") for s in sorted(sbd_stems - voc_stems)]


def build_voc(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    voc = _root(cfg, "Pascal VOC 2012", ("VOC2012", "VOCdevkit/VOC2012"), "SegmentationClass", VOC_LAYOUT)
    if split == "train_aug":
        pairs = _voc_pairs(voc, "train") + _sbd_extra_pairs(cfg, voc)
    else:
        pairs = _voc_pairs(voc, split)
    borders = {255: cfg.ignore_index} if cfg.ignore_index != 255 else {}  # VOC draws borders and void as 255
    return _dataset(cfg, train, _existing(pairs, f"VOC split {split!r}"), bc.VOC_CLASSES, bc.VOC_PALETTE,
                    label_map=borders)


# ------------------------------------------------------------------ Cityscapes

CITYSCAPES_LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"


def build_cityscapes(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    root = _root(cfg, "Cityscapes", ("cityscapes",), "leftImg8bit", CITYSCAPES_LAYOUT)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"Cityscapes split {split!r}: no images in {root / 'leftImg8bit' / split}/<city>/ "
                        f"(expected {CITYSCAPES_LAYOUT})")
    pairs = [(p, root / "gtFine" / split / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
             for p in images]
    return _dataset(cfg, train, _existing(pairs, f"Cityscapes split {split!r}"), bc.CITYSCAPES_CLASSES,
                    bc.CITYSCAPES_PALETTE, label_map=_with_ignore(bc.CITYSCAPES_ID_TO_TRAIN_ID, cfg.ignore_index), strict_label_map=True)


def _with_ignore(mapping: dict[int, int], ignore_index: int) -> dict[int, int]:
    return {k: (ignore_index if v == 255 else v) for k, v in mapping.items()}


# ------------------------------------------------------------------ ADE20K and COCO-Stuff

ADE20K_LAYOUT = "ADEChallengeData2016 with images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"
COCO_STUFF_LAYOUT = "images/{train2017,val2017}/*.jpg and annotations/{train2017,val2017}/*.png (stuffthingmaps)"


def _stem_pairs(image_dir: Path, mask_dir: Path, what: str) -> list[tuple[Path, Path]]:
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise DataError(f"{what}: no images (*.jpg) in {image_dir}")
    return _existing([(p, mask_dir / f"{p.stem}.png") for p in images], what)


def build_ade20k(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    root = _root(cfg, "ADE20K", ("ADEChallengeData2016",), "annotations", ADE20K_LAYOUT)
    folder = {"train": "training", "val": "validation"}.get(split, split)
    pairs = _stem_pairs(root / "images" / folder, root / "annotations" / folder, f"ADE20K split {split!r}")
    return _dataset(cfg, train, pairs, bc.ADE20K_CLASSES, default_palette(len(bc.ADE20K_CLASSES)),
                    reduce_zero_label=True)


def build_coco_stuff(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    root = _root(cfg, "COCO-Stuff 164k", ("cocostuff", "coco_stuff164k"), "annotations", COCO_STUFF_LAYOUT)
    folder = {"train": "train2017", "val": "val2017"}.get(split, split)
    pairs = _stem_pairs(root / "images" / folder, root / "annotations" / folder, f"COCO-Stuff split {split!r}")
    return _dataset(cfg, train, pairs, bc.COCO_STUFF_CLASSES, default_palette(len(bc.COCO_STUFF_CLASSES)),
                    label_map={**bc.COCO_STUFF_PNG_TO_TRAIN_ID, 255: cfg.ignore_index}, strict_label_map=True)


BENCHMARKS: dict[str, Callable[["DataConfig", str, bool], SegmentationDataset]] = {
    "voc": build_voc, "cityscapes": build_cityscapes, "ade20k": build_ade20k, "coco_stuff": build_coco_stuff,
}
