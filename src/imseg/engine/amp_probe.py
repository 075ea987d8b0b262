"""``train.amp: auto`` on a CPU with native bf16: time both precisions on the real model and keep the faster.

Native bf16 units do not make bf16 autocast faster for every network on
every CPU. On a 2-core AMD EPYC with avx512_bf16 a training step of
DeepLabV3+ on EfficientNet-Lite0 took 1.16 s under bf16 against 1.83 in
float32 (``benchmarks/results/depthwise-grad.json``); on a 2-core Intel Xeon
with avx512_bf16 and avx512_fp16 (no AMX) U-Net on ResNet-18 took 2.62 s
under bf16 against 2.07 in float32, and LR-ASPP on MobileNetV3 0.76 against
0.80 (``benchmarks/amp_choice.py``). The CPU's flags cannot tell these apart, so
the training run asks the CPU: a few real optimiser steps in each precision,
alternated so that a machine slowing down mid-probe penalises neither, and
put back afterwards as the time budget's rehearsal is (budget.py).

bf16 is kept only when it is at least ``MIN_GAIN`` faster: at equal speed
float32 is the safer numerics. Runs of fewer than ``MIN_RUN_STEPS`` steps
are not timed and train in float32. The choice is written into the run's config
(``train.amp: bf16`` or ``none``), so config.yaml, every checkpoint, a
resumed run and a rerun use the same precision, whatever their machine.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from imseg.engine import budget

MIN_GAIN = 0.05  # bf16 must save at least 5% of a step's time to be kept
ROUNDS = 2  # alternated rehearsals per precision; the faster of each precision's rounds counts
# The timing takes 16 steps (2 rounds x 2 precisions x 1 + 3 steps); a shorter run than this cannot win it
# back, and trains in float32 untimed. A time budget is always timed: it runs for minutes.
MIN_RUN_STEPS = 200


@dataclass(frozen=True)
class AmpChoice:
    float32_seconds: float  # per optimiser step, the faster of ROUNDS rehearsals
    bf16_seconds: float
    chosen: str  # the train.amp value written into the config: "bf16" or "none"
    probe_seconds: float = 0.0  # what the timing took; a time budget counts it as spent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        name = "bf16 autocast" if self.chosen == "bf16" else "float32"
        return (f"train.amp=auto: a training step takes {self.bf16_seconds:.3f} s under bf16 autocast and "
                f"{self.float32_seconds:.3f} s in float32 on this CPU; training in {name} "
                f"(train.amp={self.chosen} repeats it anywhere)")


def choose(float32_seconds: float, bf16_seconds: float, probe_seconds: float = 0.0) -> AmpChoice:
    """bf16 only where it saves at least MIN_GAIN of the float32 step time."""
    faster = bf16_seconds <= float32_seconds * (1 - MIN_GAIN)
    return AmpChoice(float32_seconds, bf16_seconds, "bf16" if faster else "none", probe_seconds)


def probe(time_steps: Callable[[torch.dtype | None], float]) -> AmpChoice:
    """``time_steps(dtype)``: seconds per optimiser step of a rehearsal in that precision (None: float32)."""
    start = budget._clock()  # the budget's clock: tests replace it
    times: dict[torch.dtype | None, list[float]] = {None: [], torch.bfloat16: []}
    for _ in range(ROUNDS):
        for dtype in times:
            times[dtype].append(time_steps(dtype))
    return choose(min(times[None]), min(times[torch.bfloat16]), budget._clock() - start)


def rehearsal_timer(loader, run_step: Callable[[list], None], accum: int, restore: dict[str, Any],
                    set_dtype: Callable[[torch.dtype | None], None]) -> Callable[[torch.dtype | None], float]:
    """A ``time_steps`` for `probe`: the time budget's rehearsal (the shortest one) in the given precision."""
    def time_steps(dtype: torch.dtype | None) -> float:
        set_dtype(dtype)
        return budget.rehearse_step_seconds(loader, run_step, accum, restore)
    return time_steps
