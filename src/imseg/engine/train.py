"""The training loop, in plain PyTorch, readable in one sitting.

Reproducibility is built on one rule: every epoch starts by re-seeding all
random generators from (seed, epoch). The data order, the augmentations and
dropout of an epoch are then a function of the checkpoint it starts from,
so "2 epochs" and "1 epoch, resume, 1 epoch" give identical weights.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from imseg.config import Config, save_config
from imseg.data import build_dataset, median_frequency_weights
from imseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from imseg.engine.evaluate import evaluate
from imseg.engine.inference import inference_from_config
from imseg.engine.runtime import autocast, resolve_amp, resolve_device, seed_everything, seed_worker, set_threads
from imseg.engine.schedule import build_optimizer, build_scheduler
from imseg.losses import build_loss
from imseg.models.registry import create_model
from imseg.preprocessing import get_preprocessing


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def class_weights_for(cfg: Config, train_ds, log: Callable[[str], None]) -> torch.Tensor | None:
    spec = cfg.loss.class_weights
    if spec == "none":
        return None
    if spec == "median_frequency":
        weights = median_frequency_weights(train_ds)
        log("median-frequency class weights: " + " ".join(f"{w:.3f}" for w in weights.tolist()))
        return weights
    if isinstance(spec, list):
        if len(spec) != train_ds.num_classes:
            raise ValueError(
                f"loss.class_weights has {len(spec)} values but the dataset has {train_ds.num_classes} classes"
            )
        return torch.tensor(spec, dtype=torch.float32)
    raise ValueError(f"loss.class_weights must be 'none', 'median_frequency' or a list, got {spec!r}")


def _checkpoint_state(model, optimizer, scheduler, scaler, cfg, dataset, preprocessing, epoch, step, best, metrics):
    return {
        "model": model.imseg_spec,
        "state_dict": model.state_dict(),
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(dataset.class_names),
        "palette": [list(c) for c in dataset.palette],
        "ignore_index": dataset.ignore_index,
        "eval_size": cfg.data.eval_size,
        "eval": dataclasses.asdict(cfg.eval),
        "config": cfg.to_dict(),
        "epoch": epoch,
        "global_step": step,
        "best_miou": best,
        "metrics": metrics,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }


def _print(message: str) -> None:
    print(message, flush=True)  # flushed: logs piped to a file or CI show progress as it happens


def train(cfg: Config, resume: str | Path | None = None, log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary with the best validation mIoU and checkpoint paths."""
    out_dir = Path(cfg.train.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    amp_dtype = resolve_amp(cfg.train.amp, device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed)

    # Data first: bad data must fail before any time is spent on a model.
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False) if cfg.data.val_split else None
    num_classes = train_ds.num_classes
    if len(train_ds) < cfg.data.batch_size:
        raise ValueError(
            f"the {cfg.data.train_split!r} split has {len(train_ds)} images, fewer than data.batch_size={cfg.data.batch_size}"
        )

    model = create_model(cfg.model.name, num_classes, **cfg.model.args)
    in_channels = cfg.model.args.get("in_channels", 3)
    preprocessing = (
        get_preprocessing(cfg.model.preprocessing).for_channels(in_channels)
        if cfg.model.preprocessing is not None
        else model.preprocessing
    )
    model.to(device)
    inference = inference_from_config(cfg.eval, preprocessing, cfg.data.eval_size, amp_dtype)

    weights = class_weights_for(cfg, train_ds, log)
    criterion = build_loss(
        cfg.loss.terms,
        ignore_index=train_ds.ignore_index,
        class_weights=weights.to(device) if weights is not None else None,
        aux_weight=cfg.loss.aux_weight,
    ).to(device)

    generator = torch.Generator()
    loader = DataLoader(
        train_ds,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        drop_last=True,  # a last batch of 1 breaks BatchNorm statistics
        num_workers=cfg.data.num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    val_loader = (
        DataLoader(val_ds, batch_size=max(1, cfg.data.batch_size // 2), num_workers=cfg.data.num_workers)
        if val_ds is not None
        else None
    )
    accum = cfg.train.grad_accum
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise ValueError(f"train.grad_accum={accum} is larger than the {len(loader)} batches of an epoch")
    total_steps = steps_per_epoch * cfg.train.epochs

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, step, best_miou = 0, 0, -1.0
    if resume is not None:
        state = load_checkpoint(resume)
        if state["model"] != model.imseg_spec:
            raise CheckpointError(
                f"checkpoint {resume} was made for model {state['model']}, but the config builds {model.imseg_spec}"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, best_miou = state["epoch"], state["global_step"], state["best_miou"]
        log(f"resumed from {resume} at epoch {start_epoch} (step {step})")

    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

    writer = SummaryWriter(str(out_dir / "tensorboard"))
    log_file = open(out_dir / "metrics.jsonl", "a")

    def record(entry: dict[str, Any]) -> None:
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()

    log(
        f"training {cfg.model.name} on {len(train_ds)} images for {cfg.train.epochs} epochs "
        f"({steps_per_epoch} steps each) on {device}"
        + (f" with {amp_dtype} autocast" if amp_dtype else "")
    )
    val_scores: dict[str, Any] | None = None
    train_start = time.perf_counter()
    end_epoch = min(cfg.train.epochs, cfg.train.stop_after or cfg.train.epochs)
    for epoch in range(start_epoch, end_epoch):
        seed_everything(_epoch_seed(cfg.train.seed, epoch))
        generator.manual_seed(_epoch_seed(cfg.train.seed, epoch))
        model.train()
        epoch_start, loss_sum, loss_count = time.perf_counter(), 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not cfg.train.progress,
            leave=False,
            total=steps_per_epoch * accum,
        )
        optimizer.zero_grad(set_to_none=True)
        for i, (images, masks) in enumerate(bar):
            if i >= steps_per_epoch * accum:
                break  # leftover batches that cannot fill an accumulation window
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                output = model(preprocessing(images))
            loss = criterion(output, masks)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step}")
            scaler.scale(loss / accum).backward()
            loss_sum += loss.item()
            loss_count += 1
            if (i + 1) % accum:
                continue
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}", lr=f"{lr:.2e}")
            if step % cfg.train.log_every == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
                record({"type": "train", "epoch": epoch + 1, "step": step, "loss": loss.item(), "lr": lr})
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
        writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
        is_last = epoch + 1 == cfg.train.epochs
        improved = False
        if val_loader is not None and ((epoch + 1) % cfg.train.val_every == 0 or is_last):
            val_scores = evaluate(
                model,
                val_loader,
                num_classes=num_classes,
                ignore_index=train_ds.ignore_index,
                inference=inference,
                device=device,
                class_names=train_ds.class_names,
                progress=cfg.train.progress,
                desc="val",
            )
            miou = val_scores["mIoU"] or 0.0
            entry.update(
                val_mIoU=miou,
                val_pixel_accuracy=val_scores["pixel_accuracy"],
                val_mean_class_accuracy=val_scores["mean_class_accuracy"],
                val_seconds=val_scores["seconds"],
            )
            writer.add_scalar("val/mIoU", miou, epoch + 1)
            writer.add_scalar("val/pixel_accuracy", val_scores["pixel_accuracy"] or 0.0, epoch + 1)
            improved = miou > best_miou
            best_miou = max(best_miou, miou)
        record(entry)
        msg = f"epoch {epoch + 1}/{cfg.train.epochs}  loss {train_loss:.4f}  {epoch_time:.0f}s"
        if "val_mIoU" in entry:
            msg += f"  val mIoU {100 * entry['val_mIoU']:.1f}  pixel acc {100 * entry['val_pixel_accuracy']:.1f}"
        log(msg)

        summary = {k: v for k, v in entry.items() if k != "type"}
        state = lambda: _checkpoint_state(  # noqa: E731 - built only when a checkpoint is written
            model, optimizer, scheduler, scaler, cfg, train_ds, preprocessing, epoch + 1, step, best_miou, summary
        )
        if (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == end_epoch:
            save_checkpoint(state(), ckpt_dir / "last.pt")
        if improved or (val_loader is None and is_last):
            save_checkpoint(state(), ckpt_dir / "best.pt")

    writer.close()
    log_file.close()
    if start_epoch >= cfg.train.epochs:
        log(f"nothing to do: the checkpoint already finished {start_epoch} epochs")
    return {
        "out_dir": str(out_dir),
        "best_val_mIoU": best_miou if best_miou >= 0 else None,
        "last_checkpoint": str(ckpt_dir / "last.pt"),
        "best_checkpoint": str(ckpt_dir / "best.pt"),
        "train_seconds": time.perf_counter() - train_start,
        "val": val_scores,
    }
