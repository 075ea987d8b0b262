"""How close an exported file's outputs are to eager PyTorch: one definition for export reports, tests
and benchmarks.

* ``relative_difference``: max |exported - eager| / max |eager| over every logit of the batch: the
  largest error measured against the logits' own scale (fp32 exports: at most 1e-4).
* ``agreement``: the fraction of pixels whose arg-max class is the same (int8 exports).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def compare_logits(got: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """``max_abs_difference``, ``max_abs_logit``, ``relative_difference`` and ``agreement`` of two
    ``[N, K, H, W]`` logit batches (``expected`` is the reference)."""
    got, expected = _array(got), _array(expected)
    if got.shape != expected.shape:
        raise ValueError(f"logits of shape {got.shape} cannot be compared with the reference's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    return {"max_abs_difference": diff, "max_abs_logit": scale, "relative_difference": diff / max(scale, 1e-12),
            "agreement": float((got.argmax(1) == expected.argmax(1)).mean())}


def probe_input(channels: int, size: tuple[int, int]) -> torch.Tensor:
    """The random picture the ONNX, OpenVINO and ExecuTorch exporters check their files with (and the export
    benchmarks compare on): standard normal values from a generator seeded 0, ``[1, channels, H, W]``, so
    that their reports are repeatable."""
    return torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(0))


def mean_iou(pred: np.ndarray, reference: np.ndarray, num_classes: int) -> float:
    """mIoU of ``pred`` against ``reference`` (both class-id arrays), over the classes either one holds."""
    k = num_classes
    cm = np.bincount(reference.ravel().astype(np.int64) * k + pred.ravel(), minlength=k * k).reshape(k, k)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    seen = union > 0
    return float((np.diag(cm)[seen] / union[seen]).mean()) if seen.any() else 1.0
