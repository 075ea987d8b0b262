"""Losses against independent references, the ignore-index contract, and SMP parity.

Every reference below is written from the paper's formula with plain loops
over pixels and classes in float64 numpy, not by calling imseg code, so a
shared bug cannot hide. Inputs are small (2 x 4 x 9 x 12) to keep this file
fast on a 2-core CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imseg.losses import (
    LOSSES,
    BoundaryAwareCrossEntropyLoss,
    BoundaryLoss,
    CompositeLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    SegmentationLoss,
    build_loss,
    labels_at,
)
from imseg.models.registry import SegOutput

IGNORE = 255
B, C, H, W = 2, 4, 9, 12
EPS = 1e-7


# ---------------------------------------------------------------- inputs


def make_case(kind: str = "scattered", seed: int = 0, binary: bool = False):
    """Logits and a blocky target (so classes have regions and boundaries) with ignored pixels.

    kind: "none" (nothing ignored), "scattered" (~20% random pixels),
    "whole_class" (class 1 ignored everywhere, class 3 in image 1),
    "whole_image" (image 0 entirely ignored), "all" (every pixel).
    """
    g = torch.Generator().manual_seed(seed)
    n_classes = 2 if binary else C
    coarse = torch.randint(0, n_classes, (B, 1, 3, 4), generator=g).float()
    target = F.interpolate(coarse, size=(H, W), mode="nearest")[:, 0].long()
    logits = 2 * torch.randn(B, 1 if binary else C, H, W, generator=g)
    if kind == "scattered":
        target[torch.rand(B, H, W, generator=g) < 0.2] = IGNORE
    elif kind == "whole_class":
        target[target == 1] = IGNORE
        target[1][target[1] == 3] = IGNORE
    elif kind == "whole_image":
        target[0] = IGNORE
    elif kind == "all":
        target[:] = IGNORE
    else:
        assert kind == "none"
    return logits.requires_grad_(), target


KINDS = ["none", "scattered", "whole_class", "whole_image", "all"]


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def as_np(logits: torch.Tensor, target: torch.Tensor):
    return logits.detach().double().numpy(), target.numpy()


def valid_pixels(t: np.ndarray, images=None):
    images = range(t.shape[0]) if images is None else images
    return [(b, i, j) for b in images for i in range(t.shape[1]) for j in range(t.shape[2]) if t[b, i, j] != IGNORE]


# ------------------------------------------------------------- references


def ref_ce(logits, target, weights=None, smoothing=0.0):
    """Weighted CE with label smoothing: sum over pixels / sum of the true classes' weights."""
    x, t = as_np(logits, target)
    n_cls = x.shape[1]
    w = np.ones(n_cls) if weights is None else np.asarray(weights, dtype=float)
    logp = np.log(np_softmax(x))
    num = den = 0.0
    for b, i, j in valid_pixels(t):
        y = t[b, i, j]
        smooth_term = sum(w[c] * -logp[b, c, i, j] for c in range(n_cls))
        num += (1 - smoothing) * w[y] * -logp[b, y, i, j] + smoothing / n_cls * smooth_term
        den += w[y]
    return num / den if den > 0 else 0.0


