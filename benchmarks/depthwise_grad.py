"""Training-step time with torch's and imseg's depthwise-convolution backward (train.fast_depthwise_grad).

For each model, one training step (forward under autocast or in float32,
OHEM cross-entropy as the CamVid recipes use it, backward, AdamW step) on a
batch of 240x320 crops, the median of ``--repeats`` after two warm-ups, in
four variants timed in alternation: torch's depthwise backward or imseg's
(models/depthwise_grad.py), each in the default (NCHW) and the channels-last
memory format. torchvision's own ``lraspp_mobilenet_v3_large``, the same
network as imseg's ``lraspp``, is timed the same way for reference. Both
precisions where the CPU runs bf16 natively, float32 only otherwise.

    python benchmarks/depthwise_grad.py --threads 2
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

import imseg
from imseg.losses import OhemCrossEntropyLoss
from imseg.machine import cpu_supports_bf16, machine_info, versions
from imseg.models.depthwise_grad import use_depthwise_grad
from imseg.models.registry import main_logits

MODELS = {  # name -> (imseg model, its arguments)
    "lraspp-mobilenet_v3_large": ("lraspp", {"encoder": "mobilenet_v3_large"}),
    "deeplabv3plus-efficientnet_lite0": ("deeplabv3plus", {"encoder": "efficientnet_lite0", "separable": True}),
    "unet-efficientnet_lite0": ("unet", {"encoder": "efficientnet_lite0"}),
}


VARIANTS = ("torch", "torch+channels_last", "imseg", "imseg+channels_last")


def _stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    """One training step of ``model``: autocast forward, OHEM loss as the CamVid recipes, backward, AdamW."""
    loss_fn = OhemCrossEntropyLoss(thresh=0.7, min_kept=y.numel() // 6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        out = out["out"] if isinstance(out, dict) else main_logits(out)
        loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def interleaved_times(model: torch.nn.Module, batch: int, size: tuple[int, int], dtype: torch.dtype | None,
                      repeats: int) -> dict[str, float]:
    """Median step seconds of each variant of ``model``, timed in alternation (round-robin) so that a
    machine that slows mid-run (shared cloud cores) slows every variant alike."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=generator)
    y = torch.randint(0, 11, (batch, *size), generator=generator)
    steps = {}
    for variant in VARIANTS:
        copy_ = copy.deepcopy(model)
        xv = x
        if variant.startswith("imseg"):
            use_depthwise_grad(copy_)
        if variant.endswith("channels_last"):
            copy_, xv = copy_.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        steps[variant] = _stepper(copy_, xv, y, dtype)
    for step in steps.values():
        step(), step()  # warm-up: allocator, oneDNN kernel choice
    times = {variant: [] for variant in steps}
    for _ in range(repeats):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(t) for variant, t in times.items()}


def measure(args: argparse.Namespace, dtype: torch.dtype | None) -> list[dict]:
    rows = []
    size = tuple(args.size)
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                         num_classes=11)
    for label, (name, kwargs) in MODELS.items():
        torch.manual_seed(0)
        model = imseg.create_model(name, 11, **kwargs)
        times = interleaved_times(model, args.batch, size, dtype, args.repeats)
        row = {"model": label, "precision": str(dtype or torch.float32).removeprefix("torch."),
               "depthwise_layers": use_depthwise_grad(copy.deepcopy(model)),
               **{f"{variant}_s": round(t, 4) for variant, t in times.items()},
               **{f"speedup_{variant}": round(times["torch"] / t, 3) for variant, t in times.items()}}
        if name == "lraspp":  # the same network as torchvision builds it, stock everything
            row["torchvision_s"] = round(interleaved_times(reference, args.batch, size, dtype, args.repeats)["torch"], 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/depthwise-grad.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [None, torch.bfloat16] if cpu_supports_bf16() else [None]
    rows = [row for dtype in precisions for row in measure(args, dtype)]
    record = {"rows": rows, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
              "command": "python " + " ".join(sys.argv), "machine": machine_info(probe=False),
              "versions": versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(out)  # atomic: a run killed mid-write leaves the previous file whole
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
