"""The OpenVINO backend: an IR (``.xml`` + ``.bin``) written by imseg, or an imseg ``.onnx`` file, on the CPU.

The metadata of an IR is the same `ModelMeta` JSON, stored in the model's
``rt_info`` under ``imseg`` (so the ``.xml`` is complete on its own, like an
ONNX file's ``metadata_props``); `write_ir_meta` and `read_ir_meta` are its
writer and reader.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imseg.deploy.file_meta import embedded_meta
from imseg.deploy.fit import as_float32, run_fitted
from imseg.extras import require
from imseg.meta import ModelMeta

RT_INFO_KEY = "imseg"


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from imseg.engine.checkpoint import CheckpointError, read_onnx_meta

        ov = require("openvino", "deploy", "running OpenVINO models")
        self.path = Path(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise CheckpointError(f"OpenVINO cannot read {path}: {str(e).strip().splitlines()[0]}") from None
        self.meta = read_onnx_meta(path) if self.path.suffix.lower() == ".onnx" else read_ir_meta(model, self.path)
        # f32: OpenVINO's CPU default on bf16-capable CPUs is bf16, which costs fp32 files their parity
        # (int8 layers stay int8 either way).
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_size, self.fixed_batch = _fixed_shape(model.inputs[0].get_partial_shape())

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        run = lambda x: self.compiled(x)[0]  # noqa: E731 - first output: the logits
        return run_fitted(run, as_float32(batch), self.input_size, self.fixed_batch)


def _fixed_shape(shape: Any) -> tuple[tuple[int, int] | None, int | None]:
    dims = [d.get_length() if d.is_static else None for d in shape]
    n, _, h, w = dims
    return ((h, w) if h is not None and w is not None else None), n


def write_ir_meta(model: Any, meta: ModelMeta) -> None:
    """Put ``meta`` into an ``openvino.Model``'s rt_info (saved into the ``.xml`` by ``openvino.save_model``)."""
    model.set_rt_info(json.dumps(meta.to_dict()), [RT_INFO_KEY])


def read_ir_meta(model: Any, path: Path) -> ModelMeta:
    """The `ModelMeta` in an IR's rt_info; one line naming ``path`` when it is missing or damaged."""
    from imseg.engine.checkpoint import CheckpointError

    if not model.has_rt_info([RT_INFO_KEY]):
        raise CheckpointError(f"{path} has no imseg metadata (rt_info key {RT_INFO_KEY!r}): "
                              f"it was not exported by `imseg export --format openvino`")
    return embedded_meta(model.get_rt_info([RT_INFO_KEY]).astype(str), path, "rt_info")
