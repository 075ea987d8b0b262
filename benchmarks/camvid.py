"""CamVid from scratch: train a named recipe on train, select on val, test once.

    python benchmarks/camvid.py flagship                  # benchmarks/recipes/camvid-flagship.yaml
    python benchmarks/camvid.py budget --model unet --budget-minutes 4

A recipe is an ordinary imseg config (model, schedule, augmentation, loss) in
benchmarks/recipes/camvid-<name>.yaml. The run trains on the train split,
keeps the checkpoint with the best validation mIoU, and scores the test split
exactly once with it. Everything lands in
benchmarks/results/camvid-<name>[-<model>].json (test mIoU, per-class IoU,
pixel accuracy, epochs, wall times, the validation curve, machine, versions,
the command) with the curves beside it as a PNG. A run that fails is recorded
too, with its error: failed ideas are results.

A recipe with ``train.time_budget_minutes`` (or ``--budget-minutes``, which
sets it) trains for as many optimiser steps as fit that budget on the
machine running it (imseg.engine.budget: the first steps are timed, the
count is fixed once); the JSON records the resolved ``train.max_steps``, so
``--set train.max_steps=N`` repeats the run exactly anywhere. This is also
how every architecture gets the same short budget. A recipe without a val
split scores the last checkpoint. Every JSON records the machine: CPU model,
vector/matrix extensions, kernel caps, torch threads and a float32 matmul
probe (imseg.machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "recipes"
RESULTS = HERE / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe name: benchmarks/recipes/camvid-<recipe>.yaml")
    parser.add_argument("--model", help="train this registered model instead of the recipe's (its own defaults)")
    parser.add_argument("--budget-minutes", type=float, help="as many steps as fit in this much training time")
    parser.add_argument("--no-boundary", action="store_true", help="skip boundary F1 in the test pass (faster)")
    parser.add_argument("--select-tta", action="store_true",
                        help="then choose test-time scales/flip on val and score test with them too "
                             "(benchmarks/camvid_tta.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--data-root", help="CamVid folder (default: IMSEG_DATA or ../shared/data/camvid)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--name", help="result name (default: camvid-<recipe>[-<model>])")
    parser.add_argument("--note", default="", help="free text stored in the JSON: what this run tries")
    parser.add_argument("--out-dir", default="runs/bench", help="where the run folders go")
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON and PNG go")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run from its newest checkpoint")
    again.add_argument("--fresh", action="store_true", help="delete an earlier run folder of this name first")
    return parser


def _overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The recipe's config overrides that the command line implies, in the order they apply."""
    # --model first, so that --set model.args.X=... given with it applies to the new model
    overrides = [f"model.name={args.model}", "model.args={}"] if args.model else []
    overrides += list(args.overrides)
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.budget_minutes:
        overrides.append(f"train.time_budget_minutes={args.budget_minutes}")
    return overrides + [f"train.out_dir={run_dir}", "train.progress=false"]


