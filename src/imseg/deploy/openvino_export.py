"""OpenVINO IR export: fp32, or int8 through NNCF post-training quantisation.

The IR is converted from imseg's own ONNX graph (dynamic H x W carries over),
and saved without OpenVINO's default fp16 weight compression, so an fp32 IR
holds the trained weights bit for bit. int8 uses NNCF's default
post-training quantisation (min-max ranges on the calibration images, fast
bias correction). The `ModelMeta` goes into the model's rt_info (read back by
`read_ir_meta`), and into ``<name>.json`` beside the ``.xml`` for people.
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imseg.deploy.float_layers import openvino_float_nodes
from imseg.deploy.openvino_backend import OpenVinoBackend, write_ir_meta
from imseg.deploy.parity import compare_logits, probe_input
from imseg.engine.export import export_onnx
from imseg.extras import require
from imseg.meta import meta_of
from imseg.outputs import main_logits


def export_openvino(model: nn.Module, path: str | Path, size: tuple[int, int], dynamic: bool = True,
                    int8_batches: list[np.ndarray] | None = None, check: bool = True,
                    keep_float: str = "ends") -> dict[str, Any]:
    """Write ``path`` (``.xml`` + ``.bin``): fp32, or int8 calibrated on ``int8_batches`` when given, with the
    layers ``keep_float`` names left in float (`imseg.deploy.float_layers`)."""
    ov = require("openvino", "deploy", "OpenVINO export")
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"--out {path}: an OpenVINO IR is an .xml file (its weights go into the .bin beside it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imseg-openvino-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_file, size, dynamic=dynamic, check=False)
        ov_model = ov.convert_model(str(onnx_file))
    if int8_batches is not None:
        nncf = require("nncf", "deploy", "int8 OpenVINO export")
        excluded = openvino_float_nodes(ov_model, keep_float)
        scope = nncf.IgnoredScope(names=excluded) if excluded else None
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout carries the JSON report
            ov_model = nncf.quantize(ov_model, nncf.Dataset(int8_batches), subset_size=len(int8_batches),
                                     ignored_scope=scope)
    meta = meta_of(model)
    write_ir_meta(ov_model, meta)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp16 would cost the fp32 IR its parity
    path.with_suffix(".json").write_text(json.dumps(meta.to_dict(), indent=2))
    report: dict[str, Any] = {"openvino": str(path), "weights": str(path.with_suffix(".bin")), "dynamic": dynamic,
                              "precision": "int8 (NNCF)" if int8_batches is not None else "fp32"}
    if int8_batches is not None:
        report.update(calibration_images=len(int8_batches), keep_float=keep_float, float_nodes=len(excluded))
    if check:
        probe = int8_batches[:4] if int8_batches else [_probe(model, size, dynamic)]
        try:
            report.update(_check(model, OpenVinoBackend(path), probe))
        except RuntimeError as e:
            if not dynamic:
                raise
            # Seen with FCN's Caffe crops and DeconvNet's pool5 padding (pads computed from the input size):
            # the CPU plugin bounds a Pad's output size wrongly when the sizes are dynamic.
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            first = next((i for i, line in enumerate(lines) if line.startswith("[")), 0)  # "[CPU] ..."
            cause = " ".join(lines[first:first + 2])
            raise ValueError(f"OpenVINO cannot run {path} at {probe[0].shape[-2]}x{probe[0].shape[-1]}, a size "
                             f"other than the export's: {cause[:300]}. Export this model with --static (a "
                             f"fixed {size[0]}x{size[1]}; docs/deploy.md)") from None
    return report


def _probe(model: nn.Module, size: tuple[int, int], dynamic: bool) -> np.ndarray:
    probe_size = (size[0] + 17, size[1] - 13) if dynamic else size  # another size than the export's
    return probe_input(model.preprocessing.num_channels, probe_size).numpy()


@torch.no_grad()
def _check(model: nn.Module, backend: OpenVinoBackend, batches: list[np.ndarray]) -> dict[str, Any]:
    results = [compare_logits(backend.logits(x), main_logits(model(torch.from_numpy(x)))) for x in batches]
    return {"check_size": list(batches[0].shape[-2:]), "check_images": len(batches),
            "relative_difference": max(r["relative_difference"] for r in results),
            "agreement": float(np.mean([r["agreement"] for r in results]))}
