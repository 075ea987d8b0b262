"""EMA weights (``train.ema_decay``): an exponential moving average of the model, updated every optimiser step.

torch's own ``AveragedModel`` with ``get_ema_multi_avg_fn`` does the work
rather than a hand-written average: it is kept with PyTorch, updates all
tensors of a device and dtype in one ``_foreach_lerp_``, and with
``use_buffers=True`` averages the BatchNorm running statistics too (without
it the averaged copy would keep the statistics it was created with, and
validate with them). Its whole state is its ``state_dict`` (the averaged
module and the update count ``n_averaged``), and an update is a
deterministic function of that state and the current weights, so restoring
the state from a checkpoint continues the average bit for bit.

The average starts from the first step's weights, so with decay 0.999 it
still holds 0.999**450 = 64% of them after 450 steps: early validations
score a blend of random and trained weights. ``train.ema_warmup_steps``
(tau) ramps the decay as YOLOv5's ModelEMA and mmengine's momentum EMA do,
``decay * (1 - exp(-n / tau))`` at the n-th update, so the average follows
the model closely at first and reaches the full decay after a few tau. The
ramp is a function of ``n_averaged``, so resuming stays bit-exact.

``train.ema_bn_images`` recomputes the BatchNorm statistics of a copy of the
average before each validation (`with_recomputed_bn`); that copy is what
validation scores and best.pt keeps, while the average itself runs on.
"""
from __future__ import annotations

import math
from copy import deepcopy
from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset, Subset


def warmed_up_decay(decay: float, warmup_steps: float, n: int) -> float:
    """The decay at the n-th update (n >= 1) when it ramps towards ``decay`` with time constant ``warmup_steps``."""
    return decay * (1.0 - math.exp(-n / warmup_steps))


def _warmed_up_ema_fn(decay: float, warmup_steps: float) -> Callable:
    def update(ema_params, current_params, n_averaged) -> None:
        # torch's own EMA update (floats lerped, integer buffers blended) at this step's decay
        get_ema_multi_avg_fn(warmed_up_decay(decay, warmup_steps, int(n_averaged)))(ema_params, current_params, None)

    return update


def build_ema(model: nn.Module, decay: float | None, warmup_steps: int | None = None) -> AveragedModel | None:
    """An averaged copy of ``model`` (None when EMA is off); its first update copies the weights."""
    if decay is None:
        return None
    update = get_ema_multi_avg_fn(decay) if not warmup_steps else _warmed_up_ema_fn(decay, warmup_steps)
    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def spread_subset(dataset: Dataset, count: int) -> Subset:
    """``count`` samples spread evenly over ``dataset`` (all of it when it is smaller): no sequence of a
    video-derived split such as CamVid's dominates, and no random draw disturbs training's seeds."""
    n = len(dataset)
    return Subset(dataset, sorted({i * n // count for i in range(count)}) if count < n else range(n))


@torch.no_grad()
def with_recomputed_bn(module: nn.Module, loader: Iterable, preprocessing: Callable, device: torch.device,
                       amp_dtype: torch.dtype | None) -> nn.Module:
    """A copy of ``module`` whose BatchNorm running statistics are recomputed on ``loader``'s images.

    An EMA averages the running statistics along with the weights, but the
    statistics of averaged weights are not the average of the statistics:
    early in a run, at a high learning rate, the averaged ones no longer fit
    (LR-ASPP on CamVid at epoch 53 of a 0.999 EMA: 12.1 val mIoU with them,
    55.2 recomputed, 57.2 for the trained weights themselves;
    benchmarks/results/ema-bn-flagship-os32-aux3-early.json). SWA recomputes them for the same reason
    (torch's ``update_bn``), but in training mode, where dropout would
    perturb them and draw from the RNG that training's resume replays; here
    only the BatchNorm layers run in training mode, with a cumulative average
    over the forward passes (``momentum=None``).
    """
    copy = deepcopy(module).eval()
    norms = [m for m in copy.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        for images, _ in loader:  # collate_pairs hands over lists when sizes differ: one image at a time
            for batch in ([images] if isinstance(images, torch.Tensor) else [i.unsqueeze(0) for i in images]):
                copy(preprocessing(batch.to(device)))
    for norm, original in zip(norms, (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))):
        norm.momentum = original.momentum
    return copy.eval()
