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
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import imseg
from imseg.deploy.parity import probe_input
from imseg.machine import machine_info, versions
from imseg.outputs import main_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import with_batchnorm_statistics  # noqa: E402 - benchmarks/deploy.py, beside this script

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


def try_format(model: torch.nn.Module, fmt: str, folder: Path, size: tuple[int, int],
               dynamic: bool = True) -> dict[str, Any]:
    from imseg.deploy.export import ExportOptions, export_deployable

    out = folder / {"onnx": "m.onnx", "openvino": "m.xml", "executorch": "m.pte"}[fmt]
    start = time.perf_counter()
    try:
        report = export_deployable(model, fmt, out, "matrix", ExportOptions(size=size, dynamic=dynamic))
    except Exception as e:  # the point of the matrix: record what fails and why
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # OpenVINO's first lines name only its source files; the cause follows
        cause = " / ".join(line for line in lines if not line.startswith("Exception from src/")) or " / ".join(lines)
        return {"ok": False, "error": f"{type(e).__name__}: {cause[:400]}", "seconds": time.perf_counter() - start}
    rel = report.get("relative_difference")
    row = {"ok": rel is not None and rel <= RTOL, "relative_difference": rel, "seconds": time.perf_counter() - start,
           "dynamic": report.get("dynamic", False)}
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
    p.add_argument("--markdown", action="store_true", help="print --out as the table in docs/deploy.md; run nothing")
    p.add_argument("--rounding", action="store_true",
                   help="add eager_float32_error and eager_input_sensitivity to the rows of --out that lack them "
                        "(no exports)")
    args = p.parse_args(argv)
    size = (args.size[0], args.size[1])
    out = Path(args.out)
    if args.markdown:
        print(markdown(json.loads(out.read_text())["results"]))
        return 0
    if args.rounding:
        add_rounding(out, size)
        return 0
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
        model = conditioned(imseg.create_model(name, K, **kwargs), size)
    except Exception as e:
        return {"build_error": f"{type(e).__name__}: {e}"}
    x = probe_input(3, size)
    row: dict[str, Any] = {"model": name, "kwargs": kwargs, "conditioned": True,
                           "eager_float32_error": eager_float32_error(model, x),
                           "eager_input_sensitivity": eager_input_sensitivity(model, x)}
    for fmt in formats:
        with tempfile.TemporaryDirectory(prefix="imseg-matrix-") as tmp:
            row[fmt] = try_format(model, fmt, Path(tmp), size)
            if not row[fmt]["ok"] and fmt != "executorch":  # (ExecuTorch is always fixed-size)
                row[fmt]["fixed_size"] = try_format(model, fmt, Path(tmp), size, dynamic=False)
        print(f"{key:<36} {fmt:<11} {'ok' if row[fmt]['ok'] else 'FAIL'} "
              f"{row[fmt].get('relative_difference') or row[fmt].get('error', '')}", flush=True)
    return row


def within_rounding(difference: float | None, eager_error: float | None) -> bool:
    """Above the 1e-4 bound, but no further from eager than eager float32 is from exact (float64) arithmetic:
    a network whose own rounding exceeds the bound cannot be matched to it by any other implementation."""
    return difference is not None and eager_error is not None and difference <= max(RTOL, 2 * eager_error)


def within_sensitivity(difference: float | None, sensitivity: float | None, rounding: float | None) -> bool:
    """Above the 1e-4 bound, but no further from eager than eager itself moves when the input moves by 1e-6,
    in a network that jumps: one whose move is over 10x its own float32 rounding. A smooth network moves under
    such noise by about its rounding (DeconvNet: 1.3e-4 against 3.5e-5) and is held to `within_rounding`;
    SegNet's max-pool switches are argmax decisions, and a near tie decided the other way (by any summation
    order) moves a whole unpooled window (4.6e-3 against 2.1e-5; benchmarks/switch_flips.py)."""
    if difference is None or sensitivity is None or rounding is None:
        return False
    return sensitivity > max(RTOL, 10 * rounding) and difference <= 2 * sensitivity


def failure(cell: dict[str, Any], rounding: float | None) -> str:
    """Why a cell failed: the exporter's or runtime's error, or how far off it is (against eager's own rounding)."""
    if "error" in cell:
        # OpenVINO's size-dependent pads (docs/deploy.md, note 1): the trace is in the JSON, the table says what
        wrong_size = re.search(r"cannot run \S+ at (\d+)x(\d+), a size other than the export's", cell["error"])
        return f"runs at the export's size only, not at {wrong_size[1]} x {wrong_size[2]} (note 1)" if wrong_size \
            else cell["error"]
    difference = cell.get("relative_difference")
    text = f"relative difference {difference:.1e}"
    if rounding:
        text += f" ({difference / rounding:.1f}x eager's own float32 error)"
    return text


