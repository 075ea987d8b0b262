"""Data as it comes: colour masks with class tables, mask suffixes, label conventions, odd images.

Each fixture is laid out the way the format is met in the wild, and the
decoded labels are checked pixel for pixel.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imseg.config import data_config
from imseg.data import DataError, build_dataset
from imseg.data.classes import read_class_table
from tests.helpers import run_cli

SKY, ROAD, CAR, VOID = (128, 128, 128), (128, 64, 128), (64, 0, 128), (0, 0, 0)
CSV = "name, r, g, b, ignore\nsky, 128, 128, 128\nroad, 128, 64, 128\ncar, 64, 0, 128\nVoid, 0, 0, 0, yes\n"


def _labels(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """Class ids 0-2 in blocks, and a band of 255 (void)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 3, (h // 8, w // 8)).repeat(8, 0).repeat(8, 1)
    ids[:, :3] = 255
    return ids


def _colour_folder(root: Path, n: int = 3, suffix: str = "_L") -> tuple[Path, list[np.ndarray]]:
    """images/<stem>.png and masks/<stem><suffix>.png drawn in the CSV's colours, plus classes.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lut = {0: SKY, 1: ROAD, 2: CAR, 255: VOID}
    truths = []
    for i in range(n):
        ids = _labels(seed=i)
        colour = np.zeros((*ids.shape, 3), np.uint8)
        for k, c in lut.items():
            colour[ids == k] = c
        Image.fromarray(np.full((*ids.shape, 3), 40 * i, np.uint8)).save(root / "images" / f"f.{i:04d}.png")
        Image.fromarray(colour).save(root / "masks" / f"f.{i:04d}{suffix}.png")
        truths.append(ids)
    (root / "classes.csv").write_text(CSV)
    return root, truths


def _folder(root: Path, **data) -> object:
    return build_dataset(data_config({"name": "folder", "root": str(root), **data}), "train", train=False)


def test_colour_masks_decode_through_a_csv_table_pixel_for_pixel(tmp_path):
    root, truths = _colour_folder(tmp_path)
    ds = _folder(root, classes="classes.csv", mask_suffix="_L")
    assert ds.class_names == ["sky", "road", "car"] and ds.palette == [SKY, ROAD, CAR]
    for i, truth in enumerate(truths):
        np.testing.assert_array_equal(ds[i][1].numpy(), truth)


def test_yaml_json_and_inline_tables_equal_the_csv(tmp_path):
    entries = [{"name": "sky", "color": list(SKY)}, {"name": "road", "color": list(ROAD)},
               {"name": "car", "colour": list(CAR)}, {"name": "Void", "color": [0, 0, 0], "ignore": True}]
    (tmp_path / "c.json").write_text(json.dumps(entries))
    (tmp_path / "c.yaml").write_text("classes:\n" + "".join(
        f"  - {{name: {e['name']}, color: {e.get('color', e.get('colour'))}, ignore: {e.get('ignore', False)}}}\n"
        for e in entries))
    (tmp_path / "c.csv").write_text(CSV)
    tables = [read_class_table(tmp_path / f) for f in ("c.csv", "c.json", "c.yaml")] + [read_class_table(entries)]
    assert len({(t.names, t.colours, t.ignore_colours) for t in tables}) == 1
    assert tables[0].ignore_colours == (VOID,)


def test_a_colour_the_table_lacks_is_named_with_its_pixel_count_unless_ignored(tmp_path):
    root, truths = _colour_folder(tmp_path, n=1)
    mask = np.asarray(Image.open(root / "masks" / "f.0000_L.png")).copy()
    mask[0, 5:9] = (250, 0, 0)  # 4 stray red pixels
    Image.fromarray(mask).save(root / "masks" / "f.0000_L.png")
    with pytest.raises(DataError, match=r"f\.0000_L\.png has 1 colour\(s\) that class table .*classes\.csv does not "
                                        r"list: \(250, 0, 0\) \(4 px\).*unknown_colors: ignore"):
        _folder(root, classes="classes.csv", mask_suffix="_L")[0]
    labels = _folder(root, classes="classes.csv", mask_suffix="_L", unknown_colors="ignore")[0][1].numpy()
    assert (labels[0, 5:9] == 255).all() and (labels[1:] == truths[0][1:]).all()


def test_a_colour_mask_without_a_table_names_its_colours_and_data_classes(tmp_path):
    root, _ = _colour_folder(tmp_path, n=1, suffix="")
    with pytest.raises(DataError, match=r"RGB colour mask .*4 colours: .*\(128, 64, 128\).*set data\.classes"):
        _folder(root, class_names=["sky", "road", "car"])[0]


def test_decoded_masks_are_cached_so_an_epoch_does_not_decode_again(tmp_path, monkeypatch):
    import imseg.data.base as base

    root, _ = _colour_folder(tmp_path, n=2)
    ds = _folder(root, classes="classes.csv", mask_suffix="_L")
    calls = []
    real = base.load_mask_colours
    monkeypatch.setattr(base, "load_mask_colours", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        [ds[i] for i in range(len(ds))]
    assert len(calls) == 2


def test_an_unpaired_image_shows_the_mask_name_it_looked_for_and_the_suffix_key(tmp_path):
    root, _ = _colour_folder(tmp_path, n=1)
    with pytest.raises(DataError, match=r"looked for f\.0000\{\.png.*named like f\.0000_L.*data\.mask_suffix"):
        _folder(root, classes="classes.csv")


def test_split_lists_keep_dots_and_spaces_and_read_image_mask_lines(tmp_path):
    root, _ = _colour_folder(tmp_path, n=3)
    Image.open(root / "images" / "f.0001.png").save(root / "images" / "street 1.png")
    Image.open(root / "masks" / "f.0001_L.png").save(root / "masks" / "street 1_L.png")
    (root / "train.txt").write_text("f.0000\nstreet 1\nimages/f.0002.png masks/f.0002_L.png\n")
    ds = _folder(root, classes="classes.csv", mask_suffix="_L", splits={"train": "train.txt"})
    assert [p.name for p, _ in ds.files] == ["f.0000.png", "street 1.png", "f.0002.png"]


def _index_folder(root: Path, raw: np.ndarray) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((*raw.shape, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(raw.astype(np.uint8)).save(root / "masks" / "a.png")
    return root


def test_reduce_zero_label_is_the_ade20k_convention(tmp_path):
    raw = np.array([[0, 1, 2, 150]] * 4)
    root = _index_folder(tmp_path, raw)
    labels = _folder(root, class_names=[f"c{i}" for i in range(150)], reduce_zero_label=True)[0][1].numpy()
    np.testing.assert_array_equal(labels[0], [255, 0, 1, 149])


def test_a_label_map_turns_cityscapes_label_ids_into_train_ids(tmp_path):
    raw = np.array([[7, 8, 26, 0]] * 4)  # road, sidewalk, car, unlabeled
    root = _index_folder(tmp_path, raw)
    labels = _folder(root, class_names=[f"c{i}" for i in range(19)],
                     label_map={7: 0, 8: 1, 26: 13, 0: 255})[0][1].numpy()
    np.testing.assert_array_equal(labels[0], [0, 1, 13, 255])
    with pytest.raises(DataError, match="label_map and data.reduce_zero_label both"):
        _folder(root, class_names=["a"], label_map={7: 0}, reduce_zero_label=True)


def test_a_phone_photo_is_read_upright_as_its_mask_was_drawn(tmp_path):
    raw = np.zeros((16, 24), np.uint8)
    raw[:4] = 1  # the top of the upright picture
    root = _index_folder(tmp_path, raw)
    upright = np.zeros((16, 24, 3), np.uint8)
    upright[:4] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's sideways pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to view
    stored.save(root / "images" / "a.jpg", exif=exif, quality=100)
    image, mask = _folder(root, class_names=["a", "b"])[0]
    assert tuple(image.shape[1:]) == mask.shape == (16, 24)
    assert image[:, :4].float().mean() > 200 and image[:, 8:].float().mean() < 50


def test_rgba_pngs_drop_alpha_saying_so_once(tmp_path):
    root = _index_folder(tmp_path, np.zeros((8, 8)))
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8, 4), 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "images" / "a.jpg").unlink()
    ds = _folder(root, class_names=["a"])
    with pytest.warns(UserWarning, match=r"a\.png has an alpha channel: it is dropped") as record:
        assert ds[0][0].shape == (3, 8, 8) and ds[1][0].shape == (3, 8, 8)
    assert sum("alpha" in str(w.message) for w in record) == 1


def test_16_bit_and_multi_band_images_keep_their_values_and_bands(tmp_path):
    """A 16-bit grey PNG was clipped to 255; a 4-band TIFF lost band 4."""
    root = _index_folder(tmp_path, np.zeros((8, 8)))
    (root / "images" / "a.jpg").unlink()
    grey = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # up to 63000
    Image.fromarray(grey).save(root / "images" / "a.png")
    ds = _folder(root, class_names=["a"])
    image, _ = ds[0]
    assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
    np.testing.assert_array_equal(image[0].numpy(), grey)
    assert ds.num_channels == 1
    pre = ds.band_preprocessing()
    assert pre.scale == 1.0 and pre.mean[0] > 255  # statistics in the data's units, not /255
    rasterio = pytest.importorskip("rasterio")
    bands = np.stack([grey, grey // 2, grey // 3, grey // 4])
    (root / "images" / "a.png").unlink()
    with rasterio.open(root / "images" / "a.tif", "w", driver="GTiff", height=8, width=8, count=4,
                       dtype="uint16") as dst:
        dst.write(bands)
    image, _ = _folder(root, class_names=["a"])[0]
    assert image.shape == (4, 8, 8)
    np.testing.assert_array_equal(image.numpy(), bands)


def test_a_colour_mask_folder_trains_evaluates_and_predicts_end_to_end(tmp_path):
    """The new user's case: photos, `_L` colour masks, a CSV class table."""
    import yaml

    root, _ = _colour_folder(tmp_path / "data", n=4)
    (root / "train.txt").write_text("f.0000\nf.0001\nf.0002\n")
    (root / "val.txt").write_text("f.0003\n")
    cfg = {"model": {"name": "unet_original", "args": {"base_channels": 4}},
           "data": {"name": "folder", "root": str(root), "classes": "classes.csv", "mask_suffix": "_L",
                    "splits": {"train": "train.txt", "val": "val.txt"}, "crop_size": [24, 32],
                    "scale_range": [1.0, 1.0], "batch_size": 3, "num_workers": 0},
           "train": {"epochs": 1, "out_dir": str(tmp_path / "run"), "progress": False, "log_every": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", tmp_path / "cfg.yaml")
    assert code == 0, err
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    code, out, err = run_cli("eval", best, "--split", "val", "--no-report")
    assert code == 0 and "car" in out, err
    code, _, err = run_cli("predict", best, root / "images" / "f.0003.png", "--out", tmp_path / "masks")
    assert code == 0, err
    predicted = Image.open(tmp_path / "masks" / "f.0003.png")
    assert predicted.mode == "P" and predicted.getpalette()[:9] == [*SKY, *ROAD, *CAR]


def test_images_of_different_sizes_evaluate_in_one_batch(tmp_path):
    """They crashed the first validation with 'stack expects each tensor to be equal size'."""
    import torch
    from torch.utils.data import DataLoader

    from imseg.data.collate import collate_pairs
    from imseg.engine.evaluate import evaluate
    from imseg.engine.inference import Inference
    from imseg.models import create_model

    root = _index_folder(tmp_path, np.zeros((24, 32)))
    Image.fromarray(np.zeros((40, 16, 3), np.uint8)).save(root / "images" / "b.jpg")
    Image.fromarray(np.ones((40, 16), np.uint8)).save(root / "masks" / "b.png")
    ds = _folder(root, class_names=["a", "b"])
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_pairs)
    images, masks = next(iter(loader))
    assert isinstance(images, list) and [tuple(m.shape) for m in masks] == [(24, 32), (40, 16)]
    model = create_model("unet_original", 2, base_channels=4)
    scores = evaluate(model, loader, num_classes=2, ignore_index=255, inference=Inference(model.preprocessing),
                      device=torch.device("cpu"), per_image=True)
    assert scores["images"] == 2 and len(scores["per_image_miou"]) == 2
    assert sum(map(sum, scores["confusion_matrix"])) == 24 * 32 + 40 * 16
