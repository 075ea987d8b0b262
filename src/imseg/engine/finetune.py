"""Fine-tuning a pretrained encoder: a frozen encoder for the first epochs, frozen BatchNorm statistics.

The learning-rate multiplier for the encoder lives with the optimiser
(schedule.py); what changes per epoch lives here, and is a function of the
epoch alone, so a resumed run freezes exactly what the uninterrupted one did.

Freezing turns ``requires_grad`` off: the backward pass then skips the
encoder's weight gradients (the warm-up epochs cost less, not just change
less), and the optimiser skips parameters without a gradient, so the
encoder's weights stay bit-identical. DistributedDataParallel fixes the set of
parameters it reduces when it wraps the model, so the wrapper is rebuilt
whenever that set changes (at an epoch start, on every process alike).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from imseg.config import Config

if TYPE_CHECKING:
    from imseg.engine.distributed import Context
    from imseg.engine.run_setup import Run


def check_finetune(cfg: Config, model: nn.Module) -> None:
    """Refuse encoder freezing for a model without an encoder, naming the key."""
    if cfg.train.freeze_encoder_epochs and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ValueError(f"train.freeze_encoder_epochs={cfg.train.freeze_encoder_epochs}: model "
                         f"{type(model).__name__} has no encoder to freeze; set it to 0")


def wrap_for_training(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` as the training step calls it: in DistributedDataParallel under torchrun."""
    if not ctx.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)


def encoder_frozen_at(cfg: Config, epoch: int) -> bool:
    return epoch < cfg.train.freeze_encoder_epochs


def set_train_modes(run: Run, epoch: int, log: Callable[[str], None]) -> None:
    """Train mode for ``epoch``: the encoder frozen or not, BatchNorm statistics frozen or not."""
    frozen = encoder_frozen_at(run.cfg, epoch)
    if run.cfg.train.freeze_encoder_epochs:
        encoder = run.model.encoder
        if any(p.requires_grad == frozen for p in encoder.parameters()):
            for p in encoder.parameters():
                p.requires_grad_(not frozen)
            run.train_model = wrap_for_training(run.model, run.ctx)
            log(f"epoch {epoch + 1}: encoder {'frozen' if frozen else 'unfrozen'} "
                f"(train.freeze_encoder_epochs={run.cfg.train.freeze_encoder_epochs})")
    run.train_model.train()
    if frozen:
        run.model.encoder.eval()  # its BatchNorm normalises with the loaded statistics and keeps them
    if run.cfg.train.freeze_bn_stats:
        for module in run.model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
