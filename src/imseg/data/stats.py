"""Dataset statistics: class-balancing weights."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import SegmentationDataset, image_size


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels of that class, and labelled pixels of the images containing it.

    Reads the mask files directly (label map applied, no augmentation), so
    the statistics describe the data, not one random crop of it. Ignored
    pixels count for neither.
    """
    n = dataset.num_classes
    class_pixels = np.zeros(n, dtype=np.int64)
    image_pixels = np.zeros(n, dtype=np.int64)
    for _, mask_path in dataset.files:
        mask = dataset.load_mask(mask_path)
        labelled = mask[mask != dataset.ignore_index]
        counts = np.bincount(labelled.ravel(), minlength=n)[:n]
        class_pixels += counts
        image_pixels[counts > 0] += labelled.size
    return class_pixels, image_pixels


def median_frequency_weights(dataset: SegmentationDataset) -> torch.Tensor:
    """Median-frequency class weights (Eigen & Fergus 2015, as used by SegNet).

    ``freq(c) = pixels of c / pixels of the images where c is present`` and
    ``weight(c) = median(freq) / freq(c)``: frequent classes get < 1, rare
    ones > 1. A class absent from every mask gets weight 0 (and a warning),
    is left out of the median, and so contributes nothing to the loss.

    Returns a float32 tensor [num_classes] for ``CrossEntropyLoss(weight=...)``.
    """
    class_pixels, image_pixels = class_pixel_counts(dataset)
    present = class_pixels > 0
    if not present.any():
        raise ValueError(f"no labelled pixels in {dataset!r}: cannot compute class weights")
    freq = np.zeros(dataset.num_classes, dtype=np.float64)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    if not present.all():
        absent = [dataset.class_names[c] for c in np.flatnonzero(~present)]
        warnings.warn(f"classes {absent} never occur in {dataset!r}; their weight is 0", stacklevel=2)
    return torch.tensor(weights, dtype=torch.float32)


def enet_weights(dataset: SegmentationDataset, c: float = 1.02) -> torch.Tensor:
    """ENet's class weights (Paszke et al. 2016): ``weight(k) = 1 / ln(c + p(k))``.

    ``p(k)`` is class k's share of all labelled pixels. With c = 1.02 the
    weights lie between about 1.5 and 1/ln(1.02) = 50, so the spread between
    the commonest and rarest CamVid classes is about 10x, against about 30x
    for median frequency: rare classes get more gradient without the common
    ones being given away. An absent class gets weight 0, as above.
    """
    if c <= 1.0:
        raise ValueError(f"enet_weights: c must be > 1 (1/ln(c + p) must stay finite), got {c}")
    class_pixels, _ = class_pixel_counts(dataset)
    total = class_pixels.sum()
    if total == 0:
        raise ValueError(f"no labelled pixels in {dataset!r}: cannot compute class weights")
    share = class_pixels / total
    weights = np.where(class_pixels > 0, 1.0 / np.log(c + share), 0.0)
    if (class_pixels == 0).any():
        absent = [dataset.class_names[k] for k in np.flatnonzero(class_pixels == 0)]
        warnings.warn(f"classes {absent} never occur in {dataset!r}; their weight is 0", stacklevel=2)
    return torch.tensor(weights, dtype=torch.float32)


def warn_if_crops_are_mostly_padding(dataset: SegmentationDataset, crop_size, scale_range, train_size=None,
                                     sample: int = 500) -> bool:
    """Warn when ``crop_size`` exceeds every training image even at the largest random scale.

    Such crops are mostly padding: on 96x128 images the default 360x480 crop
    cost 23 s a step and 3.3 GB instead of 1 s. Image sizes come from the
    file headers (the first ``sample`` images), or from ``train_size`` when
    every image is resized to it. Returns whether it warned.
    """
    if train_size:
        h, w = train_size
    else:
        sizes = [image_size(image_path) for image_path, _ in dataset.files[:sample]]
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    scale = max(scale_range)
    if crop_size[0] <= h * scale and crop_size[1] <= w * scale:
        return False
    warnings.warn(f"data.crop_size {list(crop_size)} is larger than every training image even at the largest "
                  f"random scale ({h}x{w} at most, times {scale:g} from data.scale_range): each crop is mostly "
                  f"padding and costs {crop_size[0] * crop_size[1] / (h * w * scale * scale):.1f}x the pixels of "
                  f"the image; set data.crop_size to at most [{h}, {w}]", UserWarning, stacklevel=2)
    return True
