"""GeoTIFF scenes: windows read from disk, nodata ignored, band statistics, and streamed tiled prediction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio", reason="the [geo] extra (rasterio) is not installed")
from rasterio.transform import from_origin  # noqa: E402

from imseg.config import data_config  # noqa: E402
from imseg.data import build_dataset  # noqa: E402

TRANSFORM = from_origin(500000.0, 4600000.0, 0.5, 0.5)  # UTM 33N, 50 cm pixels
CRS = "EPSG:32633"


def _write(path: Path, array: np.ndarray, nodata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=array.dtype, crs=CRS,
                       transform=TRANSFORM, nodata=nodata, tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(array)
    return path


def _scene(root: Path, stem: str, h: int = 150, w: int = 230, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band uint16 scene (values up to 40000) with a nodata corner, and its labels 0-2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (h // 10 + 1, w // 10 + 1)).repeat(10, 0).repeat(10, 1)[:h, :w].astype(np.uint8)
    image = (labels[None].astype(np.int64) * 12000 + rng.integers(1, 4000, (4, h, w))).astype(np.uint16)
    image[:, :20, :30] = 0  # nodata
    _write(root / "images" / f"{stem}.tif", image, nodata=0)
    _write(root / "masks" / f"{stem}.tif", labels[None])
    return image, labels


def _cfg(root: Path, **data):
    return data_config({"name": "raster", "root": str(root), "class_names": ["a", "b", "c"], "crop_size": [64, 96],
                        "windows_per_epoch": 6, **data})


def test_training_windows_are_read_with_nodata_ignored_and_repeat_with_the_seed(tmp_path):
    image, labels = _scene(tmp_path, "s0")
    ds = build_dataset(_cfg(tmp_path), "train", train=True)
    assert len(ds) == 6 and ds.num_channels == 4
    ds.set_augmentation_seed(3, epoch=1)
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (4, 64, 96) and y.shape == (64, 96)
    assert x.max() > 255  # values as stored: 16-bit, never squeezed into 0-255
    again = ds[0]
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    ds.set_augmentation_seed(3, epoch=2)
    assert not torch.equal(x, ds[0][0])


def test_evaluation_tiles_cover_each_scene_exactly_once(tmp_path):
    image, labels = _scene(tmp_path, "s0")
    ds = build_dataset(_cfg(tmp_path), "val", train=False)
    assert len(ds) == 3 * 3  # ceil(150/64) x ceil(230/96)
    seen = np.full(labels.shape, -1)
    for i, (top, left) in enumerate((t, l) for _, t, l in ds.tiles):
        _, y = ds[i]
        h, w = min(64, 150 - top), min(96, 230 - left)
        seen[top:top + h, left:left + w] = y[:h, :w].numpy()
        assert (y[h:] == 255).all() and (y[:, w:] == 255).all()  # padding beyond the scene is ignored
    expected = labels.astype(int).copy()
    expected[:20, :30] = 255  # the image's nodata
    np.testing.assert_array_equal(seen, expected)


def test_band_statistics_are_those_of_the_valid_pixels(tmp_path):
    image, _ = _scene(tmp_path, "s0")
    ds = build_dataset(_cfg(tmp_path), "train", train=True)
    pre = ds.band_preprocessing()
    valid = image[:, 20:, :].reshape(4, -1).astype(np.float64)  # the nodata corner left out (rows 0-19, cols 0-29)
    full = np.concatenate([image[:, :20, 30:].reshape(4, -1), valid], 1).astype(np.float64)
    np.testing.assert_allclose(pre.mean, full.mean(1), rtol=1e-5)
    np.testing.assert_allclose(pre.std, full.std(1), rtol=1e-4)
    assert pre.scale == 1.0


def test_streamed_tiled_prediction_equals_whole_scene_sliding_windows_on_the_input_grid(tmp_path):
    from imseg.engine.inference import slide_logits
    from imseg.engine.raster_predict import predict_raster
    from imseg.models import create_model

    image, _ = _scene(tmp_path, "s0")
    ds = build_dataset(_cfg(tmp_path), "train", train=True)
    torch.manual_seed(0)
    model = create_model("unet_original", 3, base_channels=4, in_channels=4).eval()
    model.preprocessing = ds.band_preprocessing()
    outputs = predict_raster(model, tmp_path / "images" / "s0.tif", tmp_path / "pred" / "s0.tif", tile=(64, 96),
                             stride=(40, 60), confidence=True)
    with rasterio.open(outputs[0]) as out, rasterio.open(tmp_path / "images" / "s0.tif") as src:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        ids = out.read(1)
    with torch.no_grad():
        x = model.preprocessing(torch.from_numpy(image.astype(np.float32))[None])
        expected = slide_logits(model, x, (64, 96), (40, 60))[0].argmax(0).numpy()
    expected[:20, :30] = 255
    assert (ids == expected).mean() > 0.999  # float sums in another order may flip a tie
    with rasterio.open(outputs[1]) as conf:
        top, entropy = conf.read(1), conf.read(2)
    assert conf.count == 2 and (top > 1 / 3 - 1e-6).all() and (top <= 1 + 1e-6).all() and (entropy >= -1e-6).all()


def test_train_eval_predict_on_rasters_end_to_end(tmp_path):
    """The commands a remote-sensing user runs: bands and their statistics come from the data, and travel."""
    import json

    import yaml

    from imseg.engine.checkpoint import load_model
    from tests.helpers import run_cli

    data = tmp_path / "data"
    _scene(data, "s0", seed=0)
    _scene(data, "s1", seed=1)
    (data / "train.txt").write_text("s0\n")
    (data / "val.txt").write_text("s1\n")
    cfg = {"model": {"name": "unet_original", "args": {"base_channels": 4}},  # no in_channels: the data says 4
           "data": {"name": "raster", "root": str(data), "class_names": ["a", "b", "c"], "crop_size": [64, 96],
                    "windows_per_epoch": 4, "batch_size": 2, "num_workers": 0,
                    "splits": {"train": "train.txt", "val": "val.txt"}},
           "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
           "train": {"epochs": 2, "out_dir": str(tmp_path / "run"), "progress": False, "log_every": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", tmp_path / "cfg.yaml")
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    meta = load_model(ckpt).meta
    expected = build_dataset(_cfg(data, splits={"train": "train.txt"}), "train", train=True).band_preprocessing()
    assert meta.spec["kwargs"]["in_channels"] == 4
    np.testing.assert_allclose(meta.preprocessing.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(meta.preprocessing.std, expected.std, rtol=1e-6)

    code, _, err = run_cli("eval", ckpt, "--split", "val", "--no-report", "--out", tmp_path / "eval.json")
    assert code == 0, err
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= scores["mIoU"] <= 1.0 and len(scores["per_class_iou"]) == 3

    # No --raster: a model trained on rasters predicts GeoTIFFs tile by tile by itself.
    code, _, err = run_cli("predict", ckpt, data / "images" / "s1.tif", "--out", tmp_path / "pred")
    assert code == 0, err
    with rasterio.open(tmp_path / "pred" / "s1.tif") as out, rasterio.open(data / "images" / "s1.tif") as src:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        ids = out.read(1)
    assert set(np.unique(ids)) <= {0, 1, 2, 255} and (ids[:20, :30] == 255).all()  # nodata stays nodata
