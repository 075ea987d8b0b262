"""The onnxruntime backend: an ``.onnx`` file exported by imseg (fp32, or int8 QDQ), on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imseg.deploy.fit import as_float32, run_fitted
from imseg.extras import require


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from imseg.engine.checkpoint import CheckpointError, read_onnx_meta

        ort = require("onnxruntime", "export", "running ONNX files")
        self.path = Path(path)
        self.meta = read_onnx_meta(path)  # before the session: a foreign file fails on its metadata first
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad graph
            raise CheckpointError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_size, self.fixed_batch = fixed_shape(graph_input.shape)

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        run = lambda x: self.session.run(None, {self.input_name: x})[0]  # noqa: E731 - first output: the logits
        return run_fitted(run, as_float32(batch), self.input_size, self.fixed_batch)


def fixed_shape(shape: list) -> tuple[tuple[int, int] | None, int | None]:
    """(H x W, batch) of a graph input ``[N, C, H, W]`` where they are numbers; None where they are symbolic."""
    n, _, h, w = (v if isinstance(v, int) and v > 0 else None for v in shape)
    return ((h, w) if h is not None and w is not None else None), n
