"""`make demo`: train a small model on CamVid, evaluate on test, predict, plot.

Training is time-budgeted (``train.time_budget_minutes: 9`` in
configs/demo_camvid.yaml): the steps that fit nine minutes on the machine
running it are counted once at the start, so the whole job, evaluation and
a fresh install included, stays within 15 minutes on a 2-core CPU with or
without AVX-512 (docs/testing.md has the measured times). The last line it
prints is ``test mIoU: NN.N``.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

print = functools.partial(print, flush=True)  # noqa: A001 - progress must show when piped to a file

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo_camvid.yaml"


def run_demo(data_root: str | None = None, out_dir: str = "runs/demo", config: str | None = None,
             overrides: list[str] | None = None) -> int:
    from imseg.engine.eval_run import run_eval
    from imseg.config import load_config
    from imseg.data import DataError, find_camvid_root
    from imseg.engine.checkpoint import load_model
    from imseg.engine.plots import plot_curves
    from imseg.engine.predict import predict_files
    from imseg.engine.train import train

    start = time.perf_counter()
    try:
        root = find_camvid_root(data_root)
    except DataError as e:
        print(f"imseg demo: CamVid not found.\n{e}", file=sys.stderr)
        return 2
    config_path = Path(config) if config else DEFAULT_CONFIG
    cfg = load_config(config_path, [f"data.root={root}", f"train.out_dir={out_dir}", *(overrides or [])])
    print(f"imseg demo: CamVid from {root}, config {config_path}, run folder {out_dir}")

    result = train(cfg, overwrite=True)  # the demo's folder is its own: a second `make demo` starts over
    best = result["best_checkpoint"]
    scores = run_eval(best, "test", data_root=str(root), progress=cfg.train.progress)

    model = load_model(best)
    test_images = sorted((Path(root) / "test").glob("*.png"))[:6]
    pred_dir = Path(out_dir) / "predictions"
    predict_files(model, test_images, pred_dir)
    curves = plot_curves(out_dir)

    minutes = (time.perf_counter() - start) / 60
    print(f"predictions and overlays: {pred_dir}")
    print(f"training curves: {curves}")
    print(f"demo finished in {minutes:.1f} min (training {result['train_seconds'] / 60:.1f} min)")
    print(f"test mIoU: {100 * scores['mIoU']:.1f}")
    return 0
