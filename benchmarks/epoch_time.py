"""Time one CamVid training epoch at 360x480 for each model, on this machine.

A full epoch of the big models takes tens of minutes on a 2-core CPU, so the
epoch time is measured over ``--steps`` real training steps (CamVid batches
through the same augmentation, loss and optimiser as `imseg train`, after
one warm-up step) and scaled to the 367 training images. The JSON says so.

    python benchmarks/epoch_time.py --models fcn8s unet deeplabv3plus lraspp
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from torch.utils.data import DataLoader

import imseg
from imseg.data import build_dataset
from imseg.losses import SegmentationLoss

DEFAULT_MODELS = ["fcn8s", "unet", "deeplabv3plus", "lraspp"]


def time_model(name: str, loader: DataLoader, steps: int, num_classes: int) -> dict:
    torch.manual_seed(0)
    model = imseg.create_model(name, num_classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = SegmentationLoss(ignore_index=255)
    batches = iter(loader)
    times = []
    for i in range(steps + 1):
        images, masks = next(batches)
        start = time.perf_counter()
        loss = criterion(model(model.preprocessing(images)), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i > 0:  # step 0 is warm-up (allocator, oneDNN kernel selection)
            times.append(time.perf_counter() - start)
    per_step = statistics.median(times)
    return {
        "model": name,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_seconds_median": per_step,
        "step_seconds_all": times,
        "images_per_second": loader.batch_size / per_step,
        "epoch_seconds_estimate": per_step * 367 / loader.batch_size,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="benchmarks/results/epoch-time-360x480.json")
    args = p.parse_args()

    cfg = SimpleNamespace(name="camvid", root=args.data_root, crop_size=[360, 480], scale_range=[0.5, 2.0],
                          train_size=None, hflip=True, color_jitter=0.0, ignore_index=255)
    ds = build_dataset(cfg, "train", train=True)
    # Data loading is timed separately below; the step timer sees ready batches.
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for i in range(8):
        ds[i]
    load_seconds = (time.perf_counter() - start) / 8

    results = []
    for name in args.models:
        r = time_model(name, loader, args.steps, ds.num_classes)
        print(f"{name:<14} {r['params_millions']:7.2f}M params  {r['step_seconds_median']:7.2f} s/step "
              f"(batch {args.batch_size})  ~{r['epoch_seconds_estimate'] / 60:6.1f} min/epoch", flush=True)
        results.append(r)
    out = {
        "what": "training epoch time on CamVid train (367 images) at 360x480, estimated from the median of "
                f"{args.steps} measured steps after 1 warm-up step",
        "batch_size": args.batch_size,
        "data_seconds_per_image_one_worker": load_seconds,
        "results": results,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": torch.get_num_threads(), "python": sys.version.split()[0]},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "imseg": imseg.__version__},
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
