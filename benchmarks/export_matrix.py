"""Which model exports to which format: every registered model (default arguments) and the mobile variants,
exported at a small size to ONNX (dynamic H x W), OpenVINO IR (fp32) and ExecuTorch (XNNPACK), each file
run in its runtime and compared with eager PyTorch (``relative_difference`` = max |exported - eager| /
max |eager|; pass: at most 1e-4). Failures are recorded with the exporter's first error line.

    python benchmarks/export_matrix.py                          # everything (long: FCN / DeconvNet are big)
    python benchmarks/export_matrix.py --only mobile            # the phone models only (a few minutes)
    python benchmarks/export_matrix.py --models lraspp --formats onnx
    python benchmarks/export_matrix.py --resume                 # go on where a stopped run left off
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import imseg
from imseg.machine import machine_info, versions

K = 11
RTOL = 1e-4
FORMATS = ("onnx", "openvino", "executorch")
# The models a phone runs: LR-ASPP and DeepLabV3 / V3+ on MobileNetV3 and EfficientNet-Lite encoders.
MOBILE: dict[str, tuple[str, dict[str, Any]]] = {
    "lraspp/mobilenet_v3_large": ("lraspp", {"encoder": "mobilenet_v3_large"}),
    "lraspp/mobilenet_v3_small": ("lraspp", {"encoder": "mobilenet_v3_small"}),
    "deeplabv3/mobilenet_v3_large": ("deeplabv3", {"encoder": "mobilenet_v3_large", "output_stride": 16}),
    "deeplabv3plus/mobilenet_v3_large": ("deeplabv3plus", {"encoder": "mobilenet_v3_large"}),
    "deeplabv3plus/efficientnet_lite0": ("deeplabv3plus", {"encoder": "efficientnet_lite0"}),
    "lraspp/efficientnet_lite0": ("lraspp", {"encoder": "efficientnet_lite0"}),
}


def entries(only: str, names: list[str] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    table = dict(MOBILE) if only == "mobile" else {**{n: (n, {}) for n in imseg.list_models()}, **MOBILE}
    if names:
        table = {k: v for k, v in table.items() if k in names or v[0] in names}
    return table


def try_format(model: torch.nn.Module, fmt: str, folder: Path, size: tuple[int, int]) -> dict[str, Any]:
    from imseg.deploy.export import ExportOptions, export_deployable

    out = folder / {"onnx": "m.onnx", "openvino": "m.xml", "executorch": "m.pte"}[fmt]
    start = time.perf_counter()
    try:
        report = export_deployable(model, fmt, out, "matrix", ExportOptions(size=size))
    except Exception as e:  # the point of the matrix: record what fails and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"ok": False, "error": f"{type(e).__name__}: {first[:400]}", "seconds": time.perf_counter() - start}
    rel = report.get("relative_difference")
    row = {"ok": rel is not None and rel <= RTOL, "relative_difference": rel, "seconds": time.perf_counter() - start}
    if "ops_outside_xnnpack" in report:
        row["ops_outside_xnnpack"] = report["ops_outside_xnnpack"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["all", "mobile"], default="all")
    p.add_argument("--models", nargs="+", help="entries or registry names to run (default: all of --only)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    p.add_argument("--size", nargs=2, type=int, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--out", default="benchmarks/results/export-matrix.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the models already in --out and run only the others (the JSON is rewritten after "
                        "every model, so a long run stopped half-way loses at most one model)")
    args = p.parse_args(argv)
    size = (args.size[0], args.size[1])
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text())["results"] if args.resume and out.exists() else {}
    for key, (name, kwargs) in entries(args.only, args.models).items():
        if key in results:
            continue
        results[key] = matrix_row(name, kwargs, key, args.formats, size)
        write(out, results, size)
    write(out, results, size)
    print(f"wrote {out}")
    return 0


def matrix_row(name: str, kwargs: dict[str, Any], key: str, formats: list[str], size: tuple[int, int]) -> dict:
    """One model built with random weights and tried in each format."""
    torch.manual_seed(0)
    try:
        model = imseg.create_model(name, K, **kwargs).eval()
    except Exception as e:
        return {"build_error": f"{type(e).__name__}: {e}"}
    row: dict[str, Any] = {"model": name, "kwargs": kwargs}
    for fmt in formats:
        with tempfile.TemporaryDirectory(prefix="imseg-matrix-") as tmp:
            row[fmt] = try_format(model, fmt, Path(tmp), size)
        print(f"{key:<36} {fmt:<11} {'ok' if row[fmt]['ok'] else 'FAIL'} "
              f"{row[fmt].get('relative_difference') or row[fmt].get('error', '')}", flush=True)
    return row


def write(out: Path, results: dict[str, Any], size: tuple[int, int]) -> None:
    record = {"what": f"export at {size[0]}x{size[1]}, run in each runtime, compared with eager (pass: relative "
                      f"difference <= {RTOL}); random weights, {K} classes",
              "results": results, "machine": machine_info(probe=False),
              "versions": versions("onnxruntime", "openvino", "executorch"), "command": "python " + " ".join(sys.argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(out)  # atomic: a run killed mid-write leaves the previous file whole


if __name__ == "__main__":
    sys.exit(main())
