"""The PyTorch backend: an imseg checkpoint, ``.safetensors`` or model folder in eager mode (the reference)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imseg.deploy.fit import as_float32
from imseg.outputs import main_logits


class TorchBackend:
    name = "torch"
    input_size = None
    fixed_batch = None

    def __init__(self, path: Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        from imseg.engine.checkpoint import load_model

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.device = torch.device(device)
        self.model = load_model(path, self.device)  # weights-only: nothing in the file runs
        self.meta = self.model.meta

    @torch.no_grad()
    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.from_numpy(as_float32(batch)).to(self.device)
        return main_logits(self.model(x)).float().cpu().numpy()
