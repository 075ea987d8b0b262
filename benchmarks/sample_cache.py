"""Training time with and without the decoded-sample cache (data.cache).

Two measurements on a recipe's training split:

* data only: one pass over the split through the training transform
  (decode, random scale, crop, flip, colour jitter), with the cache off and
  with a warm cache, in alternation, ``--rounds`` times each;
* the real training loop (``imseg.engine.train``): ``--epochs`` epochs without
  validation, ``data.cache`` false and true in alternation; the cached run's
  first epoch fills the cache, so the comparison is over the later epochs.

    python benchmarks/sample_cache.py --threads 2 --recipe benchmarks/recipes/camvid-fast.yaml \
        --data-root ../shared/data/camvid
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from imseg.config import load_config
from imseg.data import build_dataset
from imseg.machine import machine_info, versions


def data_pass_seconds(cfg, rounds: int) -> dict:
    """Seconds for one pass over the training split, cache off and warm, ``rounds`` times each."""
    ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    ds.cache_samples = True
    for i in range(len(ds)):
        ds[i]  # fill the cache
    seconds: dict[str, list[float]] = {"decoded_every_time": [], "cached": []}
    for _ in range(rounds):
        for variant, cache in (("decoded_every_time", False), ("cached", True)):
            ds.cache_samples = cache
            start = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            seconds[variant].append(round(time.perf_counter() - start, 3))
    return {"samples": len(ds), **{f"{k}_s": v for k, v in seconds.items()},
            "data_speedup": round(statistics.median(seconds["decoded_every_time"])
                                  / statistics.median(seconds["cached"]), 3)}


def loop_seconds(recipe: str, data_root: str, rounds: int, epochs: int, out_root: Path) -> dict:
    """Epoch seconds of the real training loop with ``data.cache`` false and true, in alternation."""
    from imseg.engine.train import train

    seconds: dict[str, list[float]] = {"no_cache": [], "cache": []}
    for round_ in range(rounds):
        for variant, flag in (("no_cache", "false"), ("cache", "true")):
            out_dir = out_root / f"{variant}-{round_}"
            cfg = load_config(recipe, [f"data.root={data_root}", f"train.out_dir={out_dir}", "train.progress=false",
                                       "train.time_budget_minutes=null", f"train.epochs={epochs}", "data.val_split=''",
                                       f"train.val_every={epochs + 1}", f"data.cache={flag}", "data.num_workers=0"])
            train(cfg, log=lambda line: None, overwrite=True)
            lines = (out_dir / "metrics.jsonl").read_text().splitlines()
            times = [r["epoch_seconds"] for r in map(json.loads, lines) if r["type"] == "epoch"]
            seconds[variant] += times[1:]  # the first epoch decodes in both (it fills the cache)
    row = {"epochs_each": epochs, "rounds": rounds, "compared": "epochs 2 and later of each run",
           **{f"{k}_epoch_s": [round(t, 2) for t in v] for k, v in seconds.items()},
           "loop_speedup_median_epoch": round(statistics.median(seconds["no_cache"])
                                              / statistics.median(seconds["cache"]), 3)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="benchmarks/recipes/camvid-fast.yaml")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sample-cache.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe, [f"data.root={args.data_root}"])
    data = data_pass_seconds(cfg, args.rounds)
    print(json.dumps(data), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        loop = loop_seconds(args.recipe, args.data_root, args.rounds, args.epochs, Path(tmp))
    record = {"recipe": args.recipe, "data_pass": data, "training_loop": loop, "threads": torch.get_num_threads(),
              "command": "python " + " ".join(sys.argv), "machine": machine_info(probe=True), "versions": versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
