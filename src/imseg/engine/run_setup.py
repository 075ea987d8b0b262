"""Setting up a training run: what the config describes, built once into one `Run`.

Data comes first, so that bad data fails before any time is spent on a
model; the step count comes last, because a time budget is resolved by
rehearsing real optimiser steps (see budget.py) and the learning-rate
schedule must span exactly the steps that will run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Subset

from imseg.config import Config
from imseg.data import build_dataset, enet_weights, median_frequency_weights
from imseg.data.build import resolve_sample_cache
from imseg.data.stats import warn_if_crops_are_mostly_padding
from imseg.engine import amp_probe, budget
from imseg.engine.distributed import Context
from imseg.engine.finetune import check_finetune, wrap_for_training
from imseg.engine.init_from import load_init_weights
from imseg.engine.ema import build_ema, spread_subset, with_recomputed_bn
from imseg.engine.evaluate import evaluate
from imseg.engine.inference import Inference, inference_from_config
from imseg.engine.loop import rehearsal_step
from imseg.engine.norm_check import check_batch_norm_batch_size
from imseg.engine.replan import Replan, replan_for
from imseg.engine.run_state import resolved_steps
from imseg.engine.runtime import resolve_amp, seed_everything, seed_worker, set_threads
from imseg.engine.sampling import GlobalBatchSampler
from imseg.engine.schedule import build_optimizer, build_scheduler
from imseg.losses import build_loss
from imseg.meta import ModelMeta
from imseg.models.depthwise_grad import apply_depthwise_grad
from imseg.models.registry import create_model
from imseg.data.collate import collate_pairs
from imseg.engine.data_fit import model_args_for, preprocessing_for


@dataclass
class Run:
    """One training run: what `build_run` makes, the loop advances and a checkpoint saves."""

    cfg: Config  # the run's own copy: a time budget is resolved into it as train.max_steps
    ctx: Context
    model: nn.Module  # the weights trained and checkpointed
    train_model: nn.Module  # ``model``, wrapped in DistributedDataParallel under torchrun
    ema: AveragedModel | None  # the averaged weights (train.ema_decay), or None
    meta: ModelMeta
    criterion: nn.Module
    inference: Inference
    amp_dtype: torch.dtype | None
    train_ds: Any
    sampler: GlobalBatchSampler
    generator: torch.Generator
    loader: DataLoader
    val_loader: DataLoader | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    batches_per_epoch: int  # whole accumulation windows only
    # Fixed by `plan_steps`:
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    total_steps: int = 0
    epochs: int = 0
    budget_plan: budget.BudgetPlan | None = None
    replan: Replan | None = None  # the budget's second plan, due at the warm-up's end (replan.py)
    amp_choice: amp_probe.AmpChoice | None = None  # train.amp=auto, timed on a CPU with native bf16
    # Where the run stands: zero for a fresh run, read from the checkpoint on resume.
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    best_miou: float = -1.0
    best_epoch: int = 0
    stale_rounds: int = 0  # validation rounds since the last new best val mIoU (train.early_stop)
    rng_state: torch.Tensor | None = None
    bn_loader: DataLoader | None = None  # training images for the EMA copy's BatchNorm (train.ema_bn_images)
    ema_eval: nn.Module | None = None  # that copy, as of the last validation
    validation_seconds: float = 0.0  # spent validating so far by this invocation

    def refresh_ema_eval(self) -> None:
        """Recompute the EMA copy that validation scores and best.pt keeps (train.ema_bn_images)."""
        if self.ema is not None and self.bn_loader is not None:
            self.ema_eval = with_recomputed_bn(self.ema.module, self.bn_loader, self.meta.preprocessing,
                                               self.ctx.device, self.amp_dtype)

    @property
    def accum(self) -> int:
        return self.cfg.train.grad_accum

    @property
    def channels_last(self) -> bool:
        """Feed training batches channels-last (train.channels_last; unset: on the CPU)."""
        wanted = self.cfg.train.channels_last
        return self.ctx.device.type == "cpu" if wanted is None else wanted

    @property
    def end_epoch(self) -> int:
        """Where this invocation stops: the schedule's end, or earlier with train.stop_after."""
        return min(self.epochs, self.cfg.train.stop_after or self.epochs)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation scores and best.pt keeps: the EMA's when it is on (with its BatchNorm
        statistics recomputed at the last validation under train.ema_bn_images)."""
        if self.ema is None:
            return self.model
        return self.ema_eval if self.ema_eval is not None else self.ema.module


def build_run(cfg: Config, ctx: Context, log: Callable[[str], None]) -> Run:
    """Everything but the step count and the schedule (see `plan_steps`), from ``cfg``."""
    set_threads(cfg.train.threads)
    amp_dtype = resolve_amp(cfg.train.amp, ctx.device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed)  # before the model: its initial weights come from this seed
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    if ctx.is_main:
        warn_if_crops_are_mostly_padding(train_ds, cfg.data.crop_size, cfg.data.scale_range, cfg.data.train_size)
    val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False) if cfg.data.val_split else None
    # the EMA copy's BatchNorm statistics come from training images seen without augmentation
    bn_ds = (build_dataset(cfg.data, cfg.data.train_split, train=False)
             if cfg.train.ema_bn_images and cfg.train.ema_decay else None)
    cache = resolve_sample_cache(cfg.data)
    for ds in (train_ds, val_ds, bn_ds):
        if ds is not None:
            ds.cache_samples = cache
    if cache:
        log("decoded images and masks stay in memory after their first read (data.cache)")
    model, meta = _model(cfg, ctx, train_ds, log)
    check_batch_norm_batch_size(cfg, ctx, model)  # batch 1 trains or fails here, not mid-step
    weights = class_weights_for(cfg, train_ds, log)
    criterion = build_loss(cfg.loss.terms, ignore_index=train_ds.ignore_index, aux_weight=cfg.loss.aux_weight,
                           class_weights=weights.to(ctx.device) if weights is not None else None).to(ctx.device)
    sampler, generator, loader, val_loader = _loaders(cfg, ctx, train_ds, val_ds)
    steps_per_epoch = len(train_ds) // cfg.data.batch_size // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"train.grad_accum={cfg.train.grad_accum} is larger than the "
                         f"{len(train_ds) // cfg.data.batch_size} batches of an epoch")
    check_finetune(cfg, model)
    device = ctx.device
    bn_loader = None if bn_ds is None else DataLoader(spread_subset(bn_ds, cfg.train.ema_bn_images),
                                                      batch_size=cfg.data.batch_size, collate_fn=collate_pairs)
    return Run(
        cfg=cfg, ctx=ctx, model=model, train_model=wrap_for_training(model, ctx),
        ema=build_ema(model, cfg.train.ema_decay, cfg.train.ema_warmup_steps),
        meta=meta, criterion=criterion, amp_dtype=amp_dtype,
        inference=inference_from_config(cfg.eval, meta.preprocessing, cfg.data.eval_size, amp_dtype),
        train_ds=train_ds, sampler=sampler, generator=generator, loader=loader, val_loader=val_loader,
        optimizer=build_optimizer(model, cfg.optim),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        steps_per_epoch=steps_per_epoch, batches_per_epoch=steps_per_epoch * cfg.train.grad_accum,
        bn_loader=bn_loader,
    )


def _model(cfg: Config, ctx: Context, train_ds, log: Callable[[str], None]) -> tuple[nn.Module, ModelMeta]:
    """The model on its device, and the facts every checkpoint of it carries."""
    args = model_args_for(cfg.model.args, train_ds, log)  # in_channels from the images when not set
    model = create_model(cfg.model.name, train_ds.num_classes, **args)
    preprocessing = preprocessing_for(cfg.model.preprocessing, model.preprocessing, args.get("in_channels", 3),
                                      train_ds, log)
    meta = ModelMeta(spec=model.imseg_spec, preprocessing=preprocessing, class_names=tuple(train_ds.class_names),
                     palette=tuple(tuple(c) for c in train_ds.palette), ignore_index=train_ds.ignore_index,
                     eval_size=tuple(cfg.data.eval_size) if cfg.data.eval_size else None,
                     eval_settings=dataclasses.asdict(cfg.eval), data=cfg.to_dict()["data"])
    if cfg.model.init_from:  # before anything swaps modules, so the keys are the builder's own
        load_init_weights(model, meta, cfg.model.init_from, log if ctx.is_main else lambda _: None,
                          cfg.model.init_mismatched)
    if cfg.train.bn_momentum is not None:  # its range is checked with the config
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.train.bn_momentum
    switched = apply_depthwise_grad(model, cfg.train.fast_depthwise_grad, ctx.device)
    if switched and ctx.is_main:
        log(f"{switched} depthwise convolutions compute their gradients imseg's way on the CPU "
            "(train.fast_depthwise_grad)")
    if cfg.train.sync_bn and ctx.distributed and ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(ctx.device), meta


def class_weights_for(cfg: Config, train_ds, log: Callable[[str], None]) -> torch.Tensor | None:
    """``loss.class_weights`` as a tensor (None for 'none'); the config has checked its kind already."""
    spec = cfg.loss.class_weights
    if spec == "none":
        return None
    if isinstance(spec, list):
        if len(spec) != train_ds.num_classes:  # the class count is the dataset's: known only now
            raise ValueError(
                f"loss.class_weights has {len(spec)} values but the dataset has {train_ds.num_classes} classes"
            )
        return torch.tensor(spec, dtype=torch.float32)
    if spec == "median_frequency":
        weights = median_frequency_weights(train_ds)
    else:
        weights = enet_weights(train_ds, cfg.loss.enet_c)
        spec = f"enet (c={cfg.loss.enet_c})"
    log(f"{spec} class weights: " + " ".join(f"{w:.3f}" for w in weights.tolist()))
    return weights


def _loaders(cfg: Config, ctx: Context, train_ds, val_ds):
    """The training sampler, the generator its workers are seeded from, and the two loaders."""
    train_ds.set_augmentation_seed(cfg.train.seed)
    sampler = GlobalBatchSampler(len(train_ds), cfg.data.batch_size, seed=cfg.train.seed,
                                 rank=ctx.rank, world_size=ctx.world_size)
    generator = torch.Generator()
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        worker_init_fn=seed_worker, generator=generator, pin_memory=ctx.device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        # Each process scores its own share (rank, rank + world, ...): no image
        # twice, none dropped; the confusion matrices are summed afterwards.
        shard = Subset(val_ds, range(ctx.rank, len(val_ds), ctx.world_size)) if ctx.distributed else val_ds
        val_loader = DataLoader(shard, batch_size=max(1, cfg.data.batch_size // (2 * ctx.world_size)),
                                num_workers=cfg.data.num_workers, collate_fn=collate_pairs)  # sizes may differ
    return sampler, generator, loader, val_loader


def plan_steps(run: Run, state: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """Fix the step count (train.max_steps, else the time budget, else whole epochs) and the schedule over it."""
    train_cfg = run.cfg.train
    _settle_auto_amp(run, state, log)  # before the budget: its rehearsal times the precision that will run
    if train_cfg.max_steps is None and train_cfg.time_budget_minutes is not None:
        train_cfg.max_steps = _budgeted_steps(run, state, log)  # written to config.yaml and every checkpoint
    if train_cfg.max_steps is not None:
        run.total_steps = train_cfg.max_steps
        run.epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    else:
        run.epochs = train_cfg.epochs
        run.total_steps = run.steps_per_epoch * run.epochs
    run.scheduler = build_scheduler(run.optimizer, run.total_steps, run.cfg.optim)


def _budgeted_steps(run: Run, state: dict[str, Any] | None, log: Callable[[str], None]) -> int:
    """The steps that fit train.time_budget_minutes: the count a resumed run fixed, else a rehearsal's."""
    resolved = resolved_steps(state)
    if resolved is not None:
        log(f"time budget: the run being resumed fixed train.max_steps={resolved}; keeping it")
        return resolved
    run.sampler.set_epoch(0)
    changed = _rehearsal_state(run)
    spent = run.amp_choice.probe_seconds if run.amp_choice is not None else 0.0
    started = budget._clock() - spent
    run.budget_plan = budget.plan(
        run.cfg.train.time_budget_minutes, loader=run.loader, run_step=lambda batches: rehearsal_step(run, batches),
        accum=run.accum, restore=changed, validate=(lambda: _validation_seconds(run)) if run.val_loader is not None else None,
        val_every=run.cfg.train.val_every, steps_per_epoch=run.steps_per_epoch,
        spent_seconds=spent)
    log(run.budget_plan.describe())
    run.replan = replan_for(run, started)
    return run.budget_plan.max_steps


