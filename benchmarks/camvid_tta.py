"""Test-time augmentation for a CamVid benchmark run: chosen on val, then test scored once.

    python benchmarks/camvid_tta.py camvid-flagship      # a finished run of benchmarks/camvid.py
    python benchmarks/camvid.py fast --select-tta       # or as the last step of a run

The run's best.pt is scored on the val split under each candidate inference
setting below; the one with the best val mIoU is kept (a tie goes to the
cheaper, earlier candidate) and only then is the test split evaluated, once,
with it. The val scores of every candidate, the choice and the test scores
land in the run's JSON under "tta", next to the single-scale "test" figures,
so the gain from test-time augmentation is stated apart from the training.

The multi-scale candidate centres on 1.25 because the recipes train on
random rescales in [0.75, 1.75]: objects there are mostly larger than in a
plain 360x480 frame.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Ordered by cost (forward passes per image: 1, 2, 3, 6).
CANDIDATES: tuple[dict, ...] = (
    {"scales": [1.0], "flip": False},
    {"scales": [1.0], "flip": True},
    {"scales": [1.0, 1.25, 1.5], "flip": False},
    {"scales": [1.0, 1.25, 1.5], "flip": True},
)
TEST_KEYS = ("mIoU", "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "mean_bf1", "ece")


def select_and_test(checkpoint: str | Path, run_dir: str | Path, data_root: str | None = None,
                    boundary: bool = True, candidates: tuple[dict, ...] = CANDIDATES) -> dict:
    """Pick the inference setting with the best val mIoU, then score test once with it."""
    import torch

    from imseg.engine.eval_run import run_eval
    from imseg.machine import machine_info

    run_dir = Path(run_dir)
    start = time.perf_counter()
    tried = []
    for i, setting in enumerate(candidates):
        scores = run_eval(str(checkpoint), "val", data_root=data_root, out=str(run_dir / f"eval-val-tta-{i}.json"),
                          progress=False, report=False, boundary=False, calibration=False,
                          inference_overrides=setting)
        tried.append({**setting, "val_mIoU": scores["mIoU"], "val_seconds": scores["seconds"]})
        print(f"val, scales {setting['scales']} flip {setting['flip']}: mIoU {100 * scores['mIoU']:.2f}", flush=True)
    chosen = max(tried, key=lambda t: t["val_mIoU"])  # max keeps the first of equals: the cheaper one
    setting = {"scales": chosen["scales"], "flip": chosen["flip"]}
    scores = run_eval(str(checkpoint), "test", data_root=data_root, out=str(run_dir / "eval-test-tta.json"),
                      progress=False, report=False, boundary=boundary, inference_overrides=setting)
    print(f"test with the val choice {setting}: mIoU {100 * scores['mIoU']:.2f}", flush=True)
    return {
        "candidates": tried,
        "chosen": setting,
        "test": {k: scores[k] for k in TEST_KEYS if k in scores},
        "test_epoch": scores["epoch"],
        "seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info(),  # the TTA pass may run on another machine than the training did
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="result name of a finished run, e.g. camvid-flagship")
    parser.add_argument("--results", default=str(HERE / "results"), help="where the run's JSON is")
    parser.add_argument("--out-dir", default="runs/bench", help="where the run folders are")
    parser.add_argument("--data-root", help="CamVid folder (default: the one in the checkpoint's config)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-boundary", action="store_true", help="skip boundary F1 in the test pass")
    args = parser.parse_args(argv)

    out_json = Path(args.results) / f"{args.name}.json"
    if not out_json.is_file():
        parser.error(f"{out_json} does not exist: run benchmarks/camvid.py first")
    record = json.loads(out_json.read_text())
    if record.get("status") != "ok":
        parser.error(f"{out_json} records a run with status {record.get('status')!r}, not a finished one")
    if "tta" in record:
        parser.error(f"{out_json} already holds a test score with test-time augmentation "
                     f"({record['tta']['chosen']}): the test split is scored once")
    checkpoint = Path(args.out_dir) / args.name / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        parser.error(f"{checkpoint} does not exist (is --out-dir the folder the run was made in?)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tta = select_and_test(checkpoint, checkpoint.parent.parent, args.data_root, boundary=not args.no_boundary,
                          candidates=CANDIDATES)
    tta["command"] = "python benchmarks/camvid_tta.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["tta"] = tta
    out_json.write_text(json.dumps(record, indent=2))
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
