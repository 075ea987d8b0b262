"""Scores derived from the confusion matrix, checked against torchmetrics' own metrics."""
from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

from imseg.losses import SegmentationLoss
from imseg.metrics import ConfusionMatrix, scores_from_confusion


def _random_batch(seed: int, k: int = 5, ignore: int = 255):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (3, 17, 23), generator=g)
    target[:, :3] = ignore
    # predictions agree with the truth about 60% of the time
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target, torch.randint(0, k, target.shape, generator=g))
    pred[pred == ignore] = 0
    return pred, target


def test_streaming_scores_equal_torchmetrics():
    k, ignore = 5, 255
    cm = ConfusionMatrix(k, ignore)
    preds, targets = [], []
    for seed in range(4):  # streamed in pieces, compared on the whole
        p, t = _random_batch(seed, k, ignore)
        cm.update(p, t)
        preds.append(p)
        targets.append(t)
    p, t = torch.cat(preds), torch.cat(targets)
    s = cm.compute()
    miou = multiclass_jaccard_index(p, t, num_classes=k, ignore_index=ignore, average="macro")
    acc = multiclass_accuracy(p, t, num_classes=k, ignore_index=ignore, average="micro")
    macc = multiclass_accuracy(p, t, num_classes=k, ignore_index=ignore, average="macro")
    per_class = multiclass_jaccard_index(p, t, num_classes=k, ignore_index=ignore, average="none")
    assert s["mIoU"] == pytest.approx(miou.item(), abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(acc.item(), abs=1e-6)
    assert s["mean_class_accuracy"] == pytest.approx(macc.item(), abs=1e-6)
    assert list(s["per_class_iou"].values()) == pytest.approx(per_class.tolist(), abs=1e-6)


def test_absent_class_is_reported_absent_not_zero():
    cm = torch.tensor([[5, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2: no truth, no prediction
    s = scores_from_confusion(cm, ["a", "b", "c"])
    assert s["per_class_iou"]["c"] is None
    assert s["mIoU"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    # fwIoU weights each class's IoU by its share of ground-truth pixels
    assert s["fwIoU"] == pytest.approx(6 / 12 * 5 / 8 + 6 / 12 * 4 / 7)


def test_loss_ignores_pixels_and_survives_an_all_ignored_batch():
    loss = SegmentationLoss(ignore_index=255)
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), 255)
    value = loss(logits, target)
    assert value.item() == 0.0 and not math.isnan(value.item())
    value.backward()
    assert torch.isfinite(logits.grad).all()
    target[0, 0, 0] = 2
    expected = torch.nn.functional.cross_entropy(logits[:1, :, :1, :1], target[:1, :1, :1])
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_boundary_f1_is_one_for_a_perfect_prediction_and_drops_with_a_shift():
    from imseg.metrics import BoundaryF1

    target = torch.zeros(1, 60, 80, dtype=torch.long)
    target[:, 20:40, 30:50] = 1
    perfect = BoundaryF1(2)
    perfect.update(target.clone(), target)
    assert perfect.compute()["mean_bf1"] == pytest.approx(1.0)
    # 0.75% of the 100-pixel diagonal rounds to 1 pixel: a 1-pixel shift is
    # tolerated, a 5-pixel shift is not.
    near, far = BoundaryF1(2), BoundaryF1(2)
    near.update(torch.roll(target, 1, dims=2), target)
    far.update(torch.roll(target, 5, dims=2), target)
    assert near.compute()["per_class_bf1"]["1"] == pytest.approx(1.0)
    assert far.compute()["per_class_bf1"]["1"] < 0.6


def test_boundary_f1_ignores_ignored_pixels_and_absent_classes():
    from imseg.metrics import BoundaryF1

    target = torch.zeros(1, 40, 40, dtype=torch.long)
    target[:, :, 20:] = 255
    m = BoundaryF1(3)
    pred = torch.zeros_like(target)
    pred[:, 10:15, 25:35] = 1  # a blob drawn where the truth is ignored
    m.update(pred, target)
    s = m.compute(["a", "b", "c"])
    assert s["per_class_bf1"]["b"] is None and s["per_class_bf1"]["c"] is None


def test_ece_matches_a_direct_computation():
    from imseg.metrics import CalibrationError

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, 11, generator=g) * 3
    target = torch.randint(0, 4, (2, 9, 11), generator=g)
    target[0, 0] = 255
    m = CalibrationError(bins=10)
    m.update(logits, target)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    valid = target != 255
    conf, hit = conf[valid], (pred[valid] == target[valid]).float()
    expected = 0.0
    for b in range(10):
        sel = (conf > b / 10) & (conf <= (b + 1) / 10)
        if sel.any():
            expected += sel.float().mean() * (hit[sel].mean() - conf[sel].mean()).abs()
    assert m.compute()["ece"] == pytest.approx(float(expected), abs=1e-6)


def test_dice_precision_recall_from_the_matrix():
    cm = torch.tensor([[5, 1], [2, 4]])
    s = scores_from_confusion(cm, ["a", "b"])
    assert s["per_class_dice"]["a"] == pytest.approx(2 * 5 / (6 + 7))
    assert s["per_class_precision"]["a"] == pytest.approx(5 / 7)
    assert s["per_class_recall"]["b"] == pytest.approx(4 / 6)


@pytest.mark.camvid
def test_scores_on_camvid_label_maps_equal_torchmetrics(camvid_root):
    """Real CamVid structure: each test frame's labels scored against the next frame's as the 'prediction'."""
    import numpy as np
    from PIL import Image

    names = sorted((camvid_root / "testannot").glob("*.png"))[:12]
    masks = [torch.from_numpy(np.asarray(Image.open(p)).astype(np.int64)) for p in names]
    targets = torch.stack(masks[:-1])
    preds = torch.stack(masks[1:])
    targets[targets == 11] = 255  # void is ignored
    preds[preds == 11] = 0  # a prediction is always a class
    cm = ConfusionMatrix(11, 255)
    for t, p in zip(targets, preds):  # streamed one image at a time
        cm.update(p[None], t[None])
    s = cm.compute()
    per_class = multiclass_jaccard_index(preds, targets, num_classes=11, ignore_index=255, average="none")
    present = torch.bincount(targets[targets != 255], minlength=11) > 0
    assert s["mIoU"] == pytest.approx(per_class[present].mean().item(), abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(
        multiclass_accuracy(preds, targets, num_classes=11, ignore_index=255, average="micro").item(), abs=1e-6)
    for name, ours, theirs in zip(s["per_class_iou"], s["per_class_iou"].values(), per_class.tolist()):
        if ours is not None:
            assert ours == pytest.approx(theirs, abs=1e-6), name


def _disk_dilation(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """The plain definition: a (2r+1)^2 disk convolution of a ``[N, H, W]`` mask."""
    import torch.nn.functional as F

    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()
    return F.conv2d(mask.float()[:, None], disk[None, None], padding=radius)[:, 0] > 0


@pytest.mark.parametrize("radius", [1, 2, 4, 5, 9])
def test_boundary_dilation_is_exactly_a_disk_for_every_bit(radius):
    from imseg.metrics import _dilate_bits

    g = torch.Generator().manual_seed(radius)
    masks = torch.rand(5, 2, 37, 53, generator=g) > 0.98  # 5 classes, 2 images
    bits = sum(masks[c].long() << c for c in range(5))
    got = _dilate_bits(bits, radius)
    for c in range(5):
        assert torch.equal(((got >> c) & 1).bool(), _disk_dilation(masks[c], radius)), c


def _reference_bf1(pred: torch.Tensor, target: torch.Tensor, k: int, ignore: int, radius: int):
    """BF1 sums the slow, obvious way: one-hot maps, erosion by min-pooling, disk convolutions."""
    import torch.nn.functional as F

    valid = target != ignore
    classes = torch.arange(k)[None, :, None, None]
    gt, pr = (target[:, None] == classes) & valid[:, None], (pred[:, None] == classes) & valid[:, None]

    def edges(x):
        return (x.float() + F.max_pool2d(-x.float(), 3, stride=1, padding=1)) > 0

    gt_b, pr_b = edges(gt) & valid[:, None], edges(pr) & valid[:, None]
    b = target.shape[0]
    near = lambda m: _disk_dilation(m.reshape(b * k, *m.shape[2:]), radius).reshape(m.shape)  # noqa: E731
    n_pr, n_gt = pr_b.sum((2, 3)).double(), gt_b.sum((2, 3)).double()
    precision = (pr_b & near(gt_b)).sum((2, 3)) / n_pr.clamp(min=1)
    recall = (gt_b & near(pr_b)).sum((2, 3)) / n_gt.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    appears = (n_pr > 0) | (n_gt > 0)
    return (f1 * appears).sum(0), appears.sum(0).double()


@pytest.mark.parametrize("k", [3, 11, 70])  # 70: more classes than one 62-bit word holds
def test_boundary_f1_equals_the_one_hot_definition(k):
    from imseg.metrics import BoundaryF1

    g = torch.Generator().manual_seed(k)
    blocks = lambda: torch.randint(0, k, (2, 9, 12), generator=g).repeat_interleave(6, 1).repeat_interleave(6, 2)  # noqa: E731
    target, pred = blocks(), blocks()
    target[:, 20:30, 10:40] = 255  # an ignored band
    pred[0, :, :7] = torch.randint(0, k, (54, 7), generator=g)  # ragged edges too
    m = BoundaryF1(k, ignore_index=255, tolerance=0.04)  # 4 pixels on this 54x72 image
    m.update(pred, target)
    radius = round(0.04 * (54**2 + 72**2) ** 0.5)
    assert radius == 4
    total, count = _reference_bf1(pred, target, k, 255, radius)
    torch.testing.assert_close(m.sum, total.double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(m.count, count)
