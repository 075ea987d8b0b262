"""Why an EMA of the weights can validate badly: its averaged BatchNorm statistics, measured on val.

    python benchmarks/ema_bn.py runs/bench/RUN/checkpoints/last.pt [more last.pt files] --name ema-bn

For each training checkpoint that holds EMA weights (``train.ema_decay``),
three models are scored on the val split, whole frames, single scale: the
trained weights themselves, the EMA weights with the BatchNorm statistics
averaged along with them (what validation scores without
``train.ema_bn_images``), and the EMA weights with the statistics
recomputed on the training images (``imseg.engine.ema.with_recomputed_bn``:
what it scores with ``train.ema_bn_images``, here over ``--images`` of them).
Writes benchmarks/results/<name>.json with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def score_checkpoint(path: Path, images: int, data_root: str | None, folder: Path) -> dict:
    """Val mIoU of the trained weights, the EMA as averaged and the EMA with recomputed BatchNorm statistics."""
    from torch.utils.data import DataLoader

    from imseg.data import build_dataset
    from imseg.data.collate import collate_pairs
    from imseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from imseg.engine.ema import spread_subset, with_recomputed_bn
    from imseg.engine.eval_run import eval_data_config, run_eval
    from imseg.engine.runtime import resolve_amp

    state = load_checkpoint(path)
    if "ema" not in state:
        raise SystemExit(f"{path}: no EMA weights in this checkpoint (train.ema_decay was off)")
    plain = {k: v for k, v in state.items() if k not in ("ema", "optimizer", "scheduler", "scaler", "rng_state")}
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    model = model_from_checkpoint({**plain, "state_dict": averaged})
    data = eval_data_config(model, path, data_root)
    loader = DataLoader(spread_subset(build_dataset(data, data.train_split, train=False), images),
                        batch_size=8, collate_fn=collate_pairs)
    amp = resolve_amp(state.get("config", {}).get("train", {}).get("amp", "none"), torch.device("cpu"))
    start = time.perf_counter()
    recomputed = with_recomputed_bn(model, loader, model.meta.preprocessing, torch.device("cpu"), amp)
    bn_seconds = time.perf_counter() - start
    row = {"checkpoint": str(path), "epoch": state.get("epoch"), "step": state.get("global_step"),
           "ema_updates": int(state["ema"]["n_averaged"]), "bn_images": len(loader.dataset),
           "bn_seconds": bn_seconds}
    for label, weights in (("trained", state["state_dict"]), ("ema_averaged_bn", averaged),
                           ("ema_recomputed_bn", recomputed.state_dict())):
        file = folder / f"{label}.pt"
        torch.save({**plain, "state_dict": weights}, file)
        scores = run_eval(file, "val", data_root=data_root, out=str(folder / f"{label}.json"), progress=False,
                          report=False, boundary=False, calibration=False)
        row[label] = {"val_mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"]}
        print(f"{path} (epoch {row['epoch']}): {label} val mIoU {100 * scores['mIoU']:.1f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (last.pt) holding EMA weights")
    parser.add_argument("--images", type=int, default=367, help="training images for the recomputed statistics")
    parser.add_argument("--data-root", help="the dataset folder (default: the one the checkpoint names)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="ema-bn", help="benchmarks/results/<name>.json")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from imseg.machine import machine_info, versions

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path in args.checkpoints:
            rows.append(score_checkpoint(path, args.images, args.data_root, Path(folder)))
    record = {"name": args.name, "rows": rows, "threads": args.threads,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/ema_bn.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(), "versions": versions()}
    out = args.results / f"{args.name}.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
