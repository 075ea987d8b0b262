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
    # Dice equals F1 per class: 2TP / (2TP + FP + FN). Precision is undefined
    # for a class never predicted, recall for a class never present.
    predicted = pred > 0
    seen = present | predicted
    nan = torch.full_like(tp, float("nan"))
    dice = torch.where(seen, 2 * tp / (gt + pred).clamp(min=1), nan)
    precision = torch.where(predicted, tp / pred.clamp(min=1), nan)
    recall = acc
    per_class = lambda t: {name: _nan_to_none(v) for name, v in zip(names, t.tolist())}  # noqa: E731
    return {
        "mIoU": _nan_to_none(miou),
        "pixel_accuracy": _nan_to_none((tp.sum() / total).item()) if total > 0 else None,
        "mean_class_accuracy": _nan_to_none(acc[present].mean().item()) if present.any() else None,
        "fwIoU": _nan_to_none((freq[present] * iou[present]).sum().item()) if present.any() else None,
        "per_class_iou": {name: _nan_to_none(v) for name, v in zip(names, iou.tolist())},
        "per_class_accuracy": {name: _nan_to_none(v) for name, v in zip(names, acc.tolist())},
        "mean_dice": _nan_to_none(dice[present].mean().item()) if present.any() else None,
        "per_class_dice": per_class(dice),
        "per_class_precision": per_class(precision),
        "per_class_recall": per_class(recall),
        "pixels": int(total.item()),
    }


def format_table(scores: dict[str, Any]) -> str:
    """A per-class table a person reads in the terminal."""
    names = list(scores["per_class_iou"])
    width = max(19, *(len(n) for n in names))  # 19: "mean_class_accuracy"
    columns = [("IoU", "per_class_iou"), ("acc", "per_class_accuracy"), ("Dice", "per_class_dice"),
               ("prec", "per_class_precision")]
    if "per_class_bf1" in scores:
        columns.append(("BF1", "per_class_bf1"))
    fmt = lambda v: "   n/a" if v is None else f"{100 * v:6.1f}"  # noqa: E731
    rule = "-" * (width + 8 * len(columns))
    lines = [f"{'class':<{width}}" + "".join(f"  {title:>6}" for title, _ in columns), rule]
    for name in names:
        lines.append(f"{name:<{width}}" + "".join(f"  {fmt(scores[key].get(name))}" for _, key in columns))
    lines.append(rule)
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU", "mean_dice", "mean_bf1", "ece"):
        if key not in scores:
            continue
        v = scores[key]
        lines.append(f"{key:<{width}}  {'n/a' if v is None else f'{100 * v:6.1f}'}")
    return "\n".join(lines)


# ------------------------------------------------------------ boundary F1


