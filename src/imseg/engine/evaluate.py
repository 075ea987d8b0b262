"""Evaluation: stream a split through the model into one confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from imseg.engine.distributed import all_reduce_
from imseg.engine.inference import Inference, infer_logits
from imseg.engine.progress import progress as progress_bar
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
    per_image: bool = False,
) -> dict[str, Any]:
    """Scores of ``model`` on ``loader``; ``boundary`` adds BF1, ``calibration`` the ECE.

    ``per_image`` adds ``per_image_miou``: the mIoU of each image on its own
    (classes present in its truth or prediction), in loader order, for
    finding the images a model fails on.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    bf1 = BoundaryF1(num_classes, ignore_index) if boundary else None
    ece = CalibrationError(ignore_index) if calibration else None
    start = time.perf_counter()
    images_seen = 0
    image_scores: list[float | None] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch_images, batch_masks in progress_bar(loader, desc, enabled=progress, total=total):
        # A list: images of different sizes (see imseg.data.collate), scored one by one.
        pieces = zip(batch_images, batch_masks) if isinstance(batch_images, list) else [(batch_images, batch_masks)]
        for images, masks in pieces:
            images, masks = _as_batch(images).to(device, non_blocking=True), _as_batch(masks, 2).to(device)
            logits = infer_logits(model, images, inference)
            pred = logits.argmax(1)
            cm.update(pred, masks)
            if per_image:
                image_scores.extend(_per_image_miou(pred, masks, num_classes, ignore_index))
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
    if per_image:
        scores["per_image_miou"] = image_scores
    return scores


def _as_batch(x: torch.Tensor, sample_dims: int = 3) -> torch.Tensor:
    return x.unsqueeze(0) if x.ndim == sample_dims else x


def _per_image_miou(pred: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int) -> list[float | None]:
    out = []
    for p, t in zip(pred, target):
        valid = t != ignore_index
        cm = torch.bincount(t[valid] * k + p[valid], minlength=k * k).reshape(k, k).double()
        tp, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
        seen = union > 0
        out.append((tp[seen] / union[seen]).mean().item() if seen.any() else None)
    return out