def ref_ohem(logits, target, thresh, min_kept, weights=None):
    x, t = as_np(logits, target)
    w = np.ones(x.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    p = np_softmax(x)
    pixels = valid_pixels(t)
    p_true = [p[b, t[b, i, j], i, j] for b, i, j in pixels]
    hardest_first = sorted(range(len(pixels)), key=lambda k: p_true[k])
    kept = {k for k in range(len(pixels)) if p_true[k] < thresh} | set(hardest_first[:min_kept])
    num = den = 0.0
    for k in kept:
        b, i, j = pixels[k]
        y = t[b, i, j]
        num += w[y] * -math.log(p[b, y, i, j])
        den += w[y]
    return num / den if den > 0 else 0.0


def ref_dice(logits, target, smooth, classes, binary=False):
    x, t = as_np(logits, target)
    if binary:
        probs = {1: 1 / (1 + np.exp(-x[:, 0]))}  # the foreground only
    else:
        sm = np_softmax(x)
        probs = {c: sm[:, c] for c in range(x.shape[1])}
    pixels = valid_pixels(t)
    if not pixels:
        return 0.0
    losses = []
    for c, p in probs.items():
        inter = sum(p[b, i, j] * (t[b, i, j] == c) for b, i, j in pixels)
        p_sum = sum(p[b, i, j] for b, i, j in pixels)
        g_sum = sum(float(t[b, i, j] == c) for b, i, j in pixels)
        if classes == "present" and g_sum == 0:
            continue
        losses.append(1 - (2 * inter + smooth) / max(p_sum + g_sum + smooth, EPS))
    return float(np.mean(losses)) if losses else 0.0


def ref_focal(logits, target, gamma, alpha=None, binary=False):
    x, t = as_np(logits, target)
    pixels = valid_pixels(t)
    total = 0.0
    for b, i, j in pixels:
        y = t[b, i, j]
        if binary:
            p = 1 / (1 + math.exp(-x[b, 0, i, j]))
            pt = p if y == 1 else 1 - p
            a = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        else:
            pt = np_softmax(x[b : b + 1, :, i : i + 1, j : j + 1])[0, y, 0, 0]
            a = 1.0 if alpha is None else alpha[y]
        total += -a * (1 - pt) ** gamma * math.log(pt)
    return total / len(pixels) if pixels else 0.0


def lovasz_from_paper(errors: np.ndarray, fg: np.ndarray) -> float:
    """Berman et al. 2018, eq. 9 / Alg. 1: sum_k e_(k) * (Delta(k) - Delta(k-1)).

    Delta(k) is the Jaccard loss |M| / |{y = c} u M| when M is the set of the
    k pixels with the largest errors.
    """
    order = np.argsort(-errors, kind="stable")
    e, g = errors[order], fg[order]
    loss, previous = 0.0, 0.0
    for k in range(1, len(e) + 1):
        delta = k / (g.sum() + (1 - g[:k]).sum())
        loss += e[k - 1] * (delta - previous)
        previous = delta
    return loss


def ref_lovasz(logits, target, per_image, classes):
    x, t = as_np(logits, target)
    p = np_softmax(x)
    groups = [[b] for b in range(t.shape[0])] if per_image else [list(range(t.shape[0]))]
    group_losses = []
    for images in groups:
        pixels = valid_pixels(t, images)
        if not pixels:
            continue  # an all-ignored image is left out of the mean
        class_losses = []
        for c in range(x.shape[1]):
            fg = np.array([float(t[b, i, j] == c) for b, i, j in pixels])
            if classes == "present" and fg.sum() == 0:
                continue
            errors = np.abs(fg - np.array([p[b, c, i, j] for b, i, j in pixels]))
            class_losses.append(lovasz_from_paper(errors, fg))
        group_losses.append(np.mean(class_losses))
    return float(np.mean(group_losses)) if group_losses else 0.0


def ref_boundary(logits, target, theta0=3, theta=5):
    """Bokhovkin & Burnaev 2019 with explicit windows.

    Pooling windows are clipped to the image (max pooling pads with -inf),
    and an ignored pixel counts as inside every class (its "1 - x" is 0), so
    it never makes a neighbour a boundary; its own boundary value is 0.
    """
    x, t = as_np(logits, target)
    p = np_softmax(x)

    def window_max(a, i, j, k):
        r = k // 2
        return a[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].max()

    def boundary(m, valid):
        outside = np.where(valid, 1 - m, 0.0)
        out = np.zeros_like(outside)
        for i, j in np.ndindex(*m.shape):
            if valid[i, j]:
                out[i, j] = window_max(outside, i, j, theta0) - outside[i, j]
        return out

    def extend(bmap):
        return np.array([[window_max(bmap, i, j, theta) for j in range(bmap.shape[1])] for i in range(bmap.shape[0])])

    losses = []
    for b in range(x.shape[0]):
        valid = t[b] != IGNORE
        for c in range(x.shape[1]):
            gt_b = boundary((t[b] == c).astype(float), valid)
            if gt_b.sum() == 0:
                continue  # no boundary of this class here: left out of the mean
            pred_b = boundary(p[b, c], valid)
            precision = (pred_b * extend(gt_b)).sum() / (pred_b.sum() + EPS)
            recall = (extend(pred_b) * gt_b).sum() / (gt_b.sum() + EPS)
            losses.append(1 - 2 * precision * recall / (precision + recall + EPS))
    return float(np.mean(losses)) if losses else 0.0


def ref_boundary_aware(logits, target, distances, alphas, weights=None):
    """FDNet's boundary-aware CE as we define it: each pixel's CE times alphas[band], where band counts the
    distances its chessboard distance to the nearest valid pixel of another class exceeds; weighted mean."""
    x, t = as_np(logits, target)
    w = np.ones(x.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    logp = np.log(np_softmax(x))
    num = den = 0.0
    for b, i, j in valid_pixels(t):
        others = [max(abs(i - q), abs(j - r)) for _, q, r in valid_pixels(t, [b]) if t[b, q, r] != t[b, i, j]]
        dist = min(others, default=math.inf)
        a = alphas[sum(dist > d for d in distances)] * w[t[b, i, j]]
        num += a * -logp[b, t[b, i, j], i, j]
        den += a
    return num / den if den > 0 else 0.0


def close(value: torch.Tensor, expected: float, rel: float = 1e-5, abs: float = 1e-6) -> bool:
    return value.item() == pytest.approx(expected, rel=rel, abs=abs)


# -------------------------------------------------------- values vs references


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(kind, weighted, smoothing):
    logits, target = make_case(kind)
    weights = [1.0, 2.0, 0.5, 3.0] if weighted else None
    value = CrossEntropyLoss(IGNORE, weights, smoothing)(logits, target)
    assert close(value, ref_ce(logits, target, weights, smoothing))
    if kind != "all":  # and it is PyTorch's own definition, which is NaN only when nothing is valid
        w = torch.tensor(weights) if weighted else None
        expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=smoothing)
        assert close(value, expected.item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "thresh,min_kept",
    [(0.7, 0), (0.7, 20), (0.3, 150), (0.05, 10_000)],  # threshold rules / min_kept rules / more than valid
)
def test_ohem(kind, thresh, min_kept):
    logits, target = make_case(kind)
    value = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept)(logits, target)
    assert close(value, ref_ohem(logits, target, thresh, min_kept))