_CLASSES_PER_WORD = 62  # classes packed as bits of one int64 per pixel (the sign bit stays clear)
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _boundaries(labels: torch.Tensor) -> torch.Tensor:
    """Pixels ``[B, H, W]`` with an 8-neighbour of another label (neighbours outside the image don't count)."""
    h, w = labels.shape[-2:]
    edge = torch.zeros_like(labels, dtype=torch.bool)
    for dy, dx in _NEIGHBOURS:
        here = (slice(None), slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
        there = (slice(None), slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
        edge[here] |= labels[here] != labels[there]
    return edge


def _shift_or(out: torch.Tensor, x: torch.Tensor, step: int, dim: int) -> None:
    """``out |= x`` moved ``step`` pixels both ways along ``dim`` (nothing wraps around)."""
    n = x.shape[dim]
    if step >= n:
        return
    out.narrow(dim, step, n - step).bitwise_or_(x.narrow(dim, 0, n - step))
    out.narrow(dim, 0, n - step).bitwise_or_(x.narrow(dim, step, n - step))


def _dilate_bits(bits: torch.Tensor, radius: int) -> torch.Tensor:
    """Per bit, every pixel within Euclidean distance ``radius`` of a set pixel (a disk dilation, exactly).

    The disk is the union of the rectangles ``|dy| <= a, |dx| <= isqrt(r^2 - a^2)``;
    each rectangle dilates separably by shifted ORs, and all 62 classes of an
    int64 word dilate at once: about 6r passes over a ``[B, H, W]`` tensor
    instead of per-class float convolutions.
    """
    if radius < 1:
        return bits
    height_for_width: dict[int, int] = {}
    for a in range(radius + 1):  # a grows, the width shrinks: the last a for a width is the tallest
        height_for_width[math.isqrt(radius * radius - a * a)] = a
    out = torch.zeros_like(bits)
    row, done = bits.clone(), 0
    for width in sorted(height_for_width):
        for step in range(done + 1, width + 1):
            _shift_or(row, bits, step, -1)
        done = width
        rect = row.clone()
        for step in range(1, height_for_width[width] + 1):
            _shift_or(rect, row, step, -2)
        out |= rect
    return out


def _class_counts(labels: torch.Tensor, where: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]``: per image, the pixels of each class among those in ``where``."""
    b = labels.shape[0]
    where = where & (labels < k)  # a label outside the class range (not the ignore index) is no class's
    index = (torch.arange(b, device=labels.device)[:, None, None] * k + labels)[where]
    return torch.bincount(index, minlength=b * k).reshape(b, k).double()


def _matched(edge_labels: torch.Tensor, edges: torch.Tensor, other_labels: torch.Tensor, other_edges: torch.Tensor,
             radius: int, k: int) -> torch.Tensor:
    """``[B, k]``: boundary pixels of ``edges`` with a boundary pixel of the same class in ``other_edges``
    within ``radius``, per image and class."""
    hits = torch.zeros_like(edges)
    for first in range(0, k, _CLASSES_PER_WORD):
        in_word = other_edges & (other_labels >= first) & (other_labels < first + _CLASSES_PER_WORD)
        bits = torch.where(in_word, torch.ones((), dtype=torch.int64, device=edges.device)
                           << (other_labels - first).clamp(0, _CLASSES_PER_WORD - 1), 0)
        near = _dilate_bits(bits, radius)
        mine = edges & (edge_labels >= first) & (edge_labels < first + _CLASSES_PER_WORD)
        shift = (edge_labels - first).clamp(0, _CLASSES_PER_WORD - 1)
        hits |= mine & ((near >> shift) & 1).bool()
    return _class_counts(edge_labels, hits, k)


class BoundaryF1:
    """The BF score of SegNet's evaluation (Csurka et al., BMVC 2013).

    Per image and class, the predicted and true region boundaries are matched
    within a tolerance of ``tolerance`` (0.75%) of the image diagonal; F1 of
    that precision and recall is averaged over the images in which the class
    appears (in the truth or the prediction), then over classes. Ignored
    pixels carry no boundary.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, tolerance: float = 0.0075):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance = tolerance
        self.sum = torch.zeros(num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        h, w = target.shape[-2:]
        radius = max(1, round(self.tolerance * math.hypot(h, w)))
        valid = (target != self.ignore_index) if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        # Ignored pixels get label -1: they bound both maps' regions but carry no boundary themselves.
        gt = torch.where(valid, target, -1).long()
        pr = torch.where(valid, pred, -1).long()
        gt_b, pr_b = _boundaries(gt) & valid, _boundaries(pr) & valid
        k = self.num_classes
        gt_l, pr_l = gt.clamp(min=0), pr.clamp(min=0)  # -1 only where there is no boundary pixel
        n_pr, n_gt = _class_counts(pr_l, pr_b, k), _class_counts(gt_l, gt_b, k)
        precision = _matched(pr_l, pr_b, gt_l, gt_b, radius, k) / n_pr.clamp(min=1)
        recall = _matched(gt_l, gt_b, pr_l, pr_b, radius, k) / n_gt.clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(precision))
        appears = (n_pr > 0) | (n_gt > 0)
        self.sum += (f1 * appears).sum(0).cpu()
        self.count += appears.sum(0).double().cpu()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        per_class = torch.where(self.count > 0, self.sum / self.count.clamp(min=1), torch.full_like(self.sum, float("nan")))
        seen = self.count > 0
        return {
            "mean_bf1": _nan_to_none(per_class[seen].mean().item()) if seen.any() else None,
            "per_class_bf1": {n: _nan_to_none(v) for n, v in zip(names, per_class.tolist())},
        }


# ------------------------------------------------------------ calibration


class CalibrationError:
    """Expected calibration error over pixels (Guo et al., ICML 2017), ``bins`` equal-width bins."""

    def __init__(self, ignore_index: int | None = 255, bins: int = 15):
        self.ignore_index = ignore_index
        self.bins = bins
        self.count = torch.zeros(bins, dtype=torch.float64)
        self.confidence = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        conf, pred = logits.float().softmax(1).max(1)
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        conf, hit = conf[valid].double(), (pred[valid] == target[valid]).double()
        idx = (conf * self.bins).long().clamp(max=self.bins - 1)
        self.count += torch.bincount(idx, minlength=self.bins).double().cpu()
        self.confidence += torch.bincount(idx, weights=conf, minlength=self.bins).cpu()
        self.correct += torch.bincount(idx, weights=hit, minlength=self.bins).cpu()

    def compute(self) -> dict[str, Any]:
        total = self.count.sum()
        if total == 0:
            return {"ece": None}
        gap = (self.correct - self.confidence).abs()  # per bin: |acc - conf| x n
        return {
            "ece": (gap.sum() / total).item(),
            "reliability": {
                "bin_upper": [(i + 1) / self.bins for i in range(self.bins)],
                "count": self.count.tolist(),
                "accuracy": (self.correct / self.count.clamp(min=1)).tolist(),
                "confidence": (self.confidence / self.count.clamp(min=1)).tolist(),
            },
        }
