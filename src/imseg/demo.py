"""`make demo`: train a small model on CamVid, evaluate on test, predict, plot.

Training is time-budgeted (``train.time_budget_minutes: 9`` in
configs/demo_camvid.yaml): the steps that fit nine minutes on the machine
running it are counted once at the start, so the whole job, evaluation and
a fresh install included, stays within 15 minutes on a 2-core CPU with or
without AVX-512 (docs/testing.md has the measured times). The last line it
prints is ``test mIoU: NN.N``.

With the ``[weights]`` extra installed (``make test`` installs it) the demo
fine-tunes DeepLabV3+ on the ImageNet EfficientNet-Lite0 encoder that extra
ships (configs/demo_camvid_pretrained.yaml); without it, or with
``--scratch`` (``make demo DEMO=scratch``), it trains LR-ASPP from random
weights. Both use the same budget.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

print = functools.partial(print, flush=True)  # noqa: A001 - progress must show when piped to a file

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo_camvid.yaml"
PRETRAINED_CONFIG = REPO_ROOT / "configs" / "demo_camvid_pretrained.yaml"
PRETRAINED_WEIGHTS = "efficientnet_lite0"  # the pip package of the [weights] extra holds them


def choose_config(config: str | None, scratch: bool) -> tuple[Path, str]:
    """The demo's config and why: a given one; else the pretrained demo when its weights are installed."""
    if config:
        return Path(config), "as given"
    if scratch:
        return DEFAULT_CONFIG, "from scratch, as asked (--scratch)"
    from imseg.models.weight_fetch import WeightsUnavailableError, package_file
    from imseg.models.weight_registry import package_entry

    try:
        package_file(package_entry(PRETRAINED_WEIGHTS))
    except WeightsUnavailableError as e:
        return DEFAULT_CONFIG, (f"from scratch: {e}. With them the demo fine-tunes ImageNet weights "
                                "(docs/benchmarks.md has both scores)")
    return PRETRAINED_CONFIG, f"fine-tuning the ImageNet {PRETRAINED_WEIGHTS} weights of the [weights] extra " \
                              "(--scratch: from random weights instead)"


def run_demo(data_root: str | None = None, out_dir: str = "runs/demo", config: str | None = None,
             overrides: list[str] | None = None, scratch: bool = False) -> int:
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
    config_path, why = choose_config(config, scratch)
    cfg = load_config(config_path, [f"data.root={root}", f"train.out_dir={out_dir}", *(overrides or [])])
    print(f"imseg demo: CamVid from {root}, config {config_path} ({why}), run folder {out_dir}")

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
