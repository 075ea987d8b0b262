"""Evaluation: stream a split through the model into one confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from imseg.engine.inference import Inference, infer_logits
from imseg.metrics import ConfusionMatrix


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
) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    start = time.perf_counter()
    images_seen = 0
    for images, masks in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = infer_logits(model, images, inference)
        cm.update(logits.argmax(1), masks)
        images_seen += images.shape[0]
    model.train(was_training)
    scores = cm.compute(class_names)
    scores["images"] = images_seen
    scores["seconds"] = time.perf_counter() - start
    scores["confusion_matrix"] = cm.matrix.to(torch.int64).tolist()
    return scores
