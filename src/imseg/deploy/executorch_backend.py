"""The ExecuTorch backend: a ``.pte`` program written by `imseg export --format executorch`.

The program's metadata is the `ModelMeta` JSON returned by a second method,
``imseg_metadata`` (an ExecuTorch "constant method"), so the ``.pte`` is
complete on its own and a phone app reads it with the same runtime call it
uses for ``forward``. A ``.pte`` is fixed to the size it was exported at
(memory is planned ahead of time); other sizes run through `fit`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imseg.deploy.file_meta import embedded_meta
from imseg.deploy.fit import as_float32, run_fitted
from imseg.extras import require
from imseg.meta import ModelMeta

METADATA_METHOD = "imseg_metadata"


class ExecuTorchBackend:
    name = "executorch"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from imseg.engine.checkpoint import CheckpointError

        runtime = require("executorch.runtime", "mobile", "running ExecuTorch programs")
        self.path = Path(path)
        try:
            program = runtime.Runtime.get().load_program(str(path))
        except Exception as e:  # the runtime raises RuntimeError with its own wording
            raise CheckpointError(f"ExecuTorch cannot load {path}: {str(e).strip().splitlines()[0]}") from None
        self.meta = _read_meta(program, self.path)
        self.method = program.load_method("forward")
        n, _, h, w = self.method.metadata.input_tensor_meta(0).sizes()
        self.input_size, self.fixed_batch = (int(h), int(w)), int(n)
        del threads  # XNNPACK's thread pool is sized by the runtime build, not per program

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        run = lambda x: self.method.execute([torch.from_numpy(x)])[0].numpy()  # noqa: E731
        return run_fitted(run, as_float32(batch), self.input_size, self.fixed_batch)


def _read_meta(program, path: Path) -> ModelMeta:
    from imseg.engine.checkpoint import CheckpointError

    if METADATA_METHOD not in program.method_names:
        raise CheckpointError(f"{path} has no imseg metadata (method {METADATA_METHOD!r}): it was not exported "
                              f"by `imseg export --format executorch`")
    return embedded_meta(program.load_method(METADATA_METHOD).execute([])[0], path, "metadata")
