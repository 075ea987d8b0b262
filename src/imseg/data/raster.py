"""Remote-sensing rasters (GeoTIFF and anything GDAL reads) through rasterio, never loaded whole.

A scene is an image raster (any band count; uint8, uint16 or float) and a
label raster of the same grid: one band of class ids, or three bands of
class colours decoded through ``data.classes`` (ISPRS Potsdam/Vaihingen
style). Training draws ``data.windows_per_epoch`` random windows of
``data.crop_size`` from the scenes, each read from disk on its own, with
random flips and 90-degree turns. Evaluation covers every scene with a grid
of windows (the last row and column padded with the ignore label), so the
scores are those of the whole scenes. Pixels the image marks as nodata are
ignored. Images keep their values: they are normalised by the per-band mean
and std of the training rasters (`band_statistics`, which becomes the
model's preprocessing), never by 255.

Layout (``data.name: raster``)::

    root/images/<stem>.tif      image rasters (data.image_dir)
    root/masks/<stem>.tif       label rasters, same size and grid (data.mask_dir)
    root/train.txt, val.txt     optional split lists of stems
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .base import DataError, SegmentationDataset

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".img", ".jp2")
_STATS_SIDE = 1024  # band statistics are read at most this large per scene (GDAL overviews / decimation)


def require_rasterio():
    try:
        import rasterio
    except ImportError:
        raise DataError("reading GeoTIFF and other rasters needs rasterio: pip install 'imseg[geo]'") from None
    return rasterio


def _open(path: Path):
    rasterio = require_rasterio()
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot read raster {path}: {e}") from None


def read_window(path: Path, top: int, left: int, height: int, width: int,
                out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bands ``[C, h, w]`` (float32, the file's values) and a validity mask ``[h, w]`` of one window;
    beyond the raster's edge the window is padded with invalid pixels."""
    from rasterio.windows import Window

    with _open(path) as src:
        window = Window(left, top, width, height)
        shape = (src.count, *(out_shape or (height, width)))
        # A boundless read goes through a virtual raster: several times slower, so only at the edges.
        edge = top < 0 or left < 0 or top + height > src.height or left + width > src.width
        bands = src.read(window=window, out_shape=shape, boundless=edge, fill_value=0).astype(np.float32)
        valid = src.read_masks(1, window=window, out_shape=shape[1:], boundless=edge) > 0
        for i in range(2, src.count + 1):
            valid &= src.read_masks(i, window=window, out_shape=shape[1:], boundless=edge) > 0
    return bands, valid


def raster_shape(path: Path) -> tuple[int, int, int]:
    """(bands, height, width) of a raster, from its header alone."""
    with _open(path) as src:
        return src.count, src.height, src.width


