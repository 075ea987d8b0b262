"""Planning a time-budgeted run's step count once more, at the end of its learning-rate warm-up.

The rehearsal (budget.py) times the first steps of a cold run; this times
the run's own steps over the later three quarters of the warm-up, takes the
time already spent from the budget, and fits the rest. Until the warm-up
ends the learning rate does not depend on the step count (schedule.py), so
the weights so far are those of a run planned with the new count from the
start: ``--set train.max_steps=N`` repeats it exactly. A resumed run keeps
the count its checkpoint holds and is not planned again.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from imseg.config import save_config
from imseg.engine import budget
from imseg.engine.schedule import poly_lambda

if TYPE_CHECKING:
    from imseg.engine.run_setup import Run


@dataclass
class Replan:
    budget_started: float  # budget._clock() when the budget began (the precision timing included)
    first_step: int  # the timing window's first and last optimiser steps (budget.replan_window)
    last_step: int
    window_started: float | None = None
    validation_seconds_before: float = 0.0  # Run.validation_seconds at the window's start


def replan_for(run: Run, budget_started: float) -> Replan | None:
    """The re-plan of a run the rehearsal just planned, or None when its warm-up is too short for one."""
    window = budget.replan_window(run.cfg.optim.warmup_iters, run.budget_plan.max_steps)
    return Replan(budget_started, *window) if window is not None else None


def watch_step(run: Run, log: Callable[[str], None]) -> None:
    """After each optimiser step: open the timing window, or at its end plan the count again."""
    replan = run.replan
    if replan is None:
        return
    if run.step == replan.first_step:
        replan.window_started, replan.validation_seconds_before = budget._clock(), run.validation_seconds
    elif run.step == replan.last_step and replan.window_started is not None:
        run.replan = None
        _plan_again(run, replan, log)


def _plan_again(run: Run, replan: Replan, log: Callable[[str], None]) -> None:
    now = budget._clock()
    steps = replan.last_step - replan.first_step
    validating = run.validation_seconds - replan.validation_seconds_before
    step_seconds = budget.agree((now - replan.window_started - validating) / steps)  # every process: the slowest
    elapsed = budget.agree(now - replan.budget_started)
    plan, train_cfg = run.budget_plan, run.cfg.train
    remaining = plan.budget_minutes * 60 * (1 - budget.MARGIN) - elapsed
    total = budget.replanned_steps(remaining, run.step, step_seconds, plan.seconds_per_validation,
                                   run.steps_per_epoch, train_cfg.val_every, run.val_loader is not None)
    set_total_steps(run, total)
    run.budget_plan = dataclasses.replace(
        plan, max_steps=total, epochs=total / run.steps_per_epoch, rehearsed_max_steps=plan.max_steps,
        replanned_at_step=run.step, replanned_seconds_per_step=step_seconds, replanned_elapsed_seconds=elapsed)
    log(run.budget_plan.describe_replan())
    if run.ctx.is_main:
        save_config(run.cfg, run.out_dir / "config.yaml")  # the run folder's record of the count


def set_total_steps(run: Run, total: int) -> None:
    """Make ``total`` the run's step count: config, epochs, and the schedule's decay (the steps taken stay)."""
    run.cfg.train.max_steps = run.total_steps = total
    run.epochs = math.ceil(total / run.steps_per_epoch)
    run.scheduler.lr_lambdas = [poly_lambda(total, run.cfg.optim) for _ in run.scheduler.lr_lambdas]
