"""Training-step time of model variants of a recipe, so that a variant is compared at equal *time*, not steps.

A variant that makes each step dearer (auxiliary heads) or cheaper (output
stride 32) changes how many steps a time budget holds. Each variant takes
training steps as the fast CamVid recipe runs them (batch 8 of 240x320
crops, channels-last, imseg's depthwise backward, bf16 autocast unless
``--amp none``, OHEM with ENet-like class weights on the main and every
auxiliary output, AdamW), timed in alternation after two warm-ups each; the
median of ``--repeats``. ``steps_at_equal_time`` scales ``--steps`` (the
recipe's step count on the reference variant, the first) by the time ratio
of the whole training step; data loading and the weight average cost the
same for every variant and are left out, so the scaling slightly favours the
cheaper variant's count, which the JSON says.

    python benchmarks/step_variants.py --threads 2 --steps 2021
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import imseg
from imseg.losses import build_loss
from imseg.machine import alternated_medians, machine_info, versions, write_record
from imseg.models.depthwise_grad import use_depthwise_grad

VARIANTS = {  # label -> LR-ASPP arguments (the fast recipe's model is the first)
    "lraspp": {},
    "lraspp-aux4-8-16": {"aux_strides": [4, 8, 16]},
    "lraspp-aux16": {"aux_strides": [16]},
    "lraspp-os32": {"output_stride": 32},
    "lraspp-os32-aux16": {"output_stride": 32, "aux_strides": [16]},
    "lraspp-aux4-8-16-at4": {"aux_strides": [4, 8, 16], "aux_output_stride": 4},
    "lraspp-os32-aux4-8-16-at4": {"output_stride": 32, "aux_strides": [4, 8, 16], "aux_output_stride": 4},
}
CLASS_WEIGHTS = torch.linspace(3.3, 43.9, 11)  # the spread of ENet's CamVid weights (the recipe's)


def stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    """One training step: autocast forward, OHEM on every output (aux_weight 0.4), backward, AdamW."""
    loss_fn = build_loss([{"name": "ohem", "thresh": 0.7, "min_kept": 100_000}], ignore_index=255,
                         class_weights=CLASS_WEIGHTS, aux_weight=0.4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2021, help="the recipe's steps on the first variant")
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/step-variants.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (args.batch, *args.size), generator=generator)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    steps = {}
    for label in args.variants:
        torch.manual_seed(0)
        model = imseg.create_model("lraspp", 11, **VARIANTS[label]).train()
        use_depthwise_grad(model)
        steps[label] = stepper(model, x, y, dtype)
    times = alternated_medians(steps, args.repeats)
    reference = times[args.variants[0]]
    rows = [{"variant": label, "args": VARIANTS[label], "step_s": round(t, 4), "relative": round(t / reference, 3),
             "steps_at_equal_time": round(args.steps * reference / t)} for label, t in times.items()]
    for row in rows:
        print(json.dumps(row), flush=True)
    record = {"rows": rows, "reference_steps": args.steps, "amp": args.amp, "batch": args.batch,
              "size": args.size, "threads": torch.get_num_threads(),
              "left_out": "data loading and the EMA update, the same for every variant (about 0.1 s a step)",
              "command": "python " + " ".join(sys.argv), "machine": machine_info(probe=True), "versions": versions()}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
