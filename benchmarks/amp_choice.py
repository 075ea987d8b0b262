"""bf16 autocast or float32 for training on this CPU: a step of each, per model, and what ``train.amp: auto`` keeps.

Each model takes training steps (forward, OHEM cross-entropy as the CamVid
recipes use it, backward, AdamW) on a batch of 240x320 crops with imseg's CPU
training defaults (its depthwise backward, channels-last batches), in float32
and under bf16 autocast, timed in alternation after two warm-ups each; the
median of ``--repeats``. ``auto_keeps`` is what `imseg.engine.amp_probe.choose`
decides from those times, which is what a training run with ``train.amp:
auto`` measures for itself on a CPU with native bf16.

    python benchmarks/amp_choice.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import imseg
from imseg.engine.amp_probe import choose
from imseg.machine import alternated_medians, cpu_supports_bf16, machine_info, versions, write_record
from imseg.models.depthwise_grad import use_depthwise_grad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from depthwise_grad import _stepper  # noqa: E402 - the training step every CPU benchmark times

MODELS = {  # label -> (imseg model, its arguments)
    "lraspp-mobilenet_v3_large": ("lraspp", {"encoder": "mobilenet_v3_large"}),
    "lraspp-efficientnet_lite0": ("lraspp", {"encoder": "efficientnet_lite0"}),
    "unet-resnet18": ("unet", {"encoder": "resnet18"}),
    "deeplabv3plus-resnet18": ("deeplabv3plus", {"encoder": "resnet18"}),
    "hrnetv2_w18_small": ("hrnetv2_w18_small", {}),
}


def step_times(name: str, kwargs: dict, batch: int, size: tuple[int, int], repeats: int) -> dict[str, float]:
    """Median seconds of a training step in float32 and under bf16 autocast, timed in alternation."""
    torch.manual_seed(0)
    model = imseg.create_model(name, 11, **kwargs)
    use_depthwise_grad(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (batch, *size), generator=generator)
    steps = {"float32": _stepper(model, x, y, None), "bf16": _stepper(model, x, y, torch.bfloat16)}
    return alternated_medians(steps, repeats)  # two warm-ups each: allocator, oneDNN kernel choice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results/amp-choice.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for label in args.models:
        name, kwargs = MODELS[label]
        t = step_times(name, kwargs, args.batch, tuple(args.size), args.repeats)
        rows.append({"model": label, "float32_s": round(t["float32"], 4), "bf16_s": round(t["bf16"], 4),
                     "bf16_speedup": round(t["float32"] / t["bf16"], 3),
                     "auto_keeps": choose(t["float32"], t["bf16"]).chosen})
        print(json.dumps(rows[-1]), flush=True)
    record = {"rows": rows, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
              "native_bf16": cpu_supports_bf16(), "command": "python " + " ".join(sys.argv),
              "machine": machine_info(probe=False), "versions": versions()}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
