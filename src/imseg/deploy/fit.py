"""Running a file exported with a fixed input shape on batches of any shape.

Dynamic H x W is the default export, but some files are fixed: `--static`
ONNX, and mobile runtimes that plan memory ahead of time. Such a file still
serves any image: batches go through one sample (or ``fixed_batch``) at a
time; a smaller image is padded up to the fixed size (zeros after
normalisation: the mean colour, the same value a convolution's own zero
padding uses) and the logits cropped back; a larger one is covered by
overlapping windows of the fixed size, averaged as in sliding-window
inference. Padding and windows change what a pixel's context is, so logits
then match eager PyTorch at the fixed size, not at the image's own size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Runner = Callable[[np.ndarray], np.ndarray]  # float32 [n, C, h, w] exactly as the file wants -> logits


def as_float32(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 ``[N, C, H, W]`` array (runtimes want exactly this)."""
    array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
    if array.ndim != 4:
        raise ValueError(f"a backend takes a preprocessed batch [N, C, H, W], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def run_fitted(run: Runner, batch: np.ndarray, size: tuple[int, int] | None, fixed_batch: int | None) -> np.ndarray:
    """``run`` over ``batch``, split to ``fixed_batch`` samples and fitted to ``size`` when those are set."""
    if fixed_batch is None and size is None:
        return run(batch)
    step = fixed_batch or batch.shape[0]
    pieces = []
    for i in range(0, batch.shape[0], step):
        part = batch[i : i + step]
        short = step - part.shape[0]  # the last group of a fixed batch: filled with copies, dropped after
        if short:
            part = np.concatenate([part, np.repeat(part[-1:], short, 0)])
        logits = run(part) if size is None else _fit_size(run, part, size)
        pieces.append(logits[: step - short])
    return np.concatenate(pieces)


def _fit_size(run: Runner, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return run(x)
    if h <= size[0] and w <= size[1]:
        padded = np.zeros((*x.shape[:2], *size), dtype=np.float32)
        padded[:, :, :h, :w] = x
        return run(padded)[:, :, :h, :w]
    return _windows(run, x, size)


def _windows(run: Runner, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Overlapping windows of ``size`` (an image smaller than it on one side is padded there first)."""
    from imseg.engine.inference import slide_logits

    h, w = x.shape[-2:]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    tensor = F.pad(torch.from_numpy(x), (0, pw, 0, ph))
    model = lambda t: torch.from_numpy(run(np.ascontiguousarray(t.numpy())))  # noqa: E731
    logits = slide_logits(model, tensor, size, None, window_batch=1)
    return logits[:, :, :h, :w].numpy()
