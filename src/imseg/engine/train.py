"""The training loop, in plain PyTorch, readable in one sitting.

Reproducibility rests on two rules:

* every sample's augmentation is seeded from (seed, epoch, index), and the
  sample order from (seed, epoch) (see `GlobalBatchSampler`), so the data
  does not depend on how many processes or workers load it;
* every checkpoint holds the model, optimiser, scheduler, AMP scaler, the
  position in the epoch and the RNG state.

So "2 epochs" and "1 epoch, resume, 1 epoch" give identical weights, a run
killed mid-epoch resumes where it stopped, and torchrun with N processes
sees the same global batches as one process.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from imseg.config import Config, save_config
from imseg.data import build_dataset, enet_weights, median_frequency_weights
from imseg.data.stats import warn_if_crops_are_mostly_padding
from imseg.engine import budget, distributed
from imseg.engine.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    save_checkpoint,
)
from imseg.engine.evaluate import evaluate
from imseg.engine.inference import inference_from_config
from imseg.engine.progress import progress
from imseg.engine.run_folder import check_run_folder
from imseg.engine.runtime import autocast, resolve_amp, seed_everything, seed_worker, set_threads
from imseg.engine.sampling import GlobalBatchSampler
from imseg.engine.schedule import build_optimizer, build_scheduler
from imseg.losses import build_loss
from imseg.models.registry import create_model
from imseg.meta import ModelMeta
from imseg.preprocessing import get_preprocessing


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _print(message: str) -> None:
    print(message, flush=True)  # flushed: logs piped to a file or CI show progress as it happens


def class_weights_for(cfg: Config, train_ds, log: Callable[[str], None]) -> torch.Tensor | None:
    spec = cfg.loss.class_weights
    if spec == "none":
        return None
    if spec in ("median_frequency", "enet"):
        weights = median_frequency_weights(train_ds) if spec == "median_frequency" else enet_weights(train_ds)
        log(f"{spec} class weights: " + " ".join(f"{w:.3f}" for w in weights.tolist()))
        return weights
    if isinstance(spec, list):
        if len(spec) != train_ds.num_classes:
            raise ValueError(
                f"loss.class_weights has {len(spec)} values but the dataset has {train_ds.num_classes} classes"
            )
        return torch.tensor(spec, dtype=torch.float32)
    raise ValueError(f"loss.class_weights must be 'none', 'median_frequency', 'enet' or a list, got {spec!r}")


class NonFiniteLoss(FloatingPointError):
    pass


def _read_resume_state(path, spec: dict[str, Any]) -> dict[str, Any]:
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise CheckpointError(
            f"checkpoint {path} holds weights only (best.pt keeps no optimiser state), so a run cannot "
            f"resume from it: resume from last.pt or a step-*.pt checkpoint of the same run folder"
        )
    if state["model"] != spec:
        raise CheckpointError(f"checkpoint {path} was made for model {state['model']}, but the config builds {spec}")
    return state


def _resolved_steps(state: dict[str, Any] | None) -> int | None:
    """The step count a budgeted run being resumed fixed for itself (older checkpoints: from their config)."""
    if state is None:
        return None
    return state.get("total_steps") or state.get("config", {}).get("train", {}).get("max_steps")


def train(cfg: Config, resume: str | Path | None = None, log: Callable[[str], None] = _print,
          overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary with the best validation mIoU and checkpoint paths.

    ``resume``: a checkpoint path, or ``"auto"`` for the newest readable
    checkpoint in ``train.out_dir`` (none found: start fresh). Under torchrun
    elastic restarts, resuming is automatic. A fresh start in a folder that
    already holds a run is refused unless ``overwrite`` (see run_folder.py).
    """
    ctx = distributed.setup(cfg.train.device)
    closers: list[Callable[[], None]] = []  # the run's log files, closed even on Ctrl-C or an error
    try:
        return _train(cfg, resume, log if ctx.is_main else (lambda message: None), ctx, overwrite, closers)
    finally:
        for close in closers:
            close()
        distributed.teardown(ctx)