def test_ohem_class_weights_and_edge_cases():
    logits, target = make_case("scattered")
    w = [1.0, 2.0, 0.5, 3.0]
    value = OhemCrossEntropyLoss(IGNORE, thresh=0.6, min_kept=30, class_weights=w)(logits, target)
    assert close(value, ref_ohem(logits, target, 0.6, 30, w))
    # thresh 1 keeps every valid pixel: plain cross-entropy
    assert close(OhemCrossEntropyLoss(IGNORE, thresh=1.0, min_kept=0)(logits, target), ref_ce(logits, target))
    # a perfectly fitted batch with min_kept=0 keeps nothing: 0, not NaN
    confident = 50 * F.one_hot(target.clamp(max=C - 1), C).permute(0, 3, 1, 2).float()
    assert OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=0)(confident, target).item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_dice_multiclass(kind, smooth, classes):
    logits, target = make_case(kind)
    value = DiceLoss(IGNORE, smooth=smooth, classes=classes)(logits, target)
    assert close(value, ref_dice(logits, target, smooth, classes))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("classes", ["present", "all"])
def test_dice_binary(kind, classes):
    logits, target = make_case(kind, binary=True)
    value = DiceLoss(IGNORE, mode="binary", smooth=1.0, classes=classes)(logits, target)
    assert close(value, ref_dice(logits, target, 1.0, classes, binary=True))


