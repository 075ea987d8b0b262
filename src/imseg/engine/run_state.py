"""A run's checkpoints: what one holds (`checkpoint_state`), which one to resume from, and `restore`.

Resume is bit-exact because a checkpoint holds every state the loop reads:
the weights (and the EMA's), optimiser, scheduler, AMP scaler, the position
in the epoch, the best score so far and the RNG state; the data order and
augmentation are functions of (seed, epoch, index). Keys added since the
first checkpoints (``best_epoch``, ``stale_rounds``, ``ema``) are optional
when reading, so a checkpoint written before them resumes as it always did.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from imseg.config import Config
from imseg.engine import distributed
from imseg.engine.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint, save_checkpoint
from imseg.engine.run_folder import check_run_folder

if TYPE_CHECKING:
    from imseg.engine.run_setup import Run


def checkpoint_state(run: Run, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any],
                     training_state: bool = True) -> dict[str, Any]:
    """The checkpoint of ``run`` now; ``training_state=False`` leaves out what only resuming needs.

    best.pt is for evaluation, prediction and export, never for resuming, so
    it holds the weights without the optimiser state: with Adam that is a
    third of the size (2 GB instead of 6 GB for FCN-8s with its fc6). Its
    weights are the ones validation scored: the EMA's when EMA is on, so
    eval, predict and export use them unchanged. A resume checkpoint holds
    the training weights as ``state_dict`` and the whole EMA as ``ema``.
    """
    state = {
        **run.meta.to_dict(),
        "state_dict": (run.model if training_state else run.eval_model).state_dict(),
        "config": run.cfg.to_dict(),
        "epoch": epoch_done,
        "batch_in_epoch": batch_in_epoch,
        "global_step": run.step,
        "total_steps": run.total_steps,
        "best_miou": run.best_miou,
        "best_epoch": run.best_epoch,
        "stale_rounds": run.stale_rounds,
        "metrics": metrics,
    }
    if training_state:
        state.update(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                     scaler=run.scaler.state_dict(), rng_state=torch.get_rng_state())
        if run.ema is not None:
            state["ema"] = run.ema.state_dict()
    return state


def save_run_checkpoint(run: Run, path: Path, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any],
                        training_state: bool = True) -> None:
    """Write `checkpoint_state` to ``path`` from the main process (every process holds the same state)."""
    if run.ctx.is_main:
        save_checkpoint(checkpoint_state(run, epoch_done, batch_in_epoch, metrics, training_state), path)


def resume_point(cfg: Config, resume: str | Path | None, overwrite: bool, ctx: distributed.Context,
                 log: Callable[[str], None]) -> str | Path | None:
    """The checkpoint to resume from: ``resume`` itself, or for ``"auto"`` the newest readable one (None: fresh).

    A fresh start in a folder that already holds a run is refused unless
    ``overwrite`` (see run_folder.py).
    """
    out_dir = Path(cfg.train.out_dir)
    if resume is None and distributed.elastic_restart_count() > 0:
        resume = "auto"  # torchrun restarted us after a failure: continue, don't start over
    if resume is None and check_run_folder(out_dir, overwrite, ctx.is_main):
        log(f"--overwrite: deleted the earlier run's checkpoints and logs in {out_dir}")
    if resume == "auto":
        resume = find_resume_checkpoint(out_dir)
        log(f"--resume auto: {'continuing from ' + str(resume) if resume else 'no checkpoint yet, starting fresh'}")
    return resume


def read_resume_state(path: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a resume point for the model ``spec`` describes."""
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise CheckpointError(
            f"checkpoint {path} holds weights only (best.pt keeps no optimiser state), so a run cannot "
            f"resume from it: resume from last.pt or a step-*.pt checkpoint of the same run folder"
        )
    if state["model"] != spec:
        raise CheckpointError(f"checkpoint {path} was made for model {state['model']}, but the config builds {spec}")
    return state


def resolved_steps(state: dict[str, Any] | None) -> int | None:
    """The step count a budgeted run being resumed fixed for itself (older checkpoints: from their config)."""
    if state is None:
        return None
    return state.get("total_steps") or state.get("config", {}).get("train", {}).get("max_steps")


def restore(run: Run, state: dict[str, Any], path: str | Path, log: Callable[[str], None]) -> None:
    """Put ``run`` back where the checkpoint ``state`` (read from ``path``) left it; after `plan_steps`,
    since building the schedule resets the optimiser's learning rate."""
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.start_batch = state["epoch"], state.get("batch_in_epoch", 0)
    run.step, run.best_miou, run.rng_state = state["global_step"], state["best_miou"], state.get("rng_state")
    run.best_epoch, run.stale_rounds = state.get("best_epoch", 0), state.get("stale_rounds", 0)
    if run.ema is not None and "ema" in state:
        run.ema.load_state_dict(state["ema"])
    elif run.ema is not None:
        log("the checkpoint holds no EMA weights (train.ema_decay was off): the average starts from its weights")
    log(f"resumed from {path} at epoch {run.start_epoch + 1}, batch {run.start_batch} (step {run.step})")
