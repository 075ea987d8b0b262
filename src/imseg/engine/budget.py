"""Time-budgeted training: fix the number of optimiser steps to what fits a budget on this machine.

``train.time_budget_minutes: 20`` turns into ``train.max_steps: N`` once,
before training starts, so that the learning-rate schedule spans exactly the
steps that will run (a run that is simply cut off at 20 minutes would end
in the middle of its schedule, at a high learning rate). N comes from a
rehearsal: the first optimiser steps (2% of the budget, at least four) are
run on the real batches, through the real model, optimiser and data loader,
and timed; so is validation on a few images. Then the model, optimiser, AMP scaler and random
state are put back as they were, so the rehearsal leaves no trace: the
budgeted run and a rerun with ``--set train.max_steps=N`` give identical
weights, on any machine.

The rehearsal's first steps run on a cold machine (and, with ``data.cache``,
on images decoded for the first time), so on a long run its estimate has
missed by 10-25% (docs/benchmarks.md). When the schedule has a warm-up of at
least ``MIN_REPLAN_STEPS`` steps, the count is planned once more at its end,
from the run's own steps (the later three quarters of the warm-up, minus
any validation in them) and the time already spent (replan.py). Before that
step the learning rate does not depend on the step count, so the re-planned
run is still exactly ``--set train.max_steps=N`` with the final N.

What the budget covers: the training steps (data loading included) and the
validation passes, less the time the rehearsal itself took (and, with
``train.amp: auto`` on a CPU with native bf16, the timing of both precisions
that comes before it: amp_probe.py). Checkpoint
writes are not timed; ``MARGIN`` of the budget is kept back for them and
for the step-to-step noise of a shared machine.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch

from imseg.engine import distributed

MARGIN = 0.03  # of the budget, kept back for checkpoints and noise
# The rehearsal runs at least WARMUP_STEPS + TIMED_STEPS steps, and more while
# it has used less than REHEARSAL_SHARE of the budget (at most
# MAX_REHEARSAL_STEPS): on a 2-core CPU the first 4-6 steps of a fresh model
# run 15-35% slower than the rest (allocator and kernel warm-up), so a
# 4-step rehearsal of the demo planned 1.17 s a step for steps that took 0.87.
# The step time is the median of the later half of the steps (at least
# TIMED_STEPS of them); the earlier ones are warm-up.
WARMUP_STEPS = 1
TIMED_STEPS = 3
REHEARSAL_SHARE = 0.02
MAX_REHEARSAL_STEPS = 40
MIN_REPLAN_STEPS = 20  # a shorter warm-up is too short a window to time steps in

_clock: Callable[[], float] = time.perf_counter  # tests replace it with a fake clock


@dataclass(frozen=True)
class BudgetPlan:
    budget_minutes: float
    seconds_per_step: float
    seconds_per_validation: float
    rehearsal_seconds: float
    max_steps: int
    epochs: float
    # Filled in when the count is planned again at the end of the warm-up (see the module's docstring):
    rehearsed_max_steps: int | None = None  # the rehearsal's count, which max_steps then replaces
    replanned_at_step: int | None = None
    replanned_seconds_per_step: float | None = None  # measured on the run's own steps
    replanned_elapsed_seconds: float | None = None  # of the budget, when it was planned again

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"time budget {self.budget_minutes:g} min: {self.seconds_per_step:.2f} s per step, "
                f"{self.seconds_per_validation:.1f} s per validation (timed in a {self.rehearsal_seconds:.0f} s "
                f"rehearsal) -> train.max_steps={self.max_steps} ({self.epochs:.1f} epochs); repeat this run "
                f"exactly anywhere with --set train.max_steps={self.max_steps}")

    def describe_replan(self) -> str:
        return (f"time budget planned again at step {self.replanned_at_step}, the end of the learning-rate "
                f"warm-up: {self.replanned_seconds_per_step:.2f} s per step on the run's own steps (the rehearsal "
                f"timed {self.seconds_per_step:.2f}), {self.replanned_elapsed_seconds:.0f} s of the budget spent -> "
                f"train.max_steps={self.max_steps} ({self.epochs:.1f} epochs) instead of "
                f"{self.rehearsed_max_steps}; repeat this run exactly anywhere with --set "
                f"train.max_steps={self.max_steps}")


def validations(steps: int, steps_per_epoch: int, val_every: int, has_val: bool) -> int:
    """How many validation passes a run of ``steps`` steps makes (every ``val_every`` epochs and at the end)."""
    if not has_val:
        return 0
    epochs = math.ceil(steps / steps_per_epoch)
    return epochs // val_every + (1 if epochs % val_every else 0)


def steps_within(budget_seconds: float, step_seconds: float, val_seconds: float, steps_per_epoch: int,
                 val_every: int, has_val: bool) -> int:
    """The largest step count whose steps and validation passes fit ``budget_seconds`` (at least 1)."""
    def cost(n: int) -> float:
        return n * step_seconds + validations(n, steps_per_epoch, val_every, has_val) * val_seconds

    upper = math.floor(budget_seconds / step_seconds)  # no validation at all: too many
    # Validation passes grow with n, so paying for ``upper``'s passes gives a count that fits;
    # then walk up while one more step still fits.
    n = max(1, math.floor((budget_seconds - validations(max(1, upper), steps_per_epoch, val_every, has_val)
                           * val_seconds) / step_seconds))
    while cost(n + 1) <= budget_seconds:
        n += 1
    return n


def replan_window(warmup_iters: int, planned_steps: int) -> tuple[int, int] | None:
    """The steps (first, last) whose timing plans the count again, ending at the warm-up's end; None when the
    warm-up is shorter than MIN_REPLAN_STEPS or the run would end within it."""
    if warmup_iters < MIN_REPLAN_STEPS or warmup_iters >= planned_steps:
        return None
    return warmup_iters // 4, warmup_iters


def replanned_steps(remaining_seconds: float, step: int, step_seconds: float, val_seconds: float,
                    steps_per_epoch: int, val_every: int, has_val: bool) -> int:
    """The largest total step count whose steps after ``step`` and validation passes after the ones already
    made fit ``remaining_seconds`` (at least ``step + 1``)."""
    done = (step // steps_per_epoch) // val_every if has_val else 0  # after whole epochs only

    def cost(n: int) -> float:
        return (n - step) * step_seconds + (validations(n, steps_per_epoch, val_every, has_val) - done) * val_seconds

    n = step + max(1, math.floor(remaining_seconds / max(step_seconds, 1e-9)))  # no validation at all: an upper end
    while n > step + 1 and cost(n) > remaining_seconds:
        n -= 1
    return n


def _snapshot(modules: dict[str, Any]) -> dict[str, Any]:
    state = {name: copy.deepcopy(obj.state_dict()) for name, obj in modules.items()}
    state["rng"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore(modules: dict[str, Any], state: dict[str, Any]) -> None:
    for name, obj in modules.items():
        obj.load_state_dict(state[name])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _batches(loader: Iterable, count: int):
    """``count`` batches from ``loader``, going round it again when an epoch is shorter."""
    given = 0
    while given < count:
        for batch in loader:
            yield batch
            given += 1
            if given == count:
                return


def agree(value: float) -> float:
    # Every process must plan the same number of steps: take the slowest.
    return distributed.all_reduce_(torch.tensor([value], dtype=torch.float64),
                                   torch.distributed.ReduceOp.MAX).item()


def _keep_rehearsing(times: list[float], seconds: float) -> bool:
    if len(times) < WARMUP_STEPS + TIMED_STEPS:
        return True
    # Every process must run the same number of rehearsal steps (each is a collective under DDP).
    return bool(agree(float(sum(times) < seconds and len(times) < MAX_REHEARSAL_STEPS)))


def rehearse_step_seconds(loader: Iterable, run_step: Callable[[list], None], accum: int,
                          restore: dict[str, Any], seconds: float = 0.0) -> float:
    """Median seconds per optimiser step over the later half of real steps run for about ``seconds``
    (see REHEARSAL_SHARE); ``restore`` is put back after."""
    saved = _snapshot(restore)
    times: list[float] = []
    try:
        batches = _batches(loader, MAX_REHEARSAL_STEPS * accum)
        while _keep_rehearsing(times, seconds):
            start = _clock()
            run_step([next(batches) for _ in range(accum)])  # loading the batches is part of a step's time
            times.append(_clock() - start)
    finally:
        _restore(restore, saved)
    warm = max(WARMUP_STEPS, len(times) - max(TIMED_STEPS, len(times) // 2))
    return agree(statistics.median(times[warm:]))


def plan(budget_minutes: float, *, loader: Iterable, run_step: Callable[[list], None], accum: int,
         restore: dict[str, Any], validate: Callable[[], float] | None, val_every: int,
         steps_per_epoch: int, spent_seconds: float = 0.0) -> BudgetPlan:
    """Rehearse, then the step count that fits ``budget_minutes``.

    ``run_step(batches)`` runs one optimiser step on ``accum`` (images,
    masks) batches, as training does; ``validate()`` returns the seconds a
    whole validation pass would take (None: no validation); ``restore`` names
    the objects with state (model, optimiser, scaler, EMA) the rehearsal changes;
    ``spent_seconds`` were taken from the budget before (train.amp=auto's timing, amp_probe.py).
    """
    if not budget_minutes > 0:
        raise ValueError(f"train.time_budget_minutes must be > 0, got {budget_minutes}")
    start = _clock()
    step_seconds = rehearse_step_seconds(loader, run_step, accum, restore,
                                         seconds=REHEARSAL_SHARE * budget_minutes * 60)
    val_seconds = agree(validate()) if validate is not None else 0.0
    rehearsal = _clock() - start + spent_seconds
    usable = budget_minutes * 60 * (1 - MARGIN) - rehearsal
    steps = steps_within(usable, max(step_seconds, 1e-9), val_seconds, steps_per_epoch, val_every,
                         validate is not None)
    return BudgetPlan(budget_minutes=budget_minutes, seconds_per_step=step_seconds,
                      seconds_per_validation=val_seconds, rehearsal_seconds=rehearsal, max_steps=steps,
                      epochs=steps / steps_per_epoch)