def test_dice_absent_class_without_smoothing_is_finite():
    # Class 3 absent from target and (nearly) from the prediction, smooth=0:
    # "present" leaves it out; "all" scores it 1 - 0/sum(p) = 1, never 0/0.
    logits, target = make_case("none")
    target[target == 3] = 0
    logits = logits.detach().clone()
    logits[:, 3] = -30.0
    logits.requires_grad_()
    for classes in ("present", "all"):
        value = DiceLoss(IGNORE, smooth=0.0, classes=classes)(logits, target)
        value.backward()
        assert math.isfinite(value.item()) and torch.isfinite(logits.grad).all()
        assert close(value, ref_dice(logits, target, 0.0, classes))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, [0.25, 1.0, 2.0, 0.5]])
def test_focal_multiclass(kind, gamma, alpha):
    logits, target = make_case(kind)
    value = FocalLoss(IGNORE, gamma=gamma, alpha=alpha)(logits, target)
    assert close(value, ref_focal(logits, target, gamma, alpha))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_binary(kind, alpha):
    logits, target = make_case(kind, binary=True)
    value = FocalLoss(IGNORE, gamma=2.0, alpha=alpha, mode="binary")(logits, target)
    assert close(value, ref_focal(logits, target, 2.0, alpha, binary=True))


def test_focal_gamma_zero_is_cross_entropy():
    logits, target = make_case("scattered")
    assert close(FocalLoss(IGNORE, gamma=0.0)(logits, target), ref_ce(logits, target))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz(kind, per_image, classes):
    logits, target = make_case(kind)
    value = LovaszSoftmaxLoss(IGNORE, per_image=per_image, classes=classes)(logits, target)
    assert close(value, ref_lovasz(logits, target, per_image, classes))


@pytest.mark.parametrize("kind", KINDS)
def test_boundary(kind):
    logits, target = make_case(kind)
    value = BoundaryLoss(IGNORE)(logits, target)
    assert close(value, ref_boundary(logits, target))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("distances, alphas", [((1, 2), (3.0, 2.0, 1.0)), ((2,), (5.0, 0.5))])
def test_boundary_aware(kind, distances, alphas):
    logits, target = make_case(kind)
    w = [1.0, 2.0, 0.5, 3.0]
    value = BoundaryAwareCrossEntropyLoss(IGNORE, distances, alphas, class_weights=w)(logits, target)
    assert close(value, ref_boundary_aware(logits, target, distances, alphas, w))


def test_boundary_aware_weights_pixels_near_boundaries_and_equal_alphas_are_ce():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :, 8:] = 1  # one vertical boundary between columns 7 and 8
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 1, :, 0] = 5.0  # wrong far from the boundary (column 0: 8 pixels away)
    far = BoundaryAwareCrossEntropyLoss(IGNORE, distances=(1, 4), alphas=(4.0, 2.0, 1.0))(logits, target)
    near_logits = torch.zeros(1, 2, 16, 16)
    near_logits[:, 1, :, 7] = 5.0  # the same mistake next to the boundary
    near = BoundaryAwareCrossEntropyLoss(IGNORE, distances=(1, 4), alphas=(4.0, 2.0, 1.0))(near_logits, target)
    assert near.item() > far.item()
    logits, target = make_case("scattered")
    equal = BoundaryAwareCrossEntropyLoss(IGNORE, distances=(1, 3), alphas=(2.0, 2.0, 2.0))(logits, target)
    torch.testing.assert_close(equal, CrossEntropyLoss(IGNORE)(logits, target))


def test_boundary_aware_from_a_config_term_and_bad_parameters():
    logits, target = make_case("scattered")
    loss = build_loss([{"name": "boundary_aware", "distances": [1, 2], "alphas": [3, 2, 1]}], ignore_index=IGNORE)
    assert close(loss(logits, target), ref_boundary_aware(logits, target, (1, 2), (3, 2, 1)))
    with pytest.raises(ValueError, match="increasing positive ints"):
        BoundaryAwareCrossEntropyLoss(IGNORE, distances=(4, 2))
    with pytest.raises(ValueError, match="alphas needs 3 positive weights"):
        BoundaryAwareCrossEntropyLoss(IGNORE, distances=(1, 2), alphas=(2.0, 1.0))


def test_boundary_other_windows():
    logits, target = make_case("scattered", seed=3)
    value = BoundaryLoss(IGNORE, theta0=5, theta=7)(logits, target)
    assert close(value, ref_boundary(logits, target, theta0=5, theta=7))


