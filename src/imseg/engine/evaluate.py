"""Evaluation: stream a split through the model into one confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from imseg.engine.distributed import all_reduce_
from imseg.engine.inference import Inference, infer_logits
from imseg.metrics import BoundaryF1, CalibrationError, ConfusionMatrix


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    ignore_index: int,
    inference: Inference,
    device: torch.device,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    desc: str = "eval",
    boundary: bool = False,
    calibration: bool = False,
) -> dict[str, Any]:
    """Scores of ``model`` on ``loader``; ``boundary`` adds BF1, ``calibration`` the ECE."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    bf1 = BoundaryF1(num_classes, ignore_index) if boundary else None
    ece = CalibrationError(ignore_index) if calibration else None
    start = time.perf_counter()
    images_seen = 0
    for images, masks in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = infer_logits(model, images, inference)
        pred = logits.argmax(1)
        cm.update(pred, masks)
        if bf1 is not None:
            bf1.update(pred, masks)
        if ece is not None:
            ece.update(logits, masks)
        images_seen += images.shape[0]
    model.train(was_training)
    # Under torchrun each process saw its own shard: the confusion matrix is
    # summed by torchmetrics on compute(); the other sums are reduced here.
    if bf1 is not None:
        for t in (bf1.sum, bf1.count):
            all_reduce_(t)
    if ece is not None:
        for t in (ece.count, ece.confidence, ece.correct):
            all_reduce_(t)
    images_seen = int(all_reduce_(torch.tensor([images_seen])).item())
    scores = cm.compute(class_names)
    if bf1 is not None:
        scores.update(bf1.compute(class_names))
    if ece is not None:
        scores.update(ece.compute())
    scores["images"] = images_seen
    scores["seconds"] = time.perf_counter() - start
    scores["confusion_matrix"] = cm.matrix.to(torch.int64).tolist()
    return scores
