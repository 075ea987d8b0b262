"""Calibration images for int8 quantisation: N training images, preprocessed exactly as inference does.

Static int8 fixes every activation's range from data, so the data must be
what the deployed model will see: training-split images of the model's own
data set (the config stored in its file, or one given), normalised with its
`Preprocessing` and resized to its ``eval_size`` the way `infer_logits` does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def calibration_batches(model: nn.Module, count: int, source: str | Path, data_root: str | None = None,
                        config: str | None = None, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """``count`` float32 ``[1, C, H, W]`` inputs from the training split, spread evenly over it.

    ``source`` is the model file (named in errors); ``size`` forces H x W (a file exported with a fixed
    shape), else the model's ``eval_size`` or the images' own size is used.
    """
    from imseg.data import build_dataset
    from imseg.engine.eval_run import eval_data_config
    from imseg.engine.predict import model_inference

    if count < 1:
        raise ValueError(f"--calibrate must be at least 1 image, got {count}")
    data_cfg = eval_data_config(model, source, data_root, config)
    dataset = build_dataset(data_cfg, data_cfg.train_split, train=False)
    if len(dataset) == 0:
        raise ValueError(f"{source}: the training split {data_cfg.train_split!r} of {data_cfg.root} holds no "
                         f"images to calibrate on")
    inference = model_inference(model)
    target = size or inference.eval_size
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    batches = []
    for index in dict.fromkeys(picks.tolist()):  # distinct, in order
        image, _ = dataset[index]
        x = inference.preprocessing(image[None])
        if target is not None and tuple(x.shape[-2:]) != tuple(target):
            x = F.interpolate(x, size=tuple(target), mode="bilinear", align_corners=False)
        batches.append(np.ascontiguousarray(x.to(torch.float32).numpy()))
    return batches