def test_boundary_tolerates_small_shifts_only():
    # Hard predictions: a prediction within (theta - 1) / 2 = 2 pixels of the
    # truth has BF1 = 1; one shifted further does not.
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1

    def hard_logits(t):
        return 40 * F.one_hot(t, 2).permute(0, 3, 1, 2).float()

    loss = BoundaryLoss(IGNORE)
    assert loss(hard_logits(target), target).item() < 1e-5
    assert loss(hard_logits(torch.roll(target, 2, dims=2)), target).item() < 1e-5
    assert loss(hard_logits(torch.roll(target, 4, dims=2)), target).item() > 0.2


# -------------------------------------------------- the ignore-index contract

# Every loss, with parameters that exercise the less common branches.
ALL_LOSSES = {
    "ce": lambda: CrossEntropyLoss(IGNORE, [1.0, 2.0, 0.5, 3.0], 0.1),
    "ohem": lambda: OhemCrossEntropyLoss(IGNORE, thresh=0.5, min_kept=25),
    "dice": lambda: DiceLoss(IGNORE),
    "dice_all_nosmooth": lambda: DiceLoss(IGNORE, smooth=0.0, classes="all"),
    "focal": lambda: FocalLoss(IGNORE, gamma=0.5, alpha=[0.25, 1.0, 2.0, 0.5]),
    "lovasz": lambda: LovaszSoftmaxLoss(IGNORE),
    "lovasz_image_all": lambda: LovaszSoftmaxLoss(IGNORE, per_image=True, classes="all"),
    "boundary": lambda: BoundaryLoss(IGNORE),
    "boundary_aware": lambda: BoundaryAwareCrossEntropyLoss(IGNORE, (1, 2), (3.0, 2.0, 1.0), [1.0, 2.0, 0.5, 3.0]),
    "composite": lambda: build_loss(
        [{"name": n} for n in LOSSES], ignore_index=IGNORE, class_weights=[1.0, 2.0, 0.5, 3.0]
    ),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1.0, 1e3])  # 1e3: saturated softmax, probabilities of exactly 0 and 1
