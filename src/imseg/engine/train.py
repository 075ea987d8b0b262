"""The training loop, in plain PyTorch, readable in one sitting.

`train` reads top to bottom: set the run up (run_setup.py), fix its step
count, restore it from a checkpoint (run_state.py), then per epoch train
(loop.py) and end the epoch here: validate, log, write checkpoints, and
stop early when validation has stopped improving.

Reproducibility rests on two rules:

* every sample's augmentation is seeded from (seed, epoch, index), and the
  sample order from (seed, epoch) (see `GlobalBatchSampler`), so the data
  does not depend on how many processes or workers load it;
* every checkpoint holds the model, optimiser, scheduler, AMP scaler, EMA,
  the position in the epoch and the RNG state.

So "2 epochs" and "1 epoch, resume, 1 epoch" give identical weights, a run
killed mid-epoch resumes where it stopped, and torchrun with N processes
sees the same global batches as one process.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

from imseg.config import Config, check_config, save_config
from imseg.engine import distributed
from imseg.engine.evaluate import evaluate
from imseg.engine.loop import EpochStats, train_epoch
from imseg.engine.run_folder import open_run_logs
from imseg.engine.run_log import RunLog
from imseg.engine.run_setup import Run, build_run, plan_steps
from imseg.engine.run_state import read_resume_state, restore, resume_point, save_run_checkpoint


def _print(message: str) -> None:
    print(message, flush=True)  # flushed: logs piped to a file or CI show progress as it happens


def _silent(message: str) -> None:
    pass  # processes other than the main one: one copy of every line is enough


def train(cfg: Config, resume: str | Path | None = None, log: Callable[[str], None] = _print,
          overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary with the best validation mIoU and checkpoint paths.

    ``resume``: a checkpoint path, or ``"auto"`` for the newest readable
    checkpoint in ``train.out_dir`` (none found: start fresh). Under torchrun
    elastic restarts, resuming is automatic. A fresh start in a folder that
    already holds a run is refused unless ``overwrite`` (see run_folder.py).
    """
    cfg = check_config(copy.deepcopy(cfg))  # a copy: the resolved time budget is written into it
    ctx = distributed.setup(cfg.train.device)
    logs = RunLog()  # writes nothing until the run folder is open
    try:
        log = log if ctx.is_main else _silent
        resume = resume_point(cfg, resume, overwrite, ctx, log)
        run = build_run(cfg, ctx, log)
        state = read_resume_state(resume, run.meta.spec) if resume is not None else None
        plan_steps(run, state, log)
        if state is not None:
            restore(run, state, resume, log)
        logs = _open_run_folder(run, log)
        return _train_epochs(run, logs, log)
    finally:
        logs.close()  # even on Ctrl-C or an error, which propagate
        distributed.teardown(ctx)


def _open_run_folder(run: Run, log: Callable[[str], None]) -> RunLog:
    return open_run_logs(run.ctx.is_main, run.out_dir, run.ckpt_dir, lambda path: save_config(run.cfg, path), log)


def _train_epochs(run: Run, logs: RunLog, log: Callable[[str], None]) -> dict[str, Any]:
    ctx, amp_dtype, ema_decay = run.ctx, run.amp_dtype, run.cfg.train.ema_decay
    log(
        f"training {run.cfg.model.name} on {len(run.train_ds)} images for {run.epochs} epochs "
        f"({run.steps_per_epoch} steps each, {run.total_steps} in all) on {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "")
        + (f" with {amp_dtype} autocast" if amp_dtype else "")
        + (f", validating EMA weights (decay {ema_decay:g})" if ema_decay else "")
    )
    stop = early_stop_reason(run)  # a resumed run may have stopped early already
    val_scores: dict[str, Any] | None = None
    start = time.perf_counter()
    epoch = run.start_epoch
    while epoch < run.end_epoch and stop is None:  # end_epoch moves when a time budget is planned again
        stats = train_epoch(run, epoch, logs, log)
        scores, stop = end_of_epoch(run, epoch, stats, logs, log)
        val_scores = scores if scores is not None else val_scores
        epoch += 1
    if stop is not None:
        log(stop)
    elif run.start_epoch >= run.end_epoch:
        log(f"nothing to do: the checkpoint already finished {run.start_epoch} epochs")
    return {
        "out_dir": str(run.out_dir),
        "best_val_mIoU": run.best_miou if run.best_miou >= 0 else None,
        "last_checkpoint": str(run.ckpt_dir / "last.pt"),
        "best_checkpoint": str(run.ckpt_dir / "best.pt"),
        "train_seconds": time.perf_counter() - start,
        "total_steps": run.total_steps,
        "budget": run.budget_plan.to_dict() if run.budget_plan is not None else None,
        "amp_choice": run.amp_choice.to_dict() if run.amp_choice is not None else None,
        "resolved_amp": run.cfg.train.amp,  # train.amp, with auto settled on a CPU with native bf16
        "val": val_scores,
        "stopped_early": stop is not None,  # by train.early_stop; the reason is stop_reason
        "stop_reason": stop,
    }


