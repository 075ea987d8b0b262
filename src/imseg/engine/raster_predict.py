"""Prediction on a raster of any size, window by window, into a GeoTIFF on the input's grid.

The scene is covered by overlapping windows (``tile`` with ``stride``, the
last row and column ending at the border, as in sliding-window inference);
overlapping logits are averaged. Windows go row by row, and only one band of
rows is held: the class scores of ``tile[0]`` rows across the scene. When
the next row of windows starts below a row, nothing can change it any more,
so it is written out and dropped. Memory therefore grows with the scene's
width, never its area: a 10000x10000 scene needs the scores of 512 x 10000
pixels at a time, not of 10^8.

The output is a uint8 GeoTIFF of class ids with the input's CRS, transform
and size (255: nodata, where the input has none); with ``confidence`` a
second float32 GeoTIFF ``<stem>_confidence.tif`` holds the top softmax
probability and the entropy per pixel.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from imseg.data.raster import require_rasterio
from imseg.engine.inference import _forward, _window_starts

NODATA = 255


def _add_row(model: nn.Module, src, top: int, cols: list[int], tile: tuple[int, int], window_batch: int,
             device: torch.device, band: list, count: torch.Tensor) -> None:
    """Add the logits of one row of windows at ``top`` into ``band[0]`` (``[K, tile[0], W]``, made on the first
    call: the class count is known once the model has run) and their window counts into ``count``."""
    from rasterio.windows import Window

    for i in range(0, len(cols), window_batch):
        group = cols[i:i + window_batch]
        reads = [src.read(window=Window(left, top, tile[1], tile[0])).astype(np.float32) for left in group]
        x = model.preprocessing(torch.from_numpy(np.stack(reads)).to(device))
        logits = _forward(model, x, None).cpu()
        if band[0] is None:
            band[0] = torch.zeros(logits.shape[1], tile[0], src.width)
        for j, left in enumerate(group):
            band[0][:, :, left:left + tile[1]] += logits[j]
            count[:, left:left + tile[1]] += 1


@torch.no_grad()
def predict_raster(model: nn.Module, source: str | Path, out: str | Path, tile: Sequence[int] = (512, 512),
                   stride: Sequence[int] | None = None, window_batch: int = 2, confidence: bool = False,
                   device: str | torch.device = "cpu") -> list[Path]:
    """Class ids of the raster ``source`` written to the GeoTIFF ``out`` (see the module docstring)."""
    rasterio = require_rasterio()
    model = model.eval().to(device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(**_block_cache(source, tile)), rasterio.open(source) as src:
        if src.count != model.preprocessing.num_channels:
            raise ValueError(f"raster {source} has {src.count} bands but the model takes "
                             f"{model.preprocessing.num_channels}")
        th, tw = min(tile[0], src.height), min(tile[1], src.width)
        sh, sw = stride or (max(1, th * 2 // 3), max(1, tw * 2 // 3))
        rows, cols = _window_starts(src.height, th, sh), _window_starts(src.width, tw, sw)
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "crs": src.crs,
                   "transform": src.transform, "tiled": True, "blockxsize": 256, "blockysize": 256,
                   "compress": "deflate"}
        written = [out]
        sinks = [rasterio.open(out, "w", **profile, count=1, dtype="uint8", nodata=NODATA)]
        if confidence:
            written.append(out.with_name(out.stem + "_confidence.tif"))
            sinks.append(rasterio.open(written[-1], "w", **profile, count=2, dtype="float32"))
        try:
            _stream(model, src, sinks, rows, cols, (th, tw), window_batch, torch.device(device))
        finally:
            for sink in sinks:
                sink.close()
    return written


def _block_cache(source: str | Path, tile: Sequence[int]) -> dict:
    """GDAL's block cache, sized for this scene (unless GDAL_CACHEMAX is set).

    GDAL's default cache is 5% of the machine's memory (1.2 GB of 24 GB),
    and a streamed scene fills all of it with blocks it will never read again:
    that alone took peak memory on a 10000x10000 scene from 1.5 GB to 2.1 GB.
    Overlapping windows re-read only the blocks of the current and the
    previous row of windows, so three rows of windows' worth is plenty.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return {}
    rasterio = require_rasterio()
    with rasterio.open(source) as src:
        row_bytes = min(tile[0], src.height) * src.width * src.count * np.dtype(src.dtypes[0]).itemsize
    return {"GDAL_CACHEMAX": int(min(max(3 * row_bytes, 64 * 2**20), 512 * 2**20))}


def _stream(model, src, sinks, rows: list[int], cols: list[int], tile: tuple[int, int], window_batch: int,
            device: torch.device) -> None:
    """Run the rows of windows, holding one band of ``tile[0]`` rows, writing rows as they become final."""
    th = tile[0]
    band: list = [None]  # [K, th, W] summed logits of rows band_top .. band_top + th
    count = torch.zeros(th, src.width)
    band_top = 0
    for i, top in enumerate(rows):
        shift = top - band_top  # slide the held rows up so the band starts at this row of windows
        if shift:
            keep = max(0, th - shift)
            band[0][:, :keep] = band[0][:, shift:shift + keep].clone()
            band[0][:, keep:] = 0
            count[:keep] = count[shift:shift + keep].clone()
            count[keep:] = 0
            band_top = top
        _add_row(model, src, top, cols, tile, window_batch, device, band, count)
        final = (rows[i + 1] if i + 1 < len(rows) else src.height) - band_top  # rows no later window touches
        _write_rows(src, sinks, band[0][:, :final], count[:final], band_top)


def _write_rows(src, sinks, summed: torch.Tensor, count: torch.Tensor, top: int) -> None:
    """Class ids (and confidence) of the final rows starting at ``top``, from their summed logits."""
    from rasterio.windows import Window

    window = Window(0, top, src.width, summed.shape[1])
    valid = src.read_masks(1, window=window) > 0
    ids = summed.argmax(0).numpy().astype(np.uint8)  # a pixel's window count scales all its classes alike
    ids[~valid] = NODATA
    sinks[0].write(ids, 1, window=window)
    if len(sinks) > 1:
        probs = (summed / count.clamp(min=1)).softmax(0)
        top_prob = probs.max(0).values.numpy()
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(0).numpy()
        sinks[1].write(np.stack([top_prob, entropy]).astype(np.float32), window=window)
