"""What int8 costs: CamVid test mIoU of a trained model in fp32 and in each int8 export.

The checkpoint is exported to ONNX fp32 (the control: it must score as
eager does), ONNX int8 (onnxruntime static QDQ) and OpenVINO int8 (NNCF),
each int8 file calibrated on ``--calibrate`` training images of the model's
own data set; then `imseg eval` scores every file on the test split with the
same inference settings. The target: int8 at most ``--max-drop`` (1.0) mIoU
points below eager fp32.

    python benchmarks/int8_accuracy.py runs/camvid-fast/checkpoints/best.pt --data-root ../shared/data/camvid
    python benchmarks/int8_accuracy.py CKPT --variants onnxruntime-int8 --calibrate 4 --split val   # a quick look
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from imseg.deploy.export import ExportOptions, export_deployable
from imseg.engine.checkpoint import load_model
from imseg.engine.eval_run import run_eval
from imseg.machine import machine_info, versions

VARIANTS = {  # name -> (export format, int8, backend, file name)
    "onnxruntime-fp32": ("onnx", False, "onnxruntime", "fp32.onnx"),
    "onnxruntime-int8": ("onnx", True, "onnxruntime", "int8.onnx"),
    "openvino-int8": ("openvino", True, "openvino", "int8.xml"),
}


def score(checkpoint: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """mIoU per variant (eager first), each with its export report."""
    model = load_model(checkpoint)
    common = {"split": args.split, "data_root": args.data_root, "progress": False, "report": False,
              "boundary": False, "calibration": False, "config": args.config}
    eager = run_eval(checkpoint, out=str(folder / "torch.json"), **common)
    rows: dict[str, Any] = {"torch-fp32": {"mIoU": eager["mIoU"]}}
    size = tuple(model.eval_size or args.size)
    for name in args.variants:
        fmt, int8, backend, file_name = VARIANTS[name]
        options = ExportOptions(size=size, int8=int8, calibrate=args.calibrate, data_root=args.data_root,
                                config=args.config, calibration_method=args.calibration_method,
                                keep_float=args.keep_float)
        report = export_deployable(model, fmt, folder / file_name, checkpoint, options)
        scores = run_eval(str(folder / file_name), out=str(folder / f"{name}.json"), backend=backend, **common)
        drop = 100 * (eager["mIoU"] - scores["mIoU"])
        rows[name] = {"mIoU": scores["mIoU"], "drop_points": drop, "meets_target": drop <= args.max_drop,
                      "export": {k: v for k, v in report.items() if not isinstance(v, dict)}}
        print(f"{name:<18} mIoU {100 * scores['mIoU']:.2f} (eager {100 * eager['mIoU']:.2f}, drop {drop:+.2f} "
              f"points)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trained imseg checkpoint (its config names the data set)")
    p.add_argument("--data-root", help="data folder, if not where the checkpoint's config says")
    p.add_argument("--config", help="take the data section from this YAML instead")
    p.add_argument("--split", default="test")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--calibrate", type=int, default=100, help="training images to calibrate int8 on")
    p.add_argument("--calibration-method", default="moving-average",
                   choices=["moving-average", "minmax", "entropy", "percentile"])
    p.add_argument("--keep-float", default="ends", choices=["none", "head", "ends"], help="layers left in float")
    p.add_argument("--size", nargs=2, type=int, default=[360, 480], help="export size (dynamic files: example only)")
    p.add_argument("--max-drop", type=float, default=1.0, help="target: int8 at most this many mIoU points lower")
    p.add_argument("--keep", help="keep the exported files in this folder (default: a temporary one)")
    p.add_argument("--out", default="benchmarks/results/int8-camvid.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imseg-int8-acc-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = score(args.checkpoint, args, folder)
    out = {"what": f"{args.split} mIoU of {args.checkpoint} in eager fp32 and each export; int8 calibrated on "
                   f"{args.calibrate} training images ({args.calibration_method}; float: {args.keep_float}); "
                   f"target: at most {args.max_drop} points below eager",
           "checkpoint": args.checkpoint, "split": args.split, "results": rows, "machine": machine_info(probe=False),
           "versions": versions("onnxruntime", "openvino", "nncf"), "command": "python " + " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r.get("meets_target", True) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
