"""The standard benchmarks, on tiny fixtures laid out exactly like the downloads, decoded pixel for pixel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imseg.config import data_config
from imseg.data import DataError, build_dataset
from imseg.data.benchmark_classes import VOC_PALETTE, voc_colormap


def _jpg(path: Path, h: int = 8, w: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def _png(path: Path, values: np.ndarray, palette: list | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        im.putpalette([v for c in palette for v in c])
    im.save(path)


def _ds(name: str, root: Path, split: str, **data):
    return build_dataset(data_config({"name": name, "root": str(root), **data}), split, train=False)


ROW = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]] * 8)


def _voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    labels = np.zeros((8, 12), int)
    labels[:, 4:8], labels[:, 8:] = 15, 255  # person, and the border band
    for stem in ("2007_000032", "2007_000033"):
        _jpg(voc / "JPEGImages" / f"{stem}.jpg")
        _png(voc / "SegmentationClass" / f"{stem}.png", labels, voc_colormap())  # palette PNG, as the devkit's
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    return labels


def test_voc_reads_palette_pngs_as_indices_with_255_ignored(tmp_path):
    labels = _voc(tmp_path)
    ds = _ds("voc", tmp_path, "train")  # data.root may be the folder above VOCdevkit
    assert ds.num_classes == 21 and ds.class_names[15] == "person" and ds.palette == list(VOC_PALETTE)
    np.testing.assert_array_equal(ds[0][1].numpy(), labels)
    assert len(_ds("voc", tmp_path / "VOCdevkit" / "VOC2012", "val")) == 1


def test_voc_train_aug_adds_sbd_mat_class_maps_outside_voc_train_and_val(tmp_path):
    from scipy.io import savemat

    _voc(tmp_path)
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    sbd_map = np.tile(np.arange(12) % 21, (8, 1)).astype(np.uint8)
    for stem in ("2007_000033", "2008_000001", "2008_000002"):  # 2007_000033 is VOC val: left out
        _jpg(sbd / "img" / f"{stem}.jpg")
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        savemat(sbd / "cls" / f"{stem}.mat", {"GTcls": {"Segmentation": sbd_map, "CategoriesPresent": [1]}})
    (sbd / "train.txt").write_text("2008_000002\n2007_000033\n")
    (sbd / "val.txt").write_text("2008_000001\n")
    ds = _ds("voc", tmp_path, "train_aug", sbd_root=str(tmp_path / "benchmark_RELEASE"))
    assert [p.name for p, _ in ds.files] == ["2007_000032.jpg", "2008_000001.jpg", "2008_000002.jpg"]
    np.testing.assert_array_equal(ds[1][1].numpy(), sbd_map)
    with pytest.raises(DataError, match=r"train_aug needs data\.sbd_root"):
        _ds("voc", tmp_path, "train_aug")


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    ids = np.array([[7, 8, 26, 0, 24, 33, 9, 1, 23, 21, 11, 17]] * 8)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        _jpg(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        _png(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    ds = _ds("cityscapes", tmp_path, "train")
    assert ds.num_classes == 19 and ds.class_names[13] == "car" and ds.palette[0] == (128, 64, 128)
    np.testing.assert_array_equal(ds[0][1].numpy()[0], [0, 1, 13, 255, 11, 18, 255, 255, 10, 8, 2, 5])


def test_ade20k_reduces_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _jpg(root / "images" / "validation" / "ADE_val_00000001.jpg")
    raw = np.array([[0, 1, 2, 150, 0, 13, 7, 1, 1, 1, 1, 1]] * 8)
    _png(root / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    ds = _ds("ade20k", tmp_path, "val")
    assert ds.num_classes == 150 and ds.class_names[12] == "person"
    np.testing.assert_array_equal(ds[0][1].numpy()[0], [255, 0, 1, 149, 255, 12, 6, 0, 0, 0, 0, 0])


def test_coco_stuff_maps_the_171_used_values_and_refuses_an_unused_one(tmp_path):
    _jpg(tmp_path / "images" / "val2017" / "000000000139.jpg")
    raw = np.array([[0, 10, 12, 66, 91, 181, 255, 0, 0, 0, 0, 0]] * 8)
    _png(tmp_path / "annotations" / "val2017" / "000000000139.png", raw)
    ds = _ds("coco_stuff", tmp_path, "val")
    assert ds.num_classes == 171 and ds.class_names[60] == "dining table" and ds.class_names[80] == "banner"
    np.testing.assert_array_equal(ds[0][1].numpy()[0], [0, 10, 11, 60, 80, 170, 255, 0, 0, 0, 0, 0])
    raw[0, 0] = 11  # "street sign": a COCO thing id with no masks
    _png(tmp_path / "annotations" / "val2017" / "000000000139.png", raw)
    with pytest.raises(DataError, match=r"000000000139\.png contains label values 11 that the dataset's label table does not define"):
        ds[0]


@pytest.mark.parametrize("name, expected", [
    ("voc", r"is not laid out as Pascal VOC 2012: no SegmentationClass/ .*JPEGImages"),
    ("cityscapes", r"is not laid out as Cityscapes: no leftImg8bit/ .*gtFine_labelIds"),
    ("ade20k", r"is not laid out as ADE20K: no annotations/ .*ADEChallengeData2016"),
    ("coco_stuff", r"is not laid out as COCO-Stuff 164k: no annotations/ .*stuffthingmaps"),
])
def test_a_folder_in_another_layout_names_the_expected_one(tmp_path, name, expected):
    _jpg(tmp_path / "images" / "x.jpg")
    if name == "coco_stuff" or name == "ade20k":
        (tmp_path / "images").rename(tmp_path / "pictures")
    with pytest.raises(DataError, match=expected):
        _ds(name, tmp_path, "train")
