"""One contract for every runtime a model file can run in: torch, onnxruntime, OpenVINO, ExecuTorch.

A `Backend` is a model file opened in one runtime. It knows the file's
`ModelMeta` (classes, palette, preprocessing: read from the file itself) and
turns a *preprocessed* ``[N, C, H, W]`` float32 batch into ``[N, K, H, W]``
float32 logits. Everything around that call (normalisation, eval_size,
sliding windows, scales, flips, argmax, colours) stays in imseg's engine, so
every runtime is driven by the same code: `backend_model` wraps a backend as
a module that `imseg.engine.inference.infer_logits` and `predict` take.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from imseg.meta import ModelMeta

BACKENDS = ("torch", "onnxruntime", "openvino", "executorch")
# How "auto" picks: by the file's kind. Anything else (.pt, .safetensors, a model folder) is PyTorch.
SUFFIX_BACKENDS = {".onnx": "onnxruntime", ".xml": "openvino", ".pte": "executorch"}
# Which files each runtime reads (OpenVINO reads ONNX too).
READS = {"onnxruntime": (".onnx",), "openvino": (".xml", ".onnx"), "executorch": (".pte",)}


@runtime_checkable
class Backend(Protocol):
    """A model file opened in one runtime."""

    name: str  # one of BACKENDS
    path: Path
    meta: ModelMeta  # read from the file: class names, palette, preprocessing, inference settings
    input_size: tuple[int, int] | None  # the H x W the file is fixed to; None when it runs any size
    fixed_batch: int | None  # the batch size the file is fixed to; None when it runs any

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """``[N, K, H, W]`` float32 logits of a preprocessed ``[N, C, H, W]`` batch, at the batch's H x W."""
        ...


def open_backend(path: str | Path, backend: str = "auto", device: str | torch.device = "cpu",
                 threads: int | None = None) -> Backend:
    """Open the model file ``path`` in ``backend`` and return a `Backend`.

    Contract (the CLI, `imseg serve` and the benchmarks rely on it):

    * ``backend`` is ``"auto"`` (by file: ``.onnx`` onnxruntime, ``.xml`` OpenVINO IR, ``.pte`` ExecuTorch,
      anything else an imseg checkpoint / ``.safetensors`` / model folder in PyTorch) or one of `BACKENDS`;
      OpenVINO also opens ``.onnx`` files.
    * ``.meta`` is the `ModelMeta` stored in the file itself, so preprocessing and class names cannot drift
      from training; ``.logits(x)`` takes a float32 ``[N, C, H, W]`` batch *already normalised* with
      ``meta.preprocessing`` and returns float32 numpy logits ``[N, K, H, W]`` at the same H x W, for any
      N, H, W: files exported with a fixed shape are run image by image, padded up to their size or
      covered by windows of it.
    * ``device`` is for the torch backend (the others run on the CPU); ``threads`` caps the runtime's
      intra-op threads (default: the runtime's own choice).
    * Errors are one line naming the file: `CheckpointError` for a file that is missing or not imseg's,
      ``ValueError`` for a backend that cannot read this kind of file, `MissingExtraError` (an ImportError)
      naming the pip extra when the runtime is not installed.

    For whole-image prediction with the model's own inference settings, wrap it: ``backend_model(b)`` is a
    module that `imseg.engine.predict.predict` and `infer_logits` accept.
    """
    path = Path(path)
    name = resolve_backend_name(path, backend)
    if name == "torch":
        from imseg.deploy.torch_backend import TorchBackend

        return TorchBackend(path, device, threads)
    if name == "onnxruntime":
        from imseg.deploy.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads)
    if name == "openvino":
        from imseg.deploy.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, threads)
    from imseg.deploy.executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend(path, threads)


def resolve_backend_name(path: Path, backend: str) -> str:
    """The runtime that opens ``path``: ``backend`` checked against the file, or chosen by it for "auto"."""
    from imseg.engine.checkpoint import CheckpointError

    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist")
    suffix = path.suffix.lower() if path.is_file() else ""
    name = SUFFIX_BACKENDS.get(suffix, "torch") if backend == "auto" else backend
    readable = READS.get(name)
    if readable is not None and suffix not in readable:
        raise ValueError(f"backend {name} runs {' or '.join(readable)} files, not {path}; export one first: "
                         f"imseg export CHECKPOINT --format {_format_of(name)} --out FILE")
    if name == "torch" and suffix in SUFFIX_BACKENDS:
        raise ValueError(f"{path} is an exported {SUFFIX_BACKENDS[suffix]} file, not a PyTorch model; "
                         f"run it with --backend {SUFFIX_BACKENDS[suffix]} (or auto)")
    return name


def _format_of(backend: str) -> str:
    return {"onnxruntime": "onnx"}.get(backend, backend)
