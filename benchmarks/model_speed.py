"""Forward latency and training-step time of imseg models at 360x480 on this machine.

For each model: batch-1 inference latency (eval mode, no grad) and the time of
one training step (forward, cross-entropy, backward, SGD step) on a batch of
``--train-batch`` CamVid-sized inputs, each the median of ``--repeats`` runs
after one warm-up. The CamVid epoch time (367 training images) is estimated
from the step time, and the data pipeline's cost per image is measured
separately on real CamVid samples when the data is available.

    python benchmarks/model_speed.py                       # every registered model
    python benchmarks/model_speed.py --models fcn8s unet deeplabv3plus lraspp
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import imseg
from imseg.machine import data_seconds_per_image, machine_info, versions
from imseg.models.profile import count_params
from imseg.models.registry import main_logits

CAMVID_TRAIN_IMAGES = 367


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_model(name: str, size: tuple[int, int], train_batch: int, repeats: int, num_classes: int = 11) -> dict:
    torch.manual_seed(0)
    model = imseg.create_model(name, num_classes)
    channels = model.preprocessing.num_channels
    x1 = torch.randn(1, channels, *size)
    xb = torch.randn(train_batch, channels, *size)
    target = torch.randint(0, num_classes, (train_batch, *size))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def forward():
        with torch.no_grad():
            model(x1)

    def train_step():
        loss = F.cross_entropy(main_logits(model(xb)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.eval()
    fwd, fwd_all = _median_time(forward, repeats)
    model.train()
    step, step_all = _median_time(train_step, repeats)
    return {
        "model": name,
        "params_millions": count_params(model) / 1e6,
        "forward_seconds_batch1": fwd,
        "forward_seconds_all": fwd_all,
        "train_step_seconds": step,
        "train_step_seconds_all": step_all,
        "train_images_per_second": train_batch / step,
        "camvid_epoch_minutes_estimate": step * CAMVID_TRAIN_IMAGES / train_batch / 60,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="benchmarks/results/model-speed-360x480.json")
    args = p.parse_args()

    names = args.models or imseg.list_models()
    size = tuple(args.size)
    results = []
    for name in names:
        r = time_model(name, size, args.train_batch, args.repeats)
        results.append(r)
        print(f"{name:<24} {r['params_millions']:8.2f}M  forward {r['forward_seconds_batch1']:7.3f}s  "
              f"train step (batch {args.train_batch}) {r['train_step_seconds']:7.2f}s  "
              f"~{r['camvid_epoch_minutes_estimate']:6.1f} min/CamVid epoch", flush=True)
    out = {
        "what": f"batch-1 forward latency and batch-{args.train_batch} training step at {size[0]}x{size[1]}, "
                f"median of {args.repeats} runs after 1 warm-up; CamVid epoch = step time x "
                f"{CAMVID_TRAIN_IMAGES} / batch (model compute only)",
        "data_seconds_per_image": data_seconds_per_image(args.data_root),
        "results": results,
        "machine": machine_info(),
        "versions": versions(),
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
