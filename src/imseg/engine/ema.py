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
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


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
