"""A `Backend` as a module the engine takes: predict, evaluate and the eval report run it unchanged.

`imseg.engine.inference.infer_logits` normalises, resizes, slides windows,
scales and flips around ``model(x)``; wrapping a runtime as ``model`` keeps
that loop the one loop for every runtime. The wrapper carries the file's
metadata the way a loaded checkpoint does (`imseg.meta.attach`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imseg.deploy.backends import Backend, open_backend, resolve_backend_name
from imseg.meta import attach


class BackendModel(nn.Module):
    """``forward(x)``: the backend's logits of a normalised batch, as a float tensor on ``x``'s device."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        attach(self, backend.meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.backend.logits(x)).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.backend.name}: {self.backend.path}"


def backend_model(backend: Backend) -> nn.Module:
    """The module form of ``backend`` (the torch backend's own model, any other runtime wrapped)."""
    model = getattr(backend, "model", None)
    return model if isinstance(model, nn.Module) else BackendModel(backend)


def load_runtime_model(path: str | Path, backend: str = "auto", device: str | torch.device = "cpu",
                       threads: int | None = None) -> nn.Module:
    """The model in ``path`` ready for `predict` / `evaluate`, run by ``backend`` (see `open_backend`)."""
    if resolve_backend_name(Path(path), backend) == "torch":
        from imseg.engine.checkpoint import load_model

        return load_model(path, device)  # the eager model itself: MC dropout, rasters and hooks keep working
    return backend_model(open_backend(path, backend, device, threads))
