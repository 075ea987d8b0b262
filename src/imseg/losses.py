"""Segmentation losses. They live outside the models and all honour one ignore index.

Every loss here takes logits ``[B, C, H, W]`` (any float dtype; the loss is
computed in float32, because log-softmax in bf16 loses precision) and an
integer target ``[B, H, W]``, and treats ``ignore_index`` the same way:

* an ignored pixel contributes nothing to any numerator or denominator, so a
  loss on a batch with ignored pixels equals the loss on the same batch with
  those pixels cut out (the tests check exactly this), and the gradient on an
  ignored pixel's logits is exactly zero;
* a batch whose every pixel is ignored gives exactly 0, never NaN, through a
  graph (``logits.sum() * 0``-style), so ``backward`` still works.

The reductions are written without host synchronisation (no ``if
tensor.any():``), so they cost nothing extra on a GPU.

Losses (``LOSSES`` maps the names used by `build_loss` to the classes):

==============  ===============================  ==========================================
name            class                            reference
==============  ===============================  ==========================================
ce              `CrossEntropyLoss`               class weights, label smoothing (Szegedy 2016)
ohem            `OhemCrossEntropyLoss`           Shrivastava et al. 2016; Wu et al. 2016
dice            `DiceLoss`                       Milletari et al. 2016; Sudre et al. 2017
focal           `FocalLoss`                      Lin et al. 2017
lovasz          `LovaszSoftmaxLoss`              Berman et al. 2018
boundary        `BoundaryLoss`                   Bokhovkin & Burnaev 2019
boundary_aware  `BoundaryAwareCrossEntropyLoss`  Zhen et al. 2019 (FDNet; bands unverified)
==============  ===============================  ==========================================

`build_loss` turns a list of ``{"name": ..., "weight": ..., **params}`` dicts
into a `CompositeLoss`, which also handles auxiliary logits (`SegOutput`).
`SegmentationLoss` (cross-entropy + aux) is the engine's default.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.outputs import SegOutput

__all__ = [
    "BoundaryAwareCrossEntropyLoss",
    "BoundaryLoss",
    "CompositeLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LOSSES",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "SegmentationLoss",
    "build_loss",
]


# ----------------------------------------------------------------- helpers


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, *, binary: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes; return float32 logits, the valid mask and a gather-safe target.

    The safe target holds class 0 at ignored pixels so it can index one-hot
    tables and ``gather``; every loss multiplies those pixels' terms by the
    valid mask, so the placeholder class never matters.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    b, c, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"target must be [B, H, W] = {(b, h, w)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)} (upsample the logits to the mask size first)"
        )
    if binary and c != 1:
        raise ValueError(f"binary mode needs logits with one channel, got {c}")
    if not binary and c < 2:
        raise ValueError("multiclass mode needs at least two classes; use mode='binary' for one logit channel")
    target = target.long()
    valid = target != ignore_index
    return logits.float(), valid, target.masked_fill(~valid, 0)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else 0 (still attached to ``num``'s graph).

    Used wherever a denominator counts valid pixels, classes or images: when
    there are none the loss is 0, not 0/0. ``torch.where`` keeps the unused
    branch out of both the value and the gradient.
    """
    safe_den = den.clamp_min(torch.finfo(num.dtype).tiny)
    return torch.where(den > 0, num / safe_den, num * 0)


