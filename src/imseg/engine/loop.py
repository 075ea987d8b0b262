"""One training epoch: micro-batches, gradient accumulation, the optimiser step.

What a step costs under DDP: one gradient all-reduce per bucket however
many micro-batches it accumulates (``no_sync`` keeps the earlier ones'
gradients local), and one more all-reduce for the loss and the finite flag
together. Reading that second one back is the step's only host sync: every
process must agree on whether to step before it does.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from imseg.engine import distributed
from imseg.engine.checkpoint import prune_checkpoints
from imseg.engine.finetune import set_train_modes
from imseg.engine.progress import progress
from imseg.engine.replan import watch_step
from imseg.engine.run_log import RunLog
from imseg.engine.run_state import save_run_checkpoint
from imseg.engine.runtime import autocast, seed_everything

if TYPE_CHECKING:
    from imseg.engine.run_setup import Run


class NonFiniteLoss(FloatingPointError):
    pass


@dataclass
class EpochStats:
    loss_sum: float = 0.0  # of the optimiser steps' mean losses
    steps: int = 0
    batches: int = 0  # global batches whose step was taken
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.steps)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _start_epoch(run: Run, epoch: int, skip: int, log: Callable[[str], None]) -> None:
    """Seed everything an epoch draws from by (seed, epoch), so that resuming repeats it; set train modes."""
    seed = epoch_seed(run.cfg.train.seed, epoch)
    seed_everything(seed)
    if skip and run.rng_state is not None:
        torch.set_rng_state(run.rng_state)  # mid-epoch resume: dropout continues where it stopped
    run.generator.manual_seed(seed)
    run.train_ds.set_augmentation_seed(run.cfg.train.seed, epoch)
    run.sampler.set_epoch(epoch, skip)
    set_train_modes(run, epoch, log)


def train_epoch(run: Run, epoch: int, logs: RunLog, log: Callable[[str], None]) -> EpochStats:
    """Train ``epoch`` (from where a resumed run stopped in it) until its end or the run's last step."""
    skip = run.start_batch if epoch == run.start_epoch else 0
    _start_epoch(run, epoch, skip, log)
    stats, start = EpochStats(), time.perf_counter()
    bar = progress(run.loader, f"epoch {epoch + 1}/{run.epochs}", enabled=run.cfg.train.progress and run.ctx.is_main,
                   initial=skip, total=run.batches_per_epoch)
    run.optimizer.zero_grad(set_to_none=True)
    window_loss = torch.zeros((), device=run.ctx.device)  # this process's summed losses of the window
    for i, (images, masks) in enumerate(bar, start=skip):
        if i >= run.batches_per_epoch or run.step >= run.total_steps:
            break
        last = (i + 1) % run.accum == 0
        window_loss += micro_step(run, images, masks, sync=last)
        if not last:
            continue
        loss = optimizer_step(run, window_loss, f"epoch {epoch + 1}, batch {i}", log)
        window_loss.zero_()
        if loss is None:
            continue
        stats.loss_sum, stats.steps, stats.batches = stats.loss_sum + loss, stats.steps + 1, stats.batches + run.accum
        watch_step(run, log)  # a time budget is planned again at the end of the warm-up
        lr = run.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{lr:.2e}")
        if run.step % run.cfg.train.log_every == 0:
            logs.scalars(run.step, {"train/loss": loss, "train/lr": lr})
            logs.record({"type": "train", "epoch": epoch + 1, "step": run.step, "loss": loss, "lr": lr})
        every = run.cfg.train.checkpoint_every_steps
        if every and run.step % every == 0 and i + 1 < run.batches_per_epoch:
            save_run_checkpoint(run, run.ckpt_dir / f"step-{run.step:08d}.pt", epoch, i + 1, {"step": run.step})
            if run.ctx.is_main:
                prune_checkpoints(run.ckpt_dir, run.cfg.train.keep_checkpoints)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def forward_loss(run: Run, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    images = images.to(run.ctx.device, non_blocking=True)
    if run.channels_last:  # the activations follow the input's layout: the weights stay as they are
        images = images.contiguous(memory_format=torch.channels_last)
    masks = masks.to(run.ctx.device, non_blocking=True)
    with autocast(run.ctx.device, run.amp_dtype):
        output = run.train_model(run.meta.preprocessing(images))
    return run.criterion(output, masks)


def micro_step(run: Run, images: torch.Tensor, masks: torch.Tensor, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; its loss, detached. ``sync``: the window's last micro-batch."""
    # DDP all-reduces gradients in every backward; within an accumulation window
    # only the last one needs to, so no_sync() keeps the others' local: the last
    # backward then reduces the accumulated sum once (N micro-batches, one reduction).
    deferred = run.train_model.no_sync() if run.ctx.distributed and not sync else contextlib.nullcontext()
    with deferred:
        loss = forward_loss(run, images, masks)
        run.scaler.scale(loss / run.accum).backward()
    return loss.detach().float()


def optimizer_step(run: Run, window_loss: torch.Tensor, where: str, log: Callable[[str], None]) -> float | None:
    """After a window's last backward: agree on its loss, then step. The mean loss over the global batches
    of the window, or None when a non-finite loss on any process skipped the step (train.on_nonfinite)."""
    totals = torch.stack([window_loss, (~torch.isfinite(window_loss)).float()])
    loss_sum, nonfinite = distributed.all_reduce_(totals).tolist()
    loss = loss_sum / (run.ctx.world_size * run.accum)
    if nonfinite:
        where = f"{where}, optimiser step {run.step + 1}"
        if run.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLoss(f"non-finite loss ({loss}) at {where}; lower optim.lr, check the data, or set "
                                "train.on_nonfinite=skip")
        log(f"skipping {where}: non-finite loss {loss}")
        run.optimizer.zero_grad(set_to_none=True)
        return None
    apply_step(run)
    run.scheduler.step()
    run.step += 1
    return loss


def apply_step(run: Run) -> None:
    """Clip (train.grad_clip), step the optimiser and the AMP scaler, clear the gradients, update the EMA."""
    if run.cfg.train.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def rehearsal_step(run: Run, batches: list) -> None:
    """One optimiser step as training takes it, for the time budget's rehearsal (which undoes it)."""
    for k, (images, masks) in enumerate(batches):
        micro_step(run, images, masks, sync=k == len(batches) - 1)
    apply_step(run)