def band_statistics(paths: Sequence[Path]) -> tuple[list[float], list[float]]:
    """Per-band mean and std over the valid pixels of ``paths``, each read decimated to at most 1024 px a side."""
    total = total_sq = None
    count = 0
    for path in paths:
        _, h, w = raster_shape(path)
        factor = max(1, math.ceil(max(h, w) / _STATS_SIDE))
        bands, valid = read_window(path, 0, 0, h, w, out_shape=(max(1, h // factor), max(1, w // factor)))
        pixels = bands[:, valid].astype(np.float64)
        total = pixels.sum(1) if total is None else total + pixels.sum(1)
        total_sq = (pixels ** 2).sum(1) if total_sq is None else total_sq + (pixels ** 2).sum(1)
        count += pixels.shape[1]
    if not count:
        raise DataError(f"the rasters {[str(p) for p in paths][:3]} hold no valid pixels for band statistics")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


class RasterScenes(SegmentationDataset):
    """Windows of large image/label raster pairs, read from disk window by window.

    ``train``: ``windows_per_epoch`` random windows (scene, position, flips
    drawn from the augmentation seed, so runs repeat exactly); otherwise a
    grid of windows covering every scene. Samples are ``(float32 [C, h, w],
    int64 [h, w])``: image values as stored, labels with nodata ignored.
    """

    def __init__(self, scenes: Sequence[tuple[Path, Path]], class_names: Sequence[str], palette, *,
                 window: Sequence[int], train: bool, windows_per_epoch: int = 500, **labels: Any) -> None:
        super().__init__(scenes, class_names, palette, **labels)
        self.window = (int(window[0]), int(window[1]))
        self.train = train
        self.windows_per_epoch = int(windows_per_epoch)
        self.shapes = [raster_shape(image) for image, _ in self.files]
        for (image, label), (_, h, w) in zip(self.files, self.shapes):
            _, lh, lw = raster_shape(label)
            if (lh, lw) != (h, w):
                raise DataError(f"label raster {label} is {lw}x{lh} (WxH) but image {image} is {w}x{h}")
        self.tiles = [] if train else [(i, top, left) for i, (_, h, w) in enumerate(self.shapes)
                                       for top in range(0, h, self.window[0]) for left in range(0, w, self.window[1])]

    def __len__(self) -> int:
        return self.windows_per_epoch if self.train else len(self.tiles)

    def _place(self, index: int) -> tuple[int, int, int, np.random.Generator | None]:
        if not self.train:
            return (*self.tiles[index], None)
        seed = None if self.augmentation_seed is None else (self.augmentation_seed, self.epoch, index)
        rng = np.random.default_rng(seed if seed is not None else int(torch.randint(0, 2**31, ()).item()))
        scene = int(rng.integers(len(self.files)))
        _, h, w = self.shapes[scene]
        top = int(rng.integers(0, max(1, h - self.window[0] + 1)))
        left = int(rng.integers(0, max(1, w - self.window[1] + 1)))
        return scene, top, left, rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene, top, left, rng = self._place(index)
        image_path, label_path = self.files[scene]
        bands, valid = read_window(image_path, top, left, *self.window)
        labels = self._window_labels(label_path, top, left)
        labels[~valid] = self.ignore_index
        if rng is not None:  # flips and quarter turns: aerial scenes have no "up"
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            bands, labels = np.rot90(bands, turns, (1, 2)), np.rot90(labels, turns)
            if flip:
                bands, labels = bands[:, :, ::-1], labels[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(bands)), torch.from_numpy(np.ascontiguousarray(labels))

    def _window_labels(self, path: Path, top: int, left: int) -> np.ndarray:
        raw, valid = read_window(path, top, left, *self.window)
        if self.colour_table is not None:
            rgb = np.moveaxis(raw[:3], 0, -1).astype(np.uint8)
            labels = self.colour_table.decode(rgb, path, self.ignore_index, self.unknown_colors)
        else:
            labels = self.map_labels(raw[0].astype(np.int64), path)
        labels = np.where(valid, labels, self.ignore_index)
        bad = (labels >= self.num_classes) & (labels != self.ignore_index) | (labels < 0)
        if bad.any():
            values = np.unique(labels[bad]).tolist()[:5]
            raise DataError(f"label raster {path} holds values {values} (window at row {top}, column {left}) that "
                            f"are neither a class id (0..{self.num_classes - 1}) nor ignore_index ({self.ignore_index})")
        return labels

    def load_mask(self, path: Path) -> np.ndarray:
        """The labels of a whole label raster at most 2048 px a side (for class statistics), nearest-sampled."""
        _, h, w = raster_shape(path)
        factor = max(1, math.ceil(max(h, w) / 2048))
        raw, valid = read_window(path, 0, 0, h, w, out_shape=(max(1, h // factor), max(1, w // factor)))
        labels = self.map_labels(raw[0].astype(np.int64), path) if self.colour_table is None else \
            self.colour_table.decode(np.moveaxis(raw[:3], 0, -1).astype(np.uint8), path, self.ignore_index,
                                     self.unknown_colors)
        return np.where(valid, labels, self.ignore_index)

    @property
    def num_channels(self) -> int:
        return self.shapes[0][0]

    @property
    def image_dtype(self) -> str:
        with _open(self.files[0][0]) as src:
            return str(src.dtypes[0])

    def band_preprocessing(self):
        """The `Preprocessing` of these scenes' values: per-band mean and std, no /255 (computed once)."""
        if getattr(self, "_preprocessing", None) is None:
            from imseg.preprocessing import Preprocessing

            mean, std = band_statistics([image for image, _ in self.files])
            self._preprocessing = Preprocessing(tuple(mean), tuple(std), "RGB", scale=1.0)
        return self._preprocessing