def _as_weights(weights: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.dim() != 1:
        raise ValueError(f"class weights must be one value per class, got shape {tuple(weights.shape)}")
    return weights


def _one_hot(safe_target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, H, W]`` class indices -> ``[B, C, H, W]`` float one-hot."""
    return F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float()


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------- cross-entropy


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with optional class weights and label smoothing.

    Exactly ``F.cross_entropy(..., reduction="mean")`` (weighted mean: the sum
    of per-pixel losses over the sum of the true classes' weights; label
    smoothing as in Szegedy et al. 2016, "Rethinking the Inception
    Architecture", distributing ``label_smoothing / C`` to every class) except
    that a batch with no valid pixel gives 0 instead of NaN.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", _as_weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe = _prepare(logits, target, self.ignore_index)
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        # Per-pixel weighted, smoothed losses, summed over valid pixels and
        # divided by the true classes' summed weight: PyTorch's "mean", but 0
        # rather than 0/0 when no pixel is valid.
        per_pixel = F.cross_entropy(
            logits, safe, weight=weights, label_smoothing=self.label_smoothing, reduction="none"
        )
        pixel_weight = weights[safe] * valid if weights is not None else valid.float()
        return _safe_div((per_pixel * valid).sum(), pixel_weight.sum())


class OhemCrossEntropyLoss(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining).

    OHEM is from Shrivastava, Gupta & Girshick 2016, "Training Region-based
    Object Detectors with Online Hard Example Mining"; its pixel-wise form
    with a probability threshold is from Wu, Shen & van den Hengel 2016,
    "High-performance Semantic Segmentation Using Very Deep Fully
    Convolutional Networks", and is what mmseg's ``OHEMPixelSampler`` and
    PaddleSeg's ``OhemCrossEntropyLoss`` implement.

    A valid pixel is *hard* when the predicted probability of its true class
    is below ``thresh``. When fewer than ``min_kept`` pixels of the batch are
    hard, the ``min_kept`` valid pixels with the lowest true-class
    probability are used instead (all valid pixels if there are fewer), so a
    well-fitted batch still gives a gradient. The loss is the (class-weighted)
    mean cross-entropy over the kept pixels.

    Differences from the references: ``min_kept`` counts pixels of the whole
    batch (as PaddleSeg; mmseg multiplies it by the batch size), and the mean
    is over the kept pixels (as PaddleSeg; mmseg's default divides by all
    pixels, kept or not, which makes the loss scale with the image size).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        class_weights: torch.Tensor | Sequence[float] | None = None,
    ):
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"thresh must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = int(min_kept)
        self.register_buffer("class_weights", _as_weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe = _prepare(logits, target, self.ignore_index)
        # One log-softmax serves both the selection and the loss (cross_entropy would compute its own), and
        # the top-k runs only when it can add pixels: 1.25-2.3x faster (benchmarks/results/loss-speed.json).
        log_p_true = logits.log_softmax(1).gather(1, safe[:, None])[:, 0]
        with torch.no_grad():  # the selection is a constant mask, not part of the graph
            kept = self._kept(log_p_true, valid)
        pixel_weight = kept.to(log_p_true.dtype)
        if self.class_weights is not None:
            pixel_weight = pixel_weight * self.class_weights.to(logits.device)[safe]
        return _safe_div(-(log_p_true * pixel_weight).sum(), pixel_weight.sum())

    def _kept(self, log_p_true: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The hard valid pixels, topped up with the ``min_kept`` hardest when there are fewer."""
        kept = valid & (log_p_true < math.log(self.thresh))
        k = min(self.min_kept, log_p_true.numel())
        # With k hard pixels already, the k hardest are among them: the costly selection adds nothing.
        if k == 0 or int(kept.sum()) >= k:
            return kept
        # Ignored pixels get +inf so they are never among the k hardest; if k
        # exceeds the valid count, "& valid" drops them.
        order = log_p_true.masked_fill(~valid, math.inf).flatten().topk(k, largest=False).indices
        hardest = torch.zeros(kept.numel(), dtype=torch.bool, device=kept.device)
        hardest[order] = True
        return kept | (hardest.view_as(kept) & valid)


# -------------------------------------------------------------- region losses


def _overlap_sums(logits: torch.Tensor, valid: torch.Tensor, safe: torch.Tensor,
                  binary: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class, over the valid pixels of the batch: the predicted probability on the class's own
    pixels, the predicted probability everywhere, and the pixel count.

    The same sums as a one-hot truth multiplied into the probabilities, without the one-hot
    [B, C, H, W] tensor and its products: 1.9-2.2x faster on a CPU (benchmarks/results/loss-speed.json).
    """
    v = valid.to(logits.dtype)
    if binary:
        prob, truth = logits[:, 0].sigmoid(), safe.to(logits.dtype)
        return (prob * truth * v).sum()[None], (prob * v).sum()[None], (truth * v).sum()[None]
    num_classes = logits.shape[1]
    prob = logits.softmax(1)
    on_truth = prob.gather(1, safe[:, None])[:, 0] * v
    intersection = on_truth.new_zeros(num_classes).index_add(0, safe.flatten(), on_truth.flatten())
    prob_sum = torch.einsum("bchw,bhw->c", prob, v)
    truth_sum = torch.bincount(safe[valid], minlength=num_classes).to(logits.dtype)
    return intersection, prob_sum, truth_sum


class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` per class.

    Soft Dice for segmentation is from Milletari, Navab & Ahmadi 2016,
    "V-Net" (which squares the denominator terms); this is the linear form
    used by Sudre et al. 2017, "Generalised Dice Overlap as a Deep Learning
    Loss Function for Highly Unbalanced Segmentations", SMP and most
    libraries. The sums run over all valid pixels of the batch (one Dice per
    class, not per image: small objects in one image then do not give a
    noisy per-image ratio).

    Args:
        mode: ``"multiclass"`` (softmax over ``C >= 2`` channels) or
            ``"binary"`` (one logit channel, sigmoid, target in {0, 1}; the
            Dice of the foreground only).
        smooth: added to numerator and denominator. With ``smooth > 0`` a
            class absent from both target and prediction scores Dice 1.
        classes: ``"present"`` averages over the classes present in the
            (valid) target of the batch; ``"all"`` over every class, so an
            absent class adds ``1 - smooth / (sum(p) + smooth)``, which
            punishes predicting it anywhere (use ``smooth > 0`` with
            ``"all"``; with ``smooth=0`` an absent class adds a constant 1
            that carries no gradient). In binary mode, ``"present"`` gives 0
            for a batch without foreground; ``"all"`` still penalises false
            positives there.
        eps: lower bound of the denominator, so ``smooth=0`` never divides
            by zero.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        mode: str = "multiclass",
        smooth: float = 1.0,
        classes: str = "present",
        eps: float = 1e-7,
    ):
        super().__init__()
        _check_choice("mode", mode, ("multiclass", "binary"))
        _check_choice("classes", classes, ("present", "all"))
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.ignore_index = ignore_index
        self.mode = mode
        self.smooth = smooth
        self.classes = classes
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        binary = self.mode == "binary"
        logits, valid, safe = _prepare(logits, target, self.ignore_index, binary=binary)
        intersection, prob_sum, truth_sum = _overlap_sums(logits, valid, safe, binary)
        dice = (2 * intersection + self.smooth) / (prob_sum + truth_sum + self.smooth).clamp_min(self.eps)
        per_class = 1 - dice
        if self.classes == "present":
            present = (truth_sum > 0).float()
            loss = _safe_div((per_class * present).sum(), present.sum())
        else:
            loss = per_class.mean()
        # With classes="all", an all-ignored batch would still score the
        # smooth term; the rule is that it scores 0.
        return loss * valid.any()


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, averaged over valid pixels.

    Lin, Goyal, Girshick, He & Dollar 2017, "Focal Loss for Dense Object
    Detection". ``gamma=0`` without ``alpha`` is plain cross-entropy.

    Args:
        gamma: focusing parameter (>= 0); down-weights pixels that are
            already classified well.
        alpha: in ``"multiclass"`` mode, ``None`` or one weight per class
            (``alpha_t`` is the weight of the pixel's true class; the mean is
            still over pixels, as in the paper, not over weights as in
            weighted cross-entropy). In ``"binary"`` mode, ``None`` or a float
            in [0, 1]: the weight of positives, ``1 - alpha`` that of
            negatives (the paper's alpha-balanced form).
        mode: ``"multiclass"`` (softmax, ``p_t`` the probability of the true
            class) or ``"binary"`` (one logit channel, sigmoid, target in
            {0, 1}).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        mode: str = "multiclass",
    ):
        super().__init__()
        _check_choice("mode", mode, ("multiclass", "binary"))
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.mode = mode
        self.binary_alpha: float | None = None
        class_alpha = None
        if alpha is not None:
            if mode == "binary":
                if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                    raise ValueError(f"binary focal alpha must be a float in [0, 1], got {alpha!r}")
                self.binary_alpha = float(alpha)
            else:
                if isinstance(alpha, (int, float)):
                    # A single alpha only rescales a softmax loss; what users mean is per-class weights.
                    raise ValueError("multiclass focal alpha must be one weight per class, not a single number")
                class_alpha = _as_weights(alpha)
        self.register_buffer("alpha", class_alpha, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        binary = self.mode == "binary"
        logits, valid, safe = _prepare(logits, target, self.ignore_index, binary=binary)
        if binary:
            t = safe.float()
            log_pt = -F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none")
            alpha_t = 1.0 if self.binary_alpha is None else self.binary_alpha * t + (1 - self.binary_alpha) * (1 - t)
        else:
            log_pt = logits.log_softmax(1).gather(1, safe[:, None])[:, 0]
            alpha_t = self.alpha.to(logits.device)[safe] if self.alpha is not None else 1.0
        # 1 - p_t via expm1 is exact for confident pixels; the clamp keeps
        # (1 - p_t)^(gamma - 1) finite in the gradient when gamma < 1 and p_t
        # rounds to 1 (it changes the value by < 1e-12).
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-12)
        per_pixel = -alpha_t * one_minus_pt.pow(self.gamma) * log_pt
        return _safe_div((per_pixel * valid).sum(), valid.sum())


def _lovasz_per_class(errors: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Lovasz extension of the Jaccard loss, ``[N, C, P]`` errors -> ``[N, C]`` losses.

    Algorithm 1 of Berman et al. 2018, vectorised over the leading dims:
    sort errors in decreasing order; the gradient of the Lovasz extension
    at that order is the increments of the Jaccard loss of growing prefixes.
    The union is >= 1 at every prefix, so nothing divides by zero.
    """
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    truth_sorted = truth.gather(-1, order)
    n_true = truth_sorted.sum(-1, keepdim=True)
    intersection = n_true - truth_sorted.cumsum(-1)
    union = n_true + (1 - truth_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
    return (errors_sorted * grad).sum(-1)


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-Softmax loss: a convex surrogate of the per-class Jaccard (IoU) loss.

    Berman, Rannen Triki & Blaschko 2018, "The Lovasz-Softmax loss: A
    tractable surrogate for the optimization of the intersection-over-union
    measure in neural networks". Errors are ``|1[y = c] - softmax_c|``.

    Args:
        per_image: one loss per image, averaged over the images that have a
            valid pixel (an all-ignored image is left out, not counted as 0);
            else one loss over the pixels of the whole batch.
        classes: ``"present"`` averages over the classes present in the
            (valid) target; ``"all"`` over every class (an absent class adds
            its largest predicted probability).
    """

    def __init__(self, ignore_index: int = 255, per_image: bool = False, classes: str = "present"):
        super().__init__()
        _check_choice("classes", classes, ("present", "all"))
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.classes = classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe = _prepare(logits, target, self.ignore_index)
        b, c = logits.shape[:2]
        v = valid.flatten(1)[:, None].float()  # [B, 1, P]
        truth = _one_hot(safe, c).flatten(2) * v  # [B, C, P]
        # An ignored pixel gets error 0: sorted after every positive error and
        # with no foreground, it cannot change any prefix the loss sums over,
        # which is the same as removing it, without a data-dependent shape.
        errors = (truth - logits.softmax(1).flatten(2)).abs() * v
        if not self.per_image:  # the whole batch as one image
            truth = truth.transpose(0, 1).reshape(1, c, -1)
            errors = errors.transpose(0, 1).reshape(1, c, -1)
        per_class = _lovasz_per_class(errors, truth)  # [N, C]
        present = (truth.sum(-1) > 0).float()
        if self.classes == "present":
            per_image = _safe_div((per_class * present).sum(1), present.sum(1))
        else:
            per_image = per_class.mean(1)
        has_valid = (present.sum(1) > 0).float()  # every valid pixel makes its class present
        return _safe_div((per_image * has_valid).sum(), has_valid.sum())


class BoundaryLoss(nn.Module):
    """Boundary loss: ``1 - BF1`` of the class boundaries, averaged over classes.

    Bokhovkin & Burnaev 2019, "Boundary Loss for Remote Sensing Imagery
    Semantic Segmentation" (ISNN). For each image and class, boundaries of
    the one-hot truth ``g`` and of the softmax prediction ``p`` come from max
    pooling: ``b(x) = maxpool_theta0(1 - x) - (1 - x)``; the extended
    boundaries are ``maxpool_theta(b)``. Then ``P = sum(b_p * ext(b_g)) /
    sum(b_p)``, ``R = sum(ext(b_p) * b_g) / sum(b_g)`` and ``BF1 = 2PR / (P + R)``.

    Two choices the paper leaves open:

    * Ignored pixels are treated like the outside of the image (which max
      pooling pads with -inf): they count as inside every class, so they
      never turn a neighbour into a boundary, and their own boundary values
      are zeroed in both maps. A region of ignored pixels therefore gives the
      same loss as cropping it away.
    * The mean runs over the (image, class) pairs whose truth has a boundary.
      The reference code averages over all pairs, where a class absent from
      an image (or filling it) scores BF1 = 0 with zero gradient: a constant
      that only dilutes the loss. A batch with no boundary at all gives 0.
    """

    def __init__(self, ignore_index: int = 255, theta0: int = 3, theta: int = 5, eps: float = 1e-7):
        super().__init__()
        for name, k in (("theta0", theta0), ("theta", theta)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be an odd positive int (a centred pooling window), got {k!r}")
        self.ignore_index = ignore_index
        self.theta0 = theta0
        self.theta = theta
        self.eps = eps

    @staticmethod
    def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=k, stride=1, padding=k // 2)

    def _boundary(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outside = (1 - x) * v  # 0 at ignored pixels: "inside every class"
        return (self._pool(outside, self.theta0) - outside) * v

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe = _prepare(logits, target, self.ignore_index)
        v = valid[:, None].float()
        gt_b = self._boundary(_one_hot(safe, logits.shape[1]), v)
        pred_b = self._boundary(logits.softmax(1), v)
        gt_ext = self._pool(gt_b, self.theta)
        pred_ext = self._pool(pred_b, self.theta)
        dims = (2, 3)
        precision = (pred_b * gt_ext).sum(dims) / (pred_b.sum(dims) + self.eps)
        recall = (pred_ext * gt_b).sum(dims) / (gt_b.sum(dims) + self.eps)
        bf1 = 2 * precision * recall / (precision + recall + self.eps)
        has_boundary = (gt_b.sum(dims) > 0).float()  # [B, C]
        return _safe_div(((1 - bf1) * has_boundary).sum(), has_boundary.sum())


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the (2r+1) x (2r+1) square around each pixel, as a row pass then a column pass (exact for a square).

    Padding counts as -inf, so the outside of the image never wins.
    """
    if radius == 0:
        return x
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))


def boundary_bands(safe_target: torch.Tensor, valid: torch.Tensor, distances: Sequence[int]) -> torch.Tensor:
    """``[B, H, W]`` band index per pixel: how many of the ascending ``distances`` its boundary distance exceeds.

    A pixel's boundary distance is the chessboard (L-inf) distance to the
    nearest valid pixel of another class, so a pixel touching another class
    is at distance 1. Band 0 holds the pixels within ``distances[0]``, band
    ``len(distances)`` those farther than every distance (or with no other
    class in the image). Another class lies within ``d`` of a pixel exactly
    when the largest label within ``d`` is above its own or the smallest
    below it, so two max-pool dilations decide it for all classes at once
    (C-fold cheaper than dilating a one-hot map); the dilations grow from
    one distance to the next. Ignored pixels carry no label: like the
    outside of the image, they are nobody's neighbour.
    """
    labels = safe_target.float()[:, None]  # exact: class indices are far below 2**24
    largest = labels.masked_fill(~valid[:, None], float("-inf"))
    smallest_neg = (-labels).masked_fill(~valid[:, None], float("-inf"))
    bands = torch.zeros_like(safe_target)
    reached = 0
    for d in distances:
        largest, smallest_neg = _dilate(largest, d - reached), _dilate(smallest_neg, d - reached)
        reached = d
        near = (largest > labels) | (-smallest_neg < labels)
        bands += (~near[:, 0]).long()
    return bands


class BoundaryAwareCrossEntropyLoss(nn.Module):
    """Cross-entropy weighted by each pixel's distance to the nearest label boundary: FDNet's boundary-aware loss.

    Zhen, Wang, Zhou, Fang & Quan 2019, "Learning Fully Dense Neural Networks
    for Image Semantic Segmentation" (AAAI): pixels are split into sets by
    their distance to the nearest boundary, and each set's loss is weighted by
    alpha_k, larger near the boundaries, which makes boundary pixels the hard
    examples. Only that much of the paper could be read (no code exists): the
    distance metric, the bands, the weights and the normalisation here are
    our choices, **unverified** (docs/models/hrnet_autodeeplab_fdnet.md).

    * The distance is `boundary_bands`'s: chessboard pixels to the nearest
      valid pixel of another class (a pixel next to one is at 1).
    * A pixel within ``distances[k]`` (and not within ``distances[k - 1]``)
      has weight ``alphas[k]``; one beyond all of them ``alphas[-1]``. The
      defaults (within 5 / 10 / 20 pixels: 2, 1.5, 1.25; farther: 1) are
      ours.
    * The loss is ``sum_i a_i w_i CE_i / sum_i a_i w_i`` over valid pixels
      (``w``: the class weights, if any): a weighted mean like weighted
      cross-entropy, so its scale does not depend on how much boundary an
      image has, and with all alphas equal it is exactly `CrossEntropyLoss`.

    Ignored pixels are neither a class nor a boundary (see `boundary_bands`),
    so an ignored region gives the loss of the image cropped to the rest.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        distances: Sequence[int] = (5, 10, 20),
        alphas: Sequence[float] = (2.0, 1.5, 1.25, 1.0),
        class_weights: torch.Tensor | Sequence[float] | None = None,
    ):
        super().__init__()
        distances, alphas = tuple(distances), tuple(float(a) for a in alphas)
        increasing = all(isinstance(d, int) for d in distances) and list(distances) == sorted(set(distances))
        if not distances or not increasing or distances[0] < 1:
            raise ValueError(f"distances must be increasing positive ints (pixels), got {distances!r}")
        if len(alphas) != len(distances) + 1 or any(a <= 0 for a in alphas):
            raise ValueError(f"alphas needs {len(distances) + 1} positive weights (one per band within each "
                             f"distance, one beyond the last), got {alphas!r}")
        self.ignore_index = ignore_index
        self.distances = distances
        self.register_buffer("alphas", torch.tensor(alphas), persistent=False)
        self.register_buffer("class_weights", _as_weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, valid, safe = _prepare(logits, target, self.ignore_index)
        with torch.no_grad():  # the weights are a function of the target alone
            weight = self.alphas.to(logits.device)[boundary_bands(safe, valid, self.distances)] * valid
            if self.class_weights is not None:
                weight = weight * self.class_weights.to(logits.device)[safe]
        per_pixel = F.cross_entropy(logits, safe, reduction="none")
        return _safe_div((per_pixel * weight).sum(), weight.sum())


# ------------------------------------------------------------- combining

LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "ohem": OhemCrossEntropyLoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "lovasz": LovaszSoftmaxLoss,
    "boundary": BoundaryLoss,
    "boundary_aware": BoundaryAwareCrossEntropyLoss,
}


def labels_at(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``target`` (N, H, W) at ``size`` by nearest sampling: for aux logits a model returns below the input's size.

    Scoring a coarse auxiliary head at its own resolution costs a fraction
    of upsampling its logits to the labels' (LR-ASPP's ``aux_output_stride``);
    nearest sampling keeps every label a real class or the ignore index.
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(target.dtype)


class CompositeLoss(nn.Module):
    """``sum_i w_i L_i(out) + aux_weight * sum_a sum_i w_i L_i(aux_a)``.

    ``terms`` are ``(name, weight, loss)`` triples; the forward takes the
    model output (logits, or a `SegOutput` with aux logits, one tensor or a
    tuple of them, at the target's size or smaller: `labels_at`) and the
    target. Each aux sum uses the
    same terms and weights: deep supervision as in PSPNet (Zhao et al. 2017,
    aux weight 0.4).
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]], aux_weight: float = 0.4):
        super().__init__()
        if not terms:
            raise ValueError("a composite loss needs at least one term")
        self.names = [name for name, _, _ in terms]
        self.weights = [float(weight) for _, weight, _ in terms]
        self.losses = nn.ModuleList(loss for _, _, loss in terms)
        self.aux_weight = aux_weight

    def weighted_sum(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the terms on one set of logits."""
        total = None
        for weight, loss in zip(self.weights, self.losses):
            value = weight * loss(logits, target)
            total = value if total is None else total + value
        return total

    def forward(self, output: torch.Tensor | SegOutput, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, SegOutput):
            return self.weighted_sum(output, target)
        aux = output.aux if isinstance(output.aux, tuple) else (output.aux,)
        total = self.weighted_sum(output.out, target)
        for logits in aux:  # several heads: each weighs aux_weight, as BiSeNet V2's booster heads
            total = total + self.aux_weight * self.weighted_sum(logits, labels_at(target, logits.shape[-2:]))
        return total

    def extra_repr(self) -> str:
        terms = " + ".join(f"{w:g} * {n}" for n, w in zip(self.names, self.weights))
        return f"{terms}; aux_weight={self.aux_weight:g}"


def _parameters(cls: type[nn.Module]) -> list[str]:
    """The constructor parameters a term may set (ignore_index is set once for all)."""
    names = inspect.signature(cls.__init__).parameters
    return [n for n in names if n not in ("self", "ignore_index")]


def build_loss(
    terms: Sequence[Mapping[str, Any]],
    *,
    ignore_index: int,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    aux_weight: float = 0.4,
) -> CompositeLoss:
    """A `CompositeLoss` from term dicts, e.g. ``[{"name": "ce"}, {"name": "dice", "weight": 0.5}]``.

    Each dict has a ``name`` (a key of `LOSSES`), an optional ``weight``
    (default 1) and any constructor parameters of that loss. ``ignore_index``
    is shared by every term; ``class_weights`` goes to every term that takes
    class weights (``ce``, ``ohem``, ``boundary_aware``) unless the term sets its own. An unknown
    name or parameter raises ``ValueError`` listing the valid ones.
    """
    if isinstance(terms, Mapping) or not terms:
        raise ValueError(f"loss terms must be a non-empty list of dicts, got {terms!r}")
    built = []
    for i, term in enumerate(terms):
        if not isinstance(term, Mapping) or "name" not in term:
            raise ValueError(f"loss term {i} must be a dict with a 'name', got {term!r}")
        params = dict(term)
        name = params.pop("name")
        weight = params.pop("weight", 1.0)
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"loss {name!r}: weight must be a number, got {weight!r}")
        cls = LOSSES[name]
        accepted = _parameters(cls)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = " (ignore_index is set once, for all terms)" if "ignore_index" in unknown else ""
            raise ValueError(
                f"loss {name!r} got unknown parameter(s) {', '.join(unknown)}{hint}; "
                f"valid: {', '.join(['weight', *accepted])}"
            )
        if "class_weights" in accepted and "class_weights" not in params:
            params["class_weights"] = class_weights
        built.append((name, weight, cls(ignore_index=ignore_index, **params)))
    return CompositeLoss(built, aux_weight=aux_weight)


class SegmentationLoss(CompositeLoss):
    """Cross-entropy on the main logits plus ``aux_weight`` x the same on aux logits.

    The engine's default; ``build_loss([{"name": "ce", ...}], ...)`` builds
    the same thing.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.4,
    ):
        ce = CrossEntropyLoss(ignore_index, class_weights, label_smoothing)
        super().__init__([("ce", 1.0, ce)], aux_weight=aux_weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