def _rehearsal_state(run: Run) -> dict[str, Any]:
    """What a rehearsal's steps change and must put back: model, optimiser, AMP scaler, EMA."""
    changed = {"model": run.model, "optimizer": run.optimizer, "scaler": run.scaler}
    if run.ema is not None:
        changed["ema"] = run.ema
    return changed


def _validation_seconds(run: Run) -> float:
    """A whole validation pass, estimated from a few images of this process's share (with the EMA copy's
    BatchNorm recomputation, timed on one batch, when train.ema_bn_images is set)."""
    shard, batch_size = run.val_loader.dataset, run.val_loader.batch_size
    sample = Subset(shard, range(min(len(shard), 2 * batch_size)))
    bn_seconds = 0.0
    if run.ema is not None and run.bn_loader is not None:
        start, one_batch = time.perf_counter(), [next(iter(run.bn_loader))]
        with_recomputed_bn(run.ema.module, one_batch, run.meta.preprocessing, run.ctx.device, run.amp_dtype)
        bn_seconds = (time.perf_counter() - start) * len(run.bn_loader)
    scores = evaluate(run.eval_model, DataLoader(sample, batch_size=batch_size), num_classes=run.meta.num_classes,
                      ignore_index=run.meta.ignore_index, inference=run.inference, device=run.ctx.device)
    return scores["seconds"] / len(sample) * len(shard) + bn_seconds


