"""`imseg check-data`: every problem it promises to find, found and named; a clean data set passes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imseg.config import data_config
from imseg.data import build_dataset
from tests.helpers import run_cli

RED, GREEN = (200, 0, 0), (0, 160, 0)


def _pair(root: Path, stem: str, labels: np.ndarray, colour: bool = False, suffix: str = "",
          pixel: int = 0) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.full((*labels.shape, 3), pixel, np.uint8)).save(root / "images" / f"{stem}.png")
    if colour:
        rgb = np.zeros((*labels.shape, 3), np.uint8)
        rgb[labels == 0], rgb[labels == 1] = RED, GREEN
        Image.fromarray(rgb).save(root / "masks" / f"{stem}{suffix}.png")
    else:
        Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{stem}{suffix}.png")


def _halves(h: int = 8, w: int = 12) -> np.ndarray:
    labels = np.zeros((h, w), int)
    labels[:, w // 2:] = 1
    return labels


def test_colour_masks_get_a_class_table_written_that_then_decodes_them(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        _pair(root, f"f{i}", _halves(), colour=True, suffix="_L", pixel=10 * i)
    code, out, err = run_cli("check-data", root, "--mask-suffix", "_L", "--out", tmp_path / "report",
                             "--write-classes", tmp_path / "classes.csv")
    assert code == 0, out + err
    assert "mask encodings: {'colour': 3}" in out
    table = (tmp_path / "classes.csv").read_text().splitlines()
    assert table[0] == "name,r,g,b" and sorted(table[1:]) == ["class_0,0,160,0", "class_1,200,0,0"]
    ds = build_dataset(data_config({"name": "folder", "root": str(root), "classes": str(tmp_path / "classes.csv"),
                                    "mask_suffix": "_L"}), "train", train=False)
    assert set(np.unique(ds[0][1].numpy()).tolist()) == {0, 1}
    record = json.loads((tmp_path / "report" / "check-data.json").read_text())
    assert record["splits"] == {"all": 3} and (tmp_path / "report" / "class_share.png").stat().st_size > 0


def test_every_kind_of_problem_is_found_named_and_exits_1(tmp_path):
    root = tmp_path / "data"
    _pair(root, "a", _halves(), pixel=1)
    _pair(root, "b", _halves(), pixel=2)
    _pair(root, "c", _halves() * 7, pixel=3)  # value 7: no such class among 2
    Image.fromarray(np.full((8, 12, 3), 1, np.uint8)).save(root / "images" / "a_copy.png")  # a's bytes again?
    Image.open(root / "images" / "a.png").save(root / "images" / "a_copy.png")
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(root / "masks" / "a_copy.png")
    Image.fromarray(np.zeros((6, 12), np.uint8)).save(root / "masks" / "b.png")  # wrong size
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(root / "images" / "lonely.png")  # no mask
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(root / "masks" / "orphan.png")  # no image
    (root / "train.txt").write_text("a\nb\nc\n")
    (root / "val.txt").write_text("a_copy\n")
    cfg = {"data": {"name": "folder", "root": str(root), "class_names": ["x", "y"],
                    "splits": {"train": "train.txt", "val": "val.txt"}, "test_split": "val"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    code, out, _ = run_cli("check-data", root, "--out", tmp_path / "r1")
    assert code == 1
    assert "have no mask" in out and "lonely.png" in out and "orphan.png" in out and "no image" in out
    assert "b.png is 12x6 (WxH) but its image is 12x8" in out
    assert "the same image is in splits ['train', 'val']" in out and "a_copy.png" in out

    code, out, _ = run_cli("check-data", tmp_path / "c.yaml", "--out", tmp_path / "r2")
    assert code == 1 and "c.png: values 7 (48 px) are neither a class id (0..1) nor ignore_index (255)" in out
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # it only reads


def test_a_one_based_index_folder_gets_the_reduce_zero_label_guess(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        labels = _halves() + 1  # classes 1..2, and 0 for unlabelled
        labels[0] = 0
        _pair(root, f"ade{i}", labels)
    cfg = {"data": {"name": "folder", "root": str(root), "class_names": ["a", "b"], "val_split": "train",
                    "test_split": "train"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, out, _ = run_cli("check-data", tmp_path / "c.yaml", "--out", tmp_path / "r")
    assert code == 1  # value 2 is no class of two until reduce_zero_label
    assert "reduce_zero_label: True" in out and "values span 0..2 for 2 classes" in out
    cfg["data"]["reduce_zero_label"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, out, _ = run_cli("check-data", tmp_path / "c.yaml", "--out", tmp_path / "r")
    assert code == 0, out
    assert "class_weights_median_frequency: {0: 1.0, 1: 1.0}" in out


def test_multi_band_16_bit_tiffs_are_read_and_their_band_statistics_reported(tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="the [geo] extra (rasterio) is not installed")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    bands = rng.integers(1000, 30000, (4, 8, 12)).astype(np.uint16)  # RGB + near-infrared, 16 bits
    for stem in ("s0", "s1"):
        with rasterio.open(root / "images" / f"{stem}.tif", "w", driver="GTiff", height=8, width=12, count=4,
                           dtype="uint16", crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 0, 1, 1)) as dst:
            dst.write(bands)
        Image.fromarray(_halves().astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    code, out, err = run_cli("check-data", root, "--out", tmp_path / "report")
    assert code == 0, out + err
    record = json.loads((tmp_path / "report" / "check-data.json").read_text())
    assert record["image_modes"] == {"4-band uint16 TIFF": 2} and not record["errors"]
    mean = record["suggestions"]["band_mean"]
    # every second row and column, as the doctor samples them; 16-bit values, never squeezed into 0-255
    np.testing.assert_allclose(mean, bands[:, ::2, ::2].reshape(4, -1).mean(1), rtol=1e-4)
