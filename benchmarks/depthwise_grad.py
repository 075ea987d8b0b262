"""Training-step time with torch's and imseg's depthwise-convolution backward (train.fast_depthwise_grad).

For each model, one training step (forward under autocast or in float32,
OHEM cross-entropy as the CamVid recipes use it, backward, AdamW step) on a
batch of 240x320 crops, the median of ``--repeats`` after two warm-ups, in
four variants timed in alternation: torch's depthwise backward or imseg's
(models/depthwise_grad.py), each with the batch in the default (NCHW) and in
the channels-last layout (as train.channels_last: the activations follow the
input's layout, the weights keep theirs). torchvision's own ``lraspp_mobilenet_v3_large``, the same
network as imseg's ``lraspp``, is timed the same way for reference. Both
precisions where the CPU runs bf16 natively, float32 only otherwise.

First, single layers: forward and the two backward passes of MobileNetV3's
depthwise layers. The real training loop, data loading included, can be timed as well
(``--loop-recipe``): a few epochs of a recipe with the stock paths and with
imseg's CPU defaults, in alternation.

    python benchmarks/depthwise_grad.py --threads 2 \
        --loop-recipe benchmarks/recipes/camvid-fast.yaml --data-root ../shared/data/camvid
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import imseg
from imseg.losses import OhemCrossEntropyLoss
from imseg.machine import cpu_supports_bf16, machine_info, versions, write_record
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
        if variant.endswith("channels_last"):  # as train.channels_last: the batch only, the weights as they are
            xv = x.contiguous(memory_format=torch.channels_last)
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


# MobileNetV3-Large's depthwise layers in LR-ASPP on a batch of 8 240x320 crops: (channels, input H, W,
# kernel, stride, dilation); the last stage is dilated (output stride 16), as in torchvision's segmentation models.
LAYERS = [(64, 120, 160, 3, 2, 1), (72, 60, 80, 5, 2, 1), (120, 30, 40, 5, 1, 1), (240, 30, 40, 3, 2, 1),
          (672, 15, 20, 5, 1, 2), (960, 15, 20, 5, 1, 2)]


def layer_times(repeats: int) -> list[dict]:
    """Forward, torch's backward and imseg's backward of single depthwise layers, in milliseconds
    (median of ``repeats``), float32 and bf16, the batch in NCHW and channels-last layout."""
    from imseg.models.depthwise_grad import _DepthwiseConv

    def median_ms(fn) -> float:
        fn(), fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    rows = []
    for channels, h, w, k, stride, dilation in LAYERS:
        for dtype, layout in itertools.product((torch.float32, torch.bfloat16),
                                               (torch.contiguous_format, torch.channels_last)):
            x = torch.randn(8, channels, h, w, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
            weight = torch.randn(channels, 1, k, k, dtype=dtype, requires_grad=True)
            geometry = ((stride, stride), (dilation * (k // 2),) * 2, (dilation, dilation))
            y = torch.nn.functional.conv2d(x, weight, None, *geometry, channels)
            grad = torch.randn_like(y)
            mine = _DepthwiseConv.apply(x, weight, *geometry)
            forward = median_ms(lambda: torch.nn.functional.conv2d(x.detach(), weight.detach(), None, *geometry,
                                                                   channels))
            stock = median_ms(lambda: torch.autograd.grad(y, (x, weight), grad, retain_graph=True))
            fast = median_ms(lambda: torch.autograd.grad(mine, (x, weight), grad, retain_graph=True))
            rows.append({"layer": f"{channels}ch {h}x{w} k{k} s{stride} d{dilation}",
                         "precision": str(dtype).removeprefix("torch."),
                         "layout": "channels_last" if layout == torch.channels_last else "NCHW",
                         "forward_ms": round(forward, 2),
                         "torch_backward_ms": round(stock, 2), "imseg_backward_ms": round(fast, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def loop_epochs(recipe: str, data_root: str, rounds: int, epochs: int, out_root: Path) -> dict:
    """The real training loop (``imseg.engine.train``) on ``recipe``: ``epochs`` epochs without validation,
    torch's stock paths and imseg's CPU defaults in alternation, ``rounds`` times each; the seconds of every
    epoch (data loading and the optimiser included) as metrics.jsonl records them."""
    from imseg.config import load_config
    from imseg.engine.train import train

    stock = ["train.fast_depthwise_grad=false", "train.channels_last=false"]
    seconds: dict[str, list[float]] = {"torch": [], "imseg": []}
    for round_ in range(rounds):
        for variant, extra in (("torch", stock), ("imseg", [])):
            out_dir = out_root / f"{variant}-{round_}"
            cfg = load_config(recipe, [f"data.root={data_root}", f"train.out_dir={out_dir}", "train.progress=false",
                                       "train.time_budget_minutes=null", f"train.epochs={epochs}", "data.val_split=''",
                                       f"train.val_every={epochs + 1}", *extra])
            train(cfg, log=lambda line: None, overwrite=True)
            lines = (out_dir / "metrics.jsonl").read_text().splitlines()
            seconds[variant] += [r["epoch_seconds"] for r in map(json.loads, lines) if r["type"] == "epoch"]
    row = {"recipe": recipe, "epochs_each": epochs, "rounds": rounds,
           **{f"{variant}_epoch_s": [round(t, 2) for t in times] for variant, times in seconds.items()},
           "speedup_median_epoch": round(statistics.median(seconds["torch"]) / statistics.median(seconds["imseg"]), 3)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/depthwise-grad.json")
    parser.add_argument("--loop-recipe", default=None,
                        help="also time this recipe's real training loop, stock paths against imseg's")
    parser.add_argument("--data-root", default=None, help="the recipe's data (--loop-recipe)")
    parser.add_argument("--loop-rounds", type=int, default=2)
    parser.add_argument("--loop-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [None, torch.bfloat16] if cpu_supports_bf16() else [None]
    layers = layer_times(args.repeats)
    rows = [row for dtype in precisions for row in measure(args, dtype)]
    loop = None
    if args.loop_recipe:
        with tempfile.TemporaryDirectory() as tmp:
            loop = loop_epochs(args.loop_recipe, args.data_root, args.loop_rounds, args.loop_epochs, Path(tmp))
    record = {"layers": layers, "rows": rows, "training_loop": loop, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
              "command": "python " + " ".join(sys.argv), "machine": machine_info(probe=False),
              "versions": versions()}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