def _settle_auto_amp(run: Run, state: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """``train.amp: auto`` on a CPU with native bf16: the precision a resumed run chose, else the faster
    one on this CPU (amp_probe.py); written into the run's config as ``bf16`` or ``none``."""
    if run.cfg.train.amp != "auto" or run.ctx.device.type != "cpu" or run.amp_dtype is None:
        return  # float32 on a CPU without native bf16, and a GPU's autocast, need no timing
    chosen = (state or {}).get("config", {}).get("train", {}).get("amp", "auto")
    planned = _planned_steps(run)
    if chosen != "auto":
        log(f"train.amp=auto: the run being resumed chose train.amp={chosen}; keeping it")
    elif planned is not None and planned < amp_probe.MIN_RUN_STEPS:
        chosen = "none"
        log(f"train.amp=auto: {planned} steps are too few to time both precisions first; training in float32")
    else:
        run.sampler.set_epoch(0)
        timer = amp_probe.rehearsal_timer(run.loader, lambda batches: rehearsal_step(run, batches), run.accum,
                                          _rehearsal_state(run), lambda dtype: _use_amp(run, dtype))
        run.amp_choice = amp_probe.probe(timer)
        chosen = run.amp_choice.chosen
        log(run.amp_choice.describe())
    run.cfg.train.amp = chosen
    _use_amp(run, torch.bfloat16 if chosen == "bf16" else None)


def _planned_steps(run: Run) -> int | None:
    """The run's step count as the config gives it; None for a time budget (resolved later)."""
    train_cfg = run.cfg.train
    if train_cfg.max_steps is not None:
        return train_cfg.max_steps
    return None if train_cfg.time_budget_minutes is not None else train_cfg.epochs * run.steps_per_epoch


def _use_amp(run: Run, dtype: torch.dtype | None) -> None:
    run.amp_dtype = dtype
    run.inference = dataclasses.replace(run.inference, amp_dtype=dtype)
