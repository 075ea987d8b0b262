"""`imseg export --format onnx|openvino|executorch [--int8]`: one entry point over the exporters."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

DEPLOY_FORMATS = ("onnx", "openvino", "executorch")
INT8_FORMATS = ("onnx", "openvino")


@dataclass(frozen=True)
class ExportOptions:
    size: tuple[int, int] = (360, 480)  # example input (the fixed size where the file is static)
    dynamic: bool = True  # ONNX and OpenVINO: any H x W (ExecuTorch is always fixed to ``size``)
    check: bool = True  # run the written file and compare it with eager PyTorch
    int8: bool = False
    calibrate: int = 32  # int8: training images to calibrate activation ranges on
    calibration_method: str = "moving-average"  # int8 ONNX: imseg.deploy.onnx_int8.METHODS
    keep_float: str = "ends"  # int8: layers left in float, none|head|ends (imseg.deploy.float_layers)
    data_root: str | None = None  # int8: where the model's data set is, if not where its config says
    config: str | None = None  # int8: take the data section from this YAML instead of the model file's


def export_deployable(model: nn.Module, fmt: str, out: str | Path, source: str | Path,
                      options: ExportOptions = ExportOptions()) -> dict[str, Any]:
    """Export ``model`` (read from ``source``, named in errors) as ``fmt`` to ``out``; the check report."""
    if fmt not in DEPLOY_FORMATS:
        raise ValueError(f"--format {fmt!r} is not a deployment format; choose {', '.join(DEPLOY_FORMATS)}")
    if options.int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"--int8 is for --format {' or '.join(INT8_FORMATS)}; an ExecuTorch program is fp32 "
                         f"(XNNPACK runs it in fp32)")
    size = (int(options.size[0]), int(options.size[1]))
    batches = None
    if options.int8:
        from imseg.deploy.calibration import calibration_batches

        fixed = None if options.dynamic else size
        batches = calibration_batches(model, options.calibrate, source, options.data_root, options.config, fixed)
    if fmt == "onnx" and batches is not None:
        from imseg.deploy.onnx_int8 import export_onnx_int8

        return export_onnx_int8(model, out, batches, size, options.dynamic, options.calibration_method,
                                options.check, options.keep_float)
    if fmt == "onnx":
        from imseg.engine.export import export_onnx

        return export_onnx(model, out, size, dynamic=options.dynamic, check=options.check)
    if fmt == "openvino":
        from imseg.deploy.openvino_export import export_openvino

        return export_openvino(model, out, size, options.dynamic, batches, options.check, options.keep_float)
    from imseg.deploy.executorch_export import export_executorch

    return export_executorch(model, out, size, options.check)