def _train(cfg: Config, resume, log: Callable[[str], None], ctx: distributed.Context,
           overwrite: bool = False, closers: list | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)  # the resolved time budget is written into it, not into the caller's
    out_dir = Path(cfg.train.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if resume is None and distributed.elastic_restart_count() > 0:
        resume = "auto"  # torchrun restarted us after a failure: continue, don't start over
    if resume is None and check_run_folder(out_dir, overwrite, ctx.is_main):
        log(f"--overwrite: deleted the earlier run's checkpoints and logs in {out_dir}")
    set_threads(cfg.train.threads)
    device = ctx.device
    amp_dtype = resolve_amp(cfg.train.amp, device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed)

    # Data first: bad data must fail before any time is spent on a model.
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    if ctx.is_main:
        warn_if_crops_are_mostly_padding(train_ds, cfg.data.crop_size, cfg.data.scale_range, cfg.data.train_size)
    val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False) if cfg.data.val_split else None
    num_classes = train_ds.num_classes

    model = create_model(cfg.model.name, num_classes, **cfg.model.args)
    spec = model.imseg_spec
    in_channels = cfg.model.args.get("in_channels", 3)
    preprocessing = (
        get_preprocessing(cfg.model.preprocessing).for_channels(in_channels)
        if cfg.model.preprocessing is not None
        else model.preprocessing
    )
    if cfg.train.bn_momentum is not None:
        if not 0.0 < cfg.train.bn_momentum <= 1.0:
            raise ValueError(f"train.bn_momentum must be in (0, 1], got {cfg.train.bn_momentum}")
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.train.bn_momentum
    if cfg.train.sync_bn and ctx.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    inference = inference_from_config(cfg.eval, preprocessing, cfg.data.eval_size, amp_dtype)
    meta = ModelMeta(spec=spec, preprocessing=preprocessing, class_names=tuple(train_ds.class_names),
                     palette=tuple(tuple(c) for c in train_ds.palette), ignore_index=train_ds.ignore_index,
                     eval_size=tuple(cfg.data.eval_size) if cfg.data.eval_size else None,
                     eval_settings=dataclasses.asdict(cfg.eval), data=cfg.to_dict()["data"])

    weights = class_weights_for(cfg, train_ds, log)
    criterion = build_loss(
        cfg.loss.terms,
        ignore_index=train_ds.ignore_index,
        class_weights=weights.to(device) if weights is not None else None,
        aux_weight=cfg.loss.aux_weight,
    ).to(device)

    train_ds.set_augmentation_seed(cfg.train.seed)
    sampler = GlobalBatchSampler(len(train_ds), cfg.data.batch_size, seed=cfg.train.seed,
                                 rank=ctx.rank, world_size=ctx.world_size)
    generator = torch.Generator()
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        worker_init_fn=seed_worker, generator=generator, pin_memory=device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        # Each process scores its own share (rank, rank + world, ...): no image
        # twice, none dropped; the confusion matrices are summed afterwards.
        shard = Subset(val_ds, range(ctx.rank, len(val_ds), ctx.world_size)) if ctx.distributed else val_ds
        val_loader = DataLoader(shard, batch_size=max(1, cfg.data.batch_size // (2 * ctx.world_size)),
                                num_workers=cfg.data.num_workers)
    accum = cfg.train.grad_accum
    batches_per_epoch = len(train_ds) // cfg.data.batch_size
    steps_per_epoch = batches_per_epoch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"train.grad_accum={accum} is larger than the {batches_per_epoch} batches of an epoch")
    batches_per_epoch = steps_per_epoch * accum  # leftover batches cannot fill an accumulation window

    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if resume == "auto":
        resume = find_resume_checkpoint(out_dir)
        log(f"--resume auto: {'continuing from ' + str(resume) if resume else 'no checkpoint yet, starting fresh'}")
    start_epoch, start_batch, step, best_miou, rng_state = 0, 0, 0, -1.0, None
    state = _read_resume_state(resume, spec) if resume is not None else None
    if state is not None:
        model.load_state_dict(state["state_dict"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch = state["epoch"], state.get("batch_in_epoch", 0)
        step, best_miou, rng_state = state["global_step"], state["best_miou"], state.get("rng_state")

    train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else model

    def forward_loss(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = train_model(preprocessing(images))
        return criterion(output, masks)

    def finish_step() -> None:
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def time_validation() -> float:
        # A whole validation pass, estimated from a few images of this process's share.
        shard = val_loader.dataset
        sample = Subset(shard, range(min(len(shard), 2 * val_loader.batch_size)))
        scores = evaluate(model, DataLoader(sample, batch_size=val_loader.batch_size), num_classes=num_classes,
                          ignore_index=train_ds.ignore_index, inference=inference, device=device)
        return scores["seconds"] / len(sample) * len(shard)

    budget_plan = None
    if cfg.train.max_steps is None and cfg.train.time_budget_minutes is not None:
        resolved = _resolved_steps(state)
        if resolved is not None:
            log(f"time budget: the run being resumed fixed train.max_steps={resolved}; keeping it")
        else:
            sampler.set_epoch(0)
            budget_plan = budget.plan(
                cfg.train.time_budget_minutes, loader=loader,
                run_batch=lambda x, y: scaler.scale(forward_loss(x, y) / accum).backward(),
                finish_step=finish_step, accum=accum, restore={"model": model, "optimizer": optimizer,
                                                               "scaler": scaler},
                validate=time_validation if val_loader is not None else None,
                val_every=cfg.train.val_every, steps_per_epoch=steps_per_epoch)
            resolved = budget_plan.max_steps
            log(budget_plan.describe())
        cfg.train.max_steps = resolved  # written to config.yaml and every checkpoint: reruns repeat it
    if cfg.train.max_steps is not None:
        if cfg.train.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {cfg.train.max_steps}")
        total_steps = cfg.train.max_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = cfg.train.epochs
        total_steps = steps_per_epoch * epochs
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim)
    if state is not None:
        # After the scheduler is built: building it resets the optimiser's learning rate.
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log(f"resumed from {resume} at epoch {start_epoch + 1}, batch {start_batch} (step {step})")

    writer = log_file = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for leftover in remove_partial_checkpoints(ckpt_dir):
            log(f"removed {leftover}: a checkpoint write that was interrupted (the checkpoints themselves are intact)")
        save_config(cfg, out_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

        writer = SummaryWriter(str(out_dir / "tensorboard"))
        log_file = open(out_dir / "metrics.jsonl", "a")
        if closers is not None:
            closers += [writer.close, log_file.close]

    def record(entry: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()

    def checkpoint(path: Path, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any],
                   training_state: bool = True) -> None:
        """Write a checkpoint; ``training_state=False`` leaves out what only resuming needs.

        best.pt is for evaluation, prediction and export, never for resuming,
        so it holds the weights without the optimiser state: with Adam that is
        a third of the size (2 GB instead of 6 GB for FCN-8s with its fc6).
        """
        if not ctx.is_main:
            return
        state = {
            **meta.to_dict(),
            "state_dict": model.state_dict(),
            "config": cfg.to_dict(),
            "epoch": epoch_done,
            "batch_in_epoch": batch_in_epoch,
            "global_step": step,
            "total_steps": total_steps,
            "best_miou": best_miou,
            "metrics": metrics,
        }
        if training_state:
            state.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                rng_state=torch.get_rng_state(),
            )
        save_checkpoint(state, path)

    log(
        f"training {cfg.model.name} on {len(train_ds)} images for {epochs} epochs "
        f"({steps_per_epoch} steps each, {total_steps} in all) on {device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "")
        + (f" with {amp_dtype} autocast" if amp_dtype else "")
    )
    val_scores: dict[str, Any] | None = None
    train_start = time.perf_counter()
    end_epoch = min(epochs, cfg.train.stop_after or epochs)
    for epoch in range(start_epoch, end_epoch):
        skip = start_batch if epoch == start_epoch else 0
        seed_everything(_epoch_seed(cfg.train.seed, epoch))
        if skip and rng_state is not None:
            torch.set_rng_state(rng_state)  # mid-epoch resume: dropout continues where it stopped
        generator.manual_seed(_epoch_seed(cfg.train.seed, epoch))
        train_ds.set_augmentation_seed(cfg.train.seed, epoch)
        sampler.set_epoch(epoch, skip)
        train_model.train()
        epoch_start, loss_sum, loss_count = time.perf_counter(), 0.0, 0
        bar = progress(loader, f"epoch {epoch + 1}/{epochs}", enabled=cfg.train.progress and ctx.is_main,
                       initial=skip, total=batches_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        for i, (images, masks) in enumerate(bar, start=skip):
            if i >= batches_per_epoch or step >= total_steps:
                break
            loss = forward_loss(images, masks)
            # Every process must take the same decision, or DDP deadlocks.
            finite_flag = torch.isfinite(loss.detach()).float().reshape(1)
            finite = distributed.all_reduce_(finite_flag, torch.distributed.ReduceOp.MIN).item() > 0
            if not finite:
                where = f"epoch {epoch + 1}, batch {i}, optimiser step {step + 1}"
                if cfg.train.on_nonfinite == "stop":
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at {where}; lower optim.lr, check the "
                                        "data, or set train.on_nonfinite=skip")
                log(f"skipping {where}: non-finite loss {loss.item()}")
                optimizer.zero_grad(set_to_none=True)
                continue
            scaler.scale(loss / accum).backward()
            # The logged loss is the mean over processes: the loss of the global batch.
            loss_value = distributed.all_reduce_(loss.detach().clone()).item() / ctx.world_size
            loss_sum += loss_value
            loss_count += 1
            if (i + 1) % accum:
                continue
            finish_step()
            scheduler.step()
            step += 1
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_sum / max(1, loss_count):.3f}", lr=f"{lr:.2e}")
            if step % cfg.train.log_every == 0 and writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", lr, step)
                record({"type": "train", "epoch": epoch + 1, "step": step, "loss": loss_value, "lr": lr})
            if cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0 \
                    and i + 1 < batches_per_epoch:
                checkpoint(ckpt_dir / f"step-{step:08d}.pt", epoch, i + 1, {"step": step})
                if ctx.is_main:
                    prune_checkpoints(ckpt_dir, cfg.train.keep_checkpoints)
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        train_loss = loss_sum / max(1, loss_count)
        entry: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_time,
            "images_per_second": loss_count * cfg.data.batch_size / epoch_time,
        }
        is_last = epoch + 1 == epochs
        improved = False
        if val_loader is not None and ((epoch + 1) % cfg.train.val_every == 0 or is_last):
            val_scores = evaluate(
                model, val_loader, num_classes=num_classes, ignore_index=train_ds.ignore_index,
                inference=inference, device=device, class_names=train_ds.class_names,
                progress=cfg.train.progress and ctx.is_main, desc="val",
            )
            miou = val_scores["mIoU"] or 0.0
            entry.update(val_mIoU=miou, val_pixel_accuracy=val_scores["pixel_accuracy"],
                         val_mean_class_accuracy=val_scores["mean_class_accuracy"], val_seconds=val_scores["seconds"])
            if writer is not None:
                writer.add_scalar("val/mIoU", miou, epoch + 1)
                writer.add_scalar("val/pixel_accuracy", val_scores["pixel_accuracy"] or 0.0, epoch + 1)
            improved = miou > best_miou
            best_miou = max(best_miou, miou)
        if writer is not None:
            writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
        record(entry)
        msg = f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  {epoch_time:.0f}s"
        if "val_mIoU" in entry:
            msg += f"  val mIoU {100 * entry['val_mIoU']:.1f}  pixel acc {100 * entry['val_pixel_accuracy']:.1f}"
        log(msg)

        summary = {k: v for k, v in entry.items() if k != "type"}
        if (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == end_epoch:
            checkpoint(ckpt_dir / "last.pt", epoch + 1, 0, summary)
        if improved or (val_loader is None and is_last):
            checkpoint(ckpt_dir / "best.pt", epoch + 1, 0, summary, training_state=False)

    if writer is not None:
        writer.close()
        log_file.close()
    if start_epoch >= end_epoch:
        log(f"nothing to do: the checkpoint already finished {start_epoch} epochs")
    return {
        "out_dir": str(out_dir),
        "best_val_mIoU": best_miou if best_miou >= 0 else None,
        "last_checkpoint": str(ckpt_dir / "last.pt"),
        "best_checkpoint": str(ckpt_dir / "best.pt"),
        "train_seconds": time.perf_counter() - train_start,
        "total_steps": total_steps,
        "budget": budget_plan.to_dict() if budget_plan is not None else None,
        "val": val_scores,
    }
