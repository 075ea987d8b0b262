"""Evaluation: stream a split through the model into one confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from imseg.engine.runtime import autocast
from imseg.metrics import ConfusionMatrix
from imseg.models.registry import main_logits
from imseg.preprocessing import Preprocessing


def infer_logits(
    model: nn.Module,
    images: torch.Tensor,
    preprocessing: Preprocessing,
    eval_size: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits ``[B,K,H,W]`` at the images' own size for a batch of 0-255 images.

    With ``eval_size`` the network sees the batch resized to that H x W (a
    model trained at low resolution) and its logits are resized back, so
    scores are always measured against full-resolution labels.
    """
    height, width = images.shape[-2:]
    x = preprocessing(images)
    if eval_size is not None and tuple(eval_size) != (height, width):
        x = F.interpolate(x, size=tuple(eval_size), mode="bilinear", align_corners=False)
    with autocast(images.device, amp_dtype):
        logits = main_logits(model(x))
    logits = logits.float()
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    ignore_index: int,
    preprocessing: Preprocessing,
    device: torch.device,
    class_names: Sequence[str] | None = None,
    eval_size: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    start = time.perf_counter()
    images_seen = 0
    for images, masks in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = infer_logits(model, images, preprocessing, eval_size, amp_dtype)
        cm.update(logits.argmax(1), masks)
        images_seen += images.shape[0]
    model.train(was_training)
    scores = cm.compute(class_names)
    scores["images"] = images_seen
    scores["seconds"] = time.perf_counter() - start
    scores["confusion_matrix"] = cm.matrix.to(torch.int64).tolist()
    return scores
