"""int8 ONNX: onnxruntime static quantisation in QDQ format, calibrated on the model's own training images.

QDQ (QuantizeLinear / DequantizeLinear pairs around each quantised op) is
the format every ONNX runtime understands (onnxruntime's CPU kernels fuse the
pairs into int8 convolutions; TensorRT and OpenVINO read it too). Weights are
int8 per output channel, activations uint8 per tensor, with ranges from the
calibration images. The fp32 graph comes from `export_onnx` (BatchNorm is
already folded by torch's exporter), so onnxruntime's optional "pre-process"
step is skipped: its symbolic shape inference refuses dynamic H x W.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch import nn

from imseg.deploy.float_layers import check_keep_float, onnx_float_nodes
from imseg.deploy.parity import compare_logits, mean_iou
from imseg.engine.export import export_onnx, write_onnx_metadata
from imseg.extras import require
from imseg.meta import meta_of

# How activation ranges are chosen. "moving-average" is min-max with each image's range folded into a running
# mean (onnxruntime's CalibMovingAverage) instead of the extremes of all images, so one image's outlier does
# not widen the range for every other; measured on CamVid it halves min-max's loss (docs/deploy.md). The
# histogram methods keep every calibration activation in memory: about 0.2 GB per 360x480 image for
# DeepLabV3+ on EfficientNet-Lite0 (100 images ran this 24 GiB machine out of memory), so give them few.
METHODS = ("moving-average", "minmax", "entropy", "percentile")


def export_onnx_int8(model: nn.Module, path: str | Path, batches: list[np.ndarray], size: tuple[int, int],
                     dynamic: bool = True, method: str = "moving-average", check: bool = True,
                     keep_float: str = "ends") -> dict[str, Any]:
    """Write an int8 QDQ ``.onnx`` of ``model`` calibrated on ``batches`` (see `calibration_batches`);
    ``keep_float`` names the layers left in float (`imseg.deploy.float_layers`).

    With ``check``, the report holds the int8 file's pixel agreement and mIoU against the fp32 graph on
    (up to 4 of) the calibration images.
    """
    quantization = require("onnxruntime.quantization", "export", "int8 ONNX export")
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    check_keep_float(keep_float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imseg-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, size, dynamic=dynamic, check=False)
        graph = _graph(fp32)
        name, excluded = graph.input[0].name, onnx_float_nodes(graph, keep_float)
        with _quiet("root"):  # the quantiser logs its "consider pre-processing" advice on every call
            quantization.quantize_static(
                str(fp32), str(path), _Reader(name, batches), quant_format=quantization.QuantFormat.QDQ,
                per_channel=True, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, nodes_to_exclude=excluded,
                calibrate_method=getattr(quantization.CalibrationMethod, _METHOD_NAMES[method]),
                extra_options={"CalibMovingAverage": method == "moving-average"})
        write_onnx_metadata(path, meta_of(model).to_dict())
        report: dict[str, Any] = {"onnx": str(path), "precision": "int8 (QDQ: int8 weights per channel, uint8 "
                                  "activations)", "calibration_images": len(batches), "calibration_method": method,
                                  "keep_float": keep_float, "float_nodes": len(excluded), "dynamic": dynamic}
        if check:
            report.update(_check(fp32, path, batches[:4], meta_of(model).num_classes))
    return report


_METHOD_NAMES = {"moving-average": "MinMax", "minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: ``get_next`` returns one input feed, then None."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._feeds = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check(fp32: Path, int8: Path, batches: list[np.ndarray], num_classes: int) -> dict[str, Any]:
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    name = sessions[0].get_inputs()[0].name
    agreement, ious = [], []
    for x in batches:
        reference, got = (s.run(None, {name: x})[0] for s in sessions)
        agreement.append(compare_logits(got, reference)["agreement"])
        ious.append(mean_iou(got.argmax(1), reference.argmax(1), num_classes))
    return {"check_images": len(batches), "agreement_with_fp32": float(np.mean(agreement)),
            "miou_against_fp32": float(np.mean(ious))}
