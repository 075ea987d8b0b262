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
"""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An averaged copy of ``model`` (None when EMA is off); its first update copies the weights."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
