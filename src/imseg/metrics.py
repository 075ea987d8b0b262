"""Segmentation metrics from one streaming confusion matrix.

torchmetrics accumulates the matrix (and sums it across processes under
DDP); every score is derived from that single matrix, so mIoU, accuracy and
fwIoU can never disagree about which pixels were counted.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class ConfusionMatrix:
    """Streams predictions into a ``[num_classes, num_classes]`` matrix (rows = truth)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._metric = MulticlassConfusionMatrix(
            num_classes=num_classes, ignore_index=ignore_index, validate_args=False
        ).to(device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices ``[B,H,W]`` or logits ``[B,C,H,W]``; ``target``: ``[B,H,W]``."""
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        self._metric.update(pred.reshape(-1), target.reshape(-1))

    def reset(self) -> None:
        self._metric.reset()

    @property
    def matrix(self) -> torch.Tensor:
        return self._metric.compute().to(torch.float64).cpu()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return scores_from_confusion(self.matrix, class_names)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def scores_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All scores from a confusion matrix (rows = ground truth, columns = prediction).

    A class with no ground-truth pixels has an undefined IoU/accuracy; it is
    reported as ``None`` and left out of the means rather than counted as 0 or 1.
    """
    cm = cm.to(torch.float64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    present = gt > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(present, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    freq = gt / total.clamp(min=1)
    miou = iou[present].mean().item() if present.any() else float("nan")
    return {
        "mIoU": _nan_to_none(miou),
        "pixel_accuracy": _nan_to_none((tp.sum() / total).item()) if total > 0 else None,
        "mean_class_accuracy": _nan_to_none(acc[present].mean().item()) if present.any() else None,
        "fwIoU": _nan_to_none((freq[present] * iou[present]).sum().item()) if present.any() else None,
        "per_class_iou": {name: _nan_to_none(v) for name, v in zip(names, iou.tolist())},
        "per_class_accuracy": {name: _nan_to_none(v) for name, v in zip(names, acc.tolist())},
        "pixels": int(total.item()),
    }


def format_table(scores: dict[str, Any]) -> str:
    """A per-class table a person reads in the terminal."""
    names = list(scores["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}", "-" * (width + 16)]
    for name in names:
        iou, acc = scores["per_class_iou"][name], scores["per_class_accuracy"][name]
        fmt = lambda v: "   n/a" if v is None else f"{100 * v:6.1f}"  # noqa: E731
        lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
    lines.append("-" * (width + 16))
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU"):
        v = scores[key]
        lines.append(f"{key:<{width}}  {'n/a' if v is None else f'{100 * v:6.1f}'}")
    return "\n".join(lines)