def _training_record(summary: dict, cfg, run_dir: Path) -> tuple[dict, dict, bool]:
    """What the training run did (steps, budget, curve, best validation), and its best epoch."""
    from imseg.engine.plots import read_log

    steps_per_epoch = max(1, 367 // cfg.data.batch_size // cfg.train.grad_accum)  # CamVid's 367 images
    record = dict(steps=summary["total_steps"], epochs=summary["total_steps"] / steps_per_epoch,
                  resolved_max_steps=summary["total_steps"], budget=summary["budget"],
                  amp_choice=summary.get("amp_choice"), resolved_amp=summary.get("resolved_amp"),
                  repeat_with=f"--set train.max_steps={summary['total_steps']}"
                  + (f" --set train.amp={summary['resolved_amp']}" if summary.get("amp_choice") else ""))
    if summary["budget"]:
        record["budget_minutes"] = summary["budget"]["budget_minutes"]
    epochs = {e["epoch"]: e for e in read_log(run_dir) if e.get("type") == "epoch"}
    record["curve"] = [{k: e.get(k) for k in ("epoch", "train_loss", "val_mIoU", "epoch_seconds")}
                       for _, e in sorted(epochs.items())]
    validated = [e for e in epochs.values() if e.get("val_mIoU") is not None]
    best = max(validated, key=lambda e: e["val_mIoU"]) if validated else max(epochs.values(), key=lambda e: e["epoch"])
    record.update(best_val_mIoU=best.get("val_mIoU"), best_epoch=best["epoch"])
    return record, best, bool(validated)


def _test_record(checkpoint: str, run_dir: Path, args: argparse.Namespace) -> dict:
    """The test split, scored once with the checkpoint chosen on val (and with val-chosen TTA if asked)."""
    from imseg.engine.eval_run import run_eval

    eval_start = time.perf_counter()
    scores = run_eval(checkpoint, "test", data_root=args.data_root, out=str(run_dir / "eval-test.json"),
                      progress=False, report=False, boundary=not args.no_boundary)
    record = {"test_eval_seconds": time.perf_counter() - eval_start,
              "test": {k: scores[k] for k in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "per_class_iou",
                                              "mean_bf1", "ece") if k in scores}}
    if args.select_tta:
        sys.path.insert(0, str(HERE))
        from camvid_tta import select_and_test

        record["tta"] = select_and_test(checkpoint, run_dir, args.data_root, boundary=not args.no_boundary)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    from imseg.config import load_config
    from imseg.engine.plots import plot_curves
    from imseg.engine.train import train
    from imseg.machine import describe, machine_info, versions
    from imseg.models.profile import profile_model

    recipe_path = RECIPES / f"camvid-{args.recipe}.yaml"
    if not recipe_path.is_file():
        known = sorted(p.stem.removeprefix("camvid-") for p in RECIPES.glob("camvid-*.yaml"))
        parser.error(f"no recipe {recipe_path}; known recipes: {', '.join(known)}")
    name = args.name or f"camvid-{args.recipe}" + (f"-{args.model}" if args.model else "")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.out_dir) / name
    if run_dir.exists() and not args.resume:
        if not args.fresh:
            parser.error(f"{run_dir} exists from an earlier run: pass --resume to continue it or --fresh to delete it")
        shutil.rmtree(run_dir)
    cfg = load_config(recipe_path, _overrides(args, run_dir))

    record: dict = {
        "name": name, "recipe": args.recipe, "note": args.note, "model": cfg.model.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/camvid.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "versions": versions(),
    }
    print(f"{name} on {describe(record['machine'])}", flush=True)
    results = Path(args.results)
    out_json = results / f"{name}.json"
    results.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    try:
        profile = profile_model(cfg.model.name, 11, tuple(cfg.data.eval_size or (360, 480)), **cfg.model.args)
        record.update(params_millions=profile.params / 1e6, gflops_at_eval_size=profile.gflops,
                      eval_size=list(profile.size))
        record["config"] = cfg.to_dict()
        train_start = time.perf_counter()
        summary = train(cfg, resume="auto" if args.resume else None)
        record["train_wall_seconds"] = time.perf_counter() - train_start
        trained, best, validated = _training_record(summary, cfg, run_dir)
        record.update(trained)
        record.update(_test_record(summary["best_checkpoint"], run_dir, args))
        record["status"] = "ok"
        if args.recipe != "budget":  # budget-table runs are a table row each, not a curve worth a file
            plot_curves(run_dir, results / f"{name}.png")
        val = f"best val {100 * best['val_mIoU']:.1f} at epoch {best['epoch']}" if validated else "no val split"
        tta = f", {100 * record['tta']['test']['mIoU']:.1f} with the val-chosen TTA" if args.select_tta else ""
        print(f"{name}: test mIoU {100 * record['test']['mIoU']:.1f}{tta} ({val}), "
              f"{record['train_wall_seconds'] / 60:.1f} min training", flush=True)
    except Exception as error:  # recorded, then re-raised: a failed idea is a result too
        record.update(status="failed", error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc(limit=5), wall_seconds=time.perf_counter() - start)
        out_json.write_text(json.dumps(record, indent=2))
        raise
    out_json.write_text(json.dumps(record, indent=2))
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