def test_gradients_finite_and_zero_on_ignored_pixels(name, kind, scale):
    logits, target = make_case(kind)
    logits = (scale * logits.detach()).requires_grad_()
    value = ALL_LOSSES[name]()(logits, target)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.isfinite(logits.grad).all()
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    assert (logits.grad[ignored] == 0).all(), "an ignored pixel must not receive a gradient"
    if kind == "all":
        assert value.item() == 0.0


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_ignored_region_equals_cropping_it_away(name):
    # The strongest form of "ignored pixels contribute nothing": ignoring the
    # right 5 columns gives the loss of the image cut to the left 7. For the
    # boundary loss this also checks that an ignored region acts like the
    # image border.
    logits, target = make_case("none", seed=1)
    masked = target.clone()
    masked[..., 7:] = IGNORE
    loss = ALL_LOSSES[name]()
    cropped = loss(logits[..., :7], target[..., :7]).item()
    assert loss(logits, masked).item() == pytest.approx(cropped, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_ignored_image_equals_dropping_it(name):
    logits, target = make_case("whole_image", seed=2)
    loss = ALL_LOSSES[name]()
    assert loss(logits, target).item() == pytest.approx(loss(logits[1:], target[1:]).item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_low_precision_logits_are_computed_in_float32(name):
    logits, target = make_case("scattered")
    half = logits.detach().bfloat16()
    value = ALL_LOSSES[name]()(half, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ALL_LOSSES[name]()(half.float(), target).item(), rel=1e-6, abs=1e-7)


def test_shape_and_parameter_errors():
    logits, target = make_case("none")
    with pytest.raises(ValueError, match="upsample"):
        DiceLoss(IGNORE)(logits, target[:, :5])
    with pytest.raises(ValueError, match="one channel"):
        DiceLoss(IGNORE, mode="binary")(logits, target)
    with pytest.raises(ValueError, match="mode='binary'"):
        FocalLoss(IGNORE)(logits[:, :1], target.clamp(max=1))
    with pytest.raises(ValueError, match="mode"):
        DiceLoss(IGNORE, mode="multilabel")
    with pytest.raises(ValueError, match="one weight per class"):
        FocalLoss(IGNORE, alpha=0.25)
    with pytest.raises(ValueError, match="odd"):
        BoundaryLoss(IGNORE, theta0=4)


# ------------------------------------------------------------- composite


def test_build_loss_is_the_weighted_sum_and_applies_aux_weight():
    logits, target = make_case("scattered")
    aux, _ = make_case("scattered", seed=5)
    w = [1.0, 2.0, 0.5, 3.0]
    terms = [
        {"name": "ce", "weight": 1.0},
        {"name": "dice", "weight": 0.5, "smooth": 1.0},
        {"name": "boundary", "weight": 0.3},
    ]
    loss = build_loss(terms, ignore_index=IGNORE, class_weights=w, aux_weight=0.4)
    assert isinstance(loss, CompositeLoss)

    def expected(x):
        return ref_ce(x, target, w) + 0.5 * ref_dice(x, target, 1.0, "present") + 0.3 * ref_boundary(x, target)

    assert close(loss(logits, target), expected(logits))
    value = loss(SegOutput(logits, aux), target)
    assert close(value, expected(logits) + 0.4 * expected(aux))
    value.backward()
    assert torch.isfinite(aux.grad).all() and aux.grad.abs().sum() > 0


def test_composite_loss_scores_each_of_several_aux_outputs():
    logits, target = make_case("scattered")
    aux1, _ = make_case("scattered", seed=5)
    aux2, _ = make_case("scattered", seed=6)
    loss = build_loss([{"name": "ce"}], ignore_index=IGNORE, aux_weight=0.25)
    expected = ref_ce(logits, target, None) + 0.25 * (ref_ce(aux1, target, None) + ref_ce(aux2, target, None))
    assert close(loss(SegOutput(logits, (aux1, aux2)), target), expected)
    assert close(loss(SegOutput(logits, (aux1,)), target), loss(SegOutput(logits, aux1), target).item())


def test_coarse_aux_logits_are_scored_against_nearest_sampled_labels():
    target = torch.tensor([[[0, 0, 1, 1], [0, IGNORE, 1, 1], [2, 2, 3, 3], [2, 2, 3, IGNORE]]])
    assert labels_at(target, (4, 4)) is target
    assert labels_at(target, (2, 2)).tolist() == [[[0, 1], [2, 3]]]  # the top-left label of each 2x2 block
    logits = torch.randn(1, 4, 4, 4)
    coarse = torch.randn(1, 4, 2, 2)
    loss = build_loss([{"name": "ce"}], ignore_index=IGNORE, aux_weight=0.5)
    expected = ref_ce(logits, target) + 0.5 * ref_ce(coarse, labels_at(target, (2, 2)))
    assert close(loss(SegOutput(logits, (coarse,)), target), expected)


def test_build_loss_class_weights_go_to_ce_and_ohem_unless_a_term_sets_its_own():
    logits, target = make_case("scattered")
    shared, own = [1.0, 2.0, 0.5, 3.0], [3.0, 1.0, 1.0, 0.5]
    loss = build_loss(
        [{"name": "ce"}, {"name": "ohem", "thresh": 1.0, "min_kept": 0, "class_weights": own}],
        ignore_index=IGNORE,
        class_weights=shared,
    )
    assert close(loss(logits, target), ref_ce(logits, target, shared) + ref_ce(logits, target, own))


def test_build_loss_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="choose one of: ce, ohem, dice, focal, lovasz, boundary"):
        build_loss([{"name": "jaccard"}], ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"smoth.*valid: weight, mode, smooth, classes, eps"):
        build_loss([{"name": "dice", "smoth": 1.0}], ignore_index=IGNORE)
    with pytest.raises(ValueError, match="set once"):
        build_loss([{"name": "ce", "ignore_index": 0}], ignore_index=IGNORE)
    with pytest.raises(ValueError, match="'name'"):
        build_loss([{"weight": 1.0}], ignore_index=IGNORE)
    with pytest.raises(ValueError, match="non-empty"):
        build_loss([], ignore_index=IGNORE)
    with pytest.raises(ValueError, match="weight must be a number"):
        build_loss([{"name": "ce", "weight": "1"}], ignore_index=IGNORE)


def test_segmentation_loss_is_ce_plus_weighted_aux():
    logits, target = make_case("scattered")
    aux, _ = make_case("scattered", seed=5)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = SegmentationLoss(IGNORE, w, 0.1, 0.4)
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=0.1)
    expected_aux = F.cross_entropy(aux, target, weight=w, ignore_index=IGNORE, label_smoothing=0.1)
    assert close(loss(logits, target), expected.item())
    assert close(loss(SegOutput(logits, aux), target), expected.item() + 0.4 * expected_aux.item())