def end_of_epoch(run: Run, epoch: int, stats: EpochStats, logs: RunLog,
                 log: Callable[[str], None]) -> tuple[dict[str, Any] | None, str | None]:
    """Validate when due, log the epoch, write last.pt / best.pt; the scores and the early-stopping reason."""
    done = epoch + 1
    entry: dict[str, Any] = {"type": "epoch", "epoch": done, "step": run.step, "train_loss": stats.loss,
                             "lr": run.optimizer.param_groups[0]["lr"], "epoch_seconds": stats.seconds,
                             "images_per_second": stats.batches * run.cfg.data.batch_size / stats.seconds}
    is_last = done == run.epochs
    scores, improved = None, False
    if run.val_loader is not None and (done % run.cfg.train.val_every == 0 or is_last):
        scores = validate(run)
        miou = scores["mIoU"] or 0.0
        entry.update(val_mIoU=miou, val_pixel_accuracy=scores["pixel_accuracy"],
                     val_mean_class_accuracy=scores["mean_class_accuracy"], val_seconds=scores["seconds"])
        logs.scalars(done, {"val/mIoU": miou, "val/pixel_accuracy": scores["pixel_accuracy"] or 0.0})
        improved = miou > run.best_miou
        run.best_miou, run.best_epoch = (miou, done) if improved else (run.best_miou, run.best_epoch)
        run.stale_rounds = 0 if improved else run.stale_rounds + 1
    logs.scalars(done, {"train/epoch_loss": stats.loss})
    logs.record(entry)
    message = f"epoch {done}/{run.epochs}  loss {stats.loss:.4f}  {stats.seconds:.0f}s"
    if scores is not None:
        message += f"  val mIoU {100 * entry['val_mIoU']:.1f}  pixel acc {100 * entry['val_pixel_accuracy']:.1f}"
    log(message)

    stop = early_stop_reason(run) if done < run.end_epoch else None  # at the end anyway: no early stop
    summary = {k: v for k, v in entry.items() if k != "type"}
    if done % run.cfg.train.save_every == 0 or done == run.end_epoch or stop is not None:
        save_run_checkpoint(run, run.ckpt_dir / "last.pt", done, 0, summary)
    if improved or (run.val_loader is None and is_last):
        save_run_checkpoint(run, run.ckpt_dir / "best.pt", done, 0, summary, training_state=False)
    return scores, stop


def validate(run: Run) -> dict[str, Any]:
    """The validation scores of `Run.eval_model`: the EMA weights when train.ema_decay is set."""
    start = time.perf_counter()
    run.refresh_ema_eval()
    scores = evaluate(run.eval_model, run.val_loader, num_classes=run.meta.num_classes,
                      ignore_index=run.meta.ignore_index, inference=run.inference, device=run.ctx.device,
                      class_names=run.train_ds.class_names, progress=run.cfg.train.progress and run.ctx.is_main,
                      desc="val")
    run.validation_seconds += time.perf_counter() - start
    return scores


def early_stop_reason(run: Run) -> str | None:
    """Why training stops early (train.early_stop validation rounds without a new best), or None."""
    patience = run.cfg.train.early_stop
    if patience is None or run.stale_rounds < patience:
        return None
    best = f"best val mIoU {100 * run.best_miou:.1f}" + (f" at epoch {run.best_epoch}" if run.best_epoch else "")
    rounds = f"{run.stale_rounds} validation round{'s' if run.stale_rounds > 1 else ''}"
    return f"early stop: no new best val mIoU in {rounds} ({best}; train.early_stop={patience})"