def markdown(results: dict[str, Any]) -> str:
    """One row per model, one cell per format: ok and the relative difference, or the first error line."""
    lines = ["| model | ONNX | OpenVINO IR | ExecuTorch (XNNPACK) |", "|---|---|---|---|"]
    for key, row in results.items():
        if "build_error" in row:
            lines.append(f"| {key} | build failed: {row['build_error']} | | |")
            continue
        cells = []
        rounding, sensitivity = row.get("eager_float32_error"), row.get("eager_input_sensitivity")
        for fmt in FORMATS:
            cell = row.get(fmt)
            if cell is None:
                cells.append("not run")
            elif not cell["ok"] and within_rounding(cell.get("relative_difference"), rounding):
                cells.append(f"ok at float32 rounding ({cell['relative_difference']:.0e}; eager float32 itself "
                             f"{rounding:.0e} from float64)")
            elif not cell["ok"] and within_sensitivity(cell.get("relative_difference"), sensitivity, rounding):
                cells.append(f"ok at the model's input sensitivity ({cell['relative_difference']:.0e}; eager itself "
                             f"moves {sensitivity:.0e} when the input moves 1e-6)")
            elif not cell["ok"] and "fixed_size" in cell:
                fixed = cell["fixed_size"]
                if fixed["ok"]:
                    cells.append(f"fixed size only ({fixed['relative_difference']:.0e}); dynamic size: "
                                 f"{failure(cell, rounding)}")
                else:
                    cells.append(f"**fails** at a fixed size ({failure(fixed, rounding)}) and at a dynamic size "
                                 f"({failure(cell, rounding)})")
                continue
            elif cell["ok"]:
                text = f"ok ({cell['relative_difference']:.0e})"
                outside = cell.get("ops_outside_xnnpack")
                if outside is not None:
                    names = ", ".join(sorted(op.removeprefix("aten.").removesuffix(".default") for op in outside))
                    text += f"; outside XNNPACK: {names or 'nothing'}"
                cells.append(text)
            else:
                cells.append(f"**fails**: {failure(cell, rounding)}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conditioned(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """``model`` in eval mode with outputs worth comparing: a parity check of all-zero logits passes vacuously.

    Zero-initialised layers (FCN's score layers, as in the paper) get small random weights, and the BatchNorm
    statistics are measured on random pictures (deploy.py): with fresh ones (mean 0, variance 1) activations
    shrink layer after layer, and a random VGG-16 DeconvNet answered logits of 1e-4, where the rounding of
    large intermediate sums alone exceeds the 1e-4 relative bound.
    """
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.01)
    return with_batchnorm_statistics(model, size)


def add_rounding(out: Path, size: tuple[int, int]) -> None:
    record = json.loads(out.read_text())
    table = entries("all", None)
    for key, row in record["results"].items():
        if key not in table or ("eager_float32_error" in row and "eager_input_sensitivity" in row):
            continue
        name, kwargs = table[key]
        torch.manual_seed(0)  # the same weights as the row's exports
        model = conditioned(imseg.create_model(name, K, **kwargs), size)
        x = probe_input(3, size)
        row.setdefault("eager_float32_error", eager_float32_error(model, x))
        row.setdefault("eager_input_sensitivity", eager_input_sensitivity(model, x))
        print(f"{key:<36} eager float32 vs float64 {row['eager_float32_error']:.1e}, "
              f"under 1e-6 input noise {row['eager_input_sensitivity']:.1e}", flush=True)
        write(out, record["results"], size)  # a long pass stopped half-way keeps what it measured
    write(out, record["results"], size)


@torch.no_grad()
def eager_float32_error(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max |eager float32 - eager float64| / max |eager float64| on ``x``: the float32 rounding of the network
    itself, against which an exported file's difference from eager can be judged."""
    single = main_logits(model(x)).double()
    exact = main_logits(copy.deepcopy(model).double()(x.double()))
    return ((single - exact).abs().max() / exact.abs().max()).item()


@torch.no_grad()
def eager_input_sensitivity(model: torch.nn.Module, x: torch.Tensor, noise: float = 1e-6, draws: int = 3) -> float:
    """max |eager(x + shift) - eager(x)| / max |eager(x)| over ``draws`` shifts ~ N(0, 1e-6):
    how far the network itself moves under a change far below any rounding an exporter adds. Smooth networks
    move about as much as the noise; networks that decide an argmax inside (max-pool switches) can move a whole
    window when a near tie goes the other way."""
    clean = main_logits(model(x))
    moved = 0.0
    for seed in range(1, draws + 1):
        shift = noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        moved = max(moved, (main_logits(model(x + shift)) - clean).abs().max().item())
    return moved / clean.abs().max().item()


def write(out: Path, results: dict[str, Any], size: tuple[int, int]) -> None:
    command = "python " + " ".join(sys.argv)
    # A matrix is built in pieces (--resume, --rounding): every command that wrote into it.
    commands = json.loads(out.read_text()).get("commands", []) if out.exists() else []
    record = {"what": f"export at {size[0]}x{size[1]}, run in each runtime, compared with eager (pass: relative "
                      f"difference <= {RTOL}); random weights with measured BatchNorm statistics, {K} classes",
              "results": results, "machine": machine_info(probe=False),
              "versions": versions("onnxruntime", "openvino", "executorch"), "command": command,
              "commands": commands + [command] * (command not in commands)}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(out)  # atomic: a run killed mid-write leaves the previous file whole


if __name__ == "__main__":
    sys.exit(main())