# ------------------------------------------------------------ SMP parity


@pytest.fixture(scope="module")
def smp():
    """segmentation_models_pytorch.losses: a test-only dependency, never imported by imseg."""
    return pytest.importorskip("segmentation_models_pytorch.losses")


def assert_same(ours, theirs, logits, target):
    """Same value and same gradient on the same tensors."""
    a, b = logits.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    va, vb = ours(a, target), theirs(b, target)
    va.backward()
    vb.backward()
    assert va.item() == pytest.approx(vb.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["none", "scattered"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_matches_smp_multiclass(smp, kind, smooth):
    # SMP's score is (I + s) / ((|P| + |G|) / 2 + s) = (2I + 2s) / (|P| + |G| + 2s):
    # its smooth s is our 2s. In these cases every class is present.
    logits, target = make_case(kind, seed=4)
    assert all((target == c).any() for c in range(C))
    theirs = smp.DiceLoss("multiclass", smooth=smooth, ignore_index=IGNORE)
    for classes in ("present", "all"):
        assert_same(DiceLoss(IGNORE, smooth=2 * smooth, classes=classes), theirs, logits, target)


def test_dice_differs_from_smp_on_absent_classes(smp):
    # SMP zeroes the loss of a class absent from the target but still divides
    # by all C classes; ours ("present") averages over the present ones. So
    # SMP = ours * n_present / C: an absent class shrinks SMP's loss.
    logits, target = make_case("whole_class", seed=4)  # class 1 absent after ignoring
    present = sum(bool((target == c).any()) for c in range(C))
    assert present < C
    ours = DiceLoss(IGNORE, smooth=2.0)(logits, target).item()
    theirs = smp.DiceLoss("multiclass", smooth=1.0, ignore_index=IGNORE)(logits, target).item()
    assert theirs == pytest.approx(ours * present / C, rel=1e-5)


@pytest.mark.parametrize("kind", ["none", "scattered"])
def test_dice_matches_smp_binary(smp, kind):
    logits, target = make_case(kind, binary=True)
    theirs = smp.DiceLoss("binary", smooth=0.5, ignore_index=IGNORE)
    assert_same(DiceLoss(IGNORE, mode="binary", smooth=1.0), theirs, logits, target)


@pytest.mark.parametrize("kind", ["none", "scattered", "whole_image"])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_matches_smp_binary(smp, kind, alpha):
    # SMP binary focal: mean over non-ignored pixels of alpha_t (1 - p_t)^gamma BCE.
    logits, target = make_case(kind, binary=True)
    theirs = smp.FocalLoss("binary", alpha=alpha, gamma=2.0, ignore_index=IGNORE)
    assert_same(FocalLoss(IGNORE, gamma=2.0, alpha=alpha, mode="binary"), theirs, logits, target)


def test_focal_multiclass_matches_smp_softmax_focal(smp):
    # Our multiclass focal is SMP's *functional* softmax focal loss; SMP has no
    # ignore_index there, so the ignored pixels are cut out first.
    from segmentation_models_pytorch.losses._functional import softmax_focal_loss_with_logits

    logits, target = make_case("scattered")
    valid = target != IGNORE
    flat_logits = logits.permute(0, 2, 3, 1)[valid]  # [N, C]
    theirs = softmax_focal_loss_with_logits(flat_logits, target[valid], gamma=2.0, reduction="mean")
    assert close(FocalLoss(IGNORE, gamma=2.0)(logits, target), theirs.item())


def test_smp_multiclass_focal_is_one_vs_rest_sigmoid(smp):
    # SMP's FocalLoss("multiclass") is a different loss: a sigmoid (binary)
    # focal loss per class, one-vs-rest, averaged over classes, with softmax
    # nowhere. It equals the mean over c of our binary focal on channel c.
    logits, target = make_case("scattered")
    theirs = smp.FocalLoss("multiclass", gamma=2.0, ignore_index=IGNORE)(logits, target)
    binary = FocalLoss(IGNORE, gamma=2.0, mode="binary")
    one_vs_rest = [
        binary(logits[:, c : c + 1], torch.where(target == IGNORE, IGNORE, (target == c).long())) for c in range(C)
    ]
    assert close(theirs, torch.stack(one_vs_rest).mean().item())
    assert not close(theirs, FocalLoss(IGNORE, gamma=2.0)(logits, target).item())


@pytest.mark.parametrize("kind", ["none", "scattered", "whole_class"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_smp(smp, kind, per_image):
    # SMP (Berman's code) averages over "present" classes only. Not compared
    # with a whole image ignored: SMP then averages in an empty tensor.
    logits, target = make_case(kind)
    theirs = smp.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)
    assert_same(LovaszSoftmaxLoss(IGNORE, per_image=per_image), theirs, logits, target)


def test_smp_soft_cross_entropy_divides_by_all_pixels(smp):
    # SMP's SoftCrossEntropyLoss zeroes ignored pixels but then takes the mean
    # over all pixels, so ignored pixels still count in the denominator.
    logits, target = make_case("scattered")
    theirs = smp.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=IGNORE)(logits, target).item()
    ours = CrossEntropyLoss(IGNORE, label_smoothing=0.1)(logits, target).item()
    valid_fraction = (target != IGNORE).float().mean().item()
    assert theirs == pytest.approx(ours * valid_fraction, rel=1e-5)


def _one_hot_dice(logits, target, smooth, classes):
    """Soft Dice written the textbook way (a one-hot truth multiplied into the probabilities)."""
    valid = (target != IGNORE)[:, None].float()
    prob = logits.softmax(1) * valid
    truth = F.one_hot(target.masked_fill(target == IGNORE, 0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dice = (2 * (prob * truth).sum((0, 2, 3)) + smooth) / (prob.sum((0, 2, 3)) + truth.sum((0, 2, 3)) + smooth)
    present = truth.sum((0, 2, 3)) > 0 if classes == "present" else torch.ones_like(dice, dtype=torch.bool)
    return (1 - dice)[present].mean()


@pytest.mark.parametrize("classes", ["present", "all"])
def test_dice_gradients_match_the_one_hot_formulation(classes):
    logits, target = make_case("scattered")
    grads = []
    for loss in (DiceLoss(IGNORE, smooth=1.0, classes=classes), lambda x, t: _one_hot_dice(x, t, 1.0, classes)):
        x = logits.detach().clone().requires_grad_()
        loss(x, target).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 0), (0.3, 150)])  # hard pixels alone / topped up
def test_ohem_gradients_match_weighted_cross_entropy_over_the_kept_pixels(thresh, min_kept):
    logits, target = make_case("scattered")
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    logits = logits.detach()
    x = logits.clone().requires_grad_()
    OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept, class_weights=w)(x, target).backward()
    with torch.no_grad():  # the kept pixels, chosen as the reference does
        loss = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept)
        valid = target != IGNORE
        kept = loss._kept(logits.log_softmax(1).gather(1, target.masked_fill(~valid, 0)[:, None])[:, 0], valid)
    y = x.detach().clone().requires_grad_()
    per_pixel = F.cross_entropy(y, target.masked_fill(~kept, IGNORE), weight=w, ignore_index=IGNORE)
    per_pixel.backward()
    assert 0 < kept.sum() < valid.sum()
    assert torch.allclose(x.grad, y.grad, atol=1e-7)
