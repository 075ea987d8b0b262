"""ExecuTorch export for phones: a ``.pte`` program with its convolutions delegated to XNNPACK.

XNNPACK is ExecuTorch's CPU backend for Arm and x86 (the one Android and iOS
apps ship); operators it does not take run in ExecuTorch's portable kernels,
which are correct but slow, so the report lists what stayed outside XNNPACK. The
program is fixed to ``size`` (ExecuTorch plans memory ahead of time) and
batch 1; the `ModelMeta` JSON is a second method, ``imseg_metadata``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imseg.deploy.executorch_backend import METADATA_METHOD, ExecuTorchBackend
from imseg.deploy.parity import compare_logits
from imseg.extras import require
from imseg.meta import meta_of
from imseg.outputs import main_logits


class _Logits(nn.Module):
    """The model with only its main logits as output (an auxiliary head has no place on a phone)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_logits(self.model(x))


def export_executorch(model: nn.Module, path: str | Path, size: tuple[int, int], check: bool = True) -> dict[str, Any]:
    """Write ``path`` (``.pte``) for ``[1, C, *size]`` input; with ``check``, run it in ExecuTorch's runtime."""
    exir = require("executorch.exir", "mobile", "ExecuTorch export")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "mobile", "ExecuTorch export")
    path = Path(path)
    if path.suffix.lower() != ".pte":
        raise ValueError(f"--out {path}: an ExecuTorch program is a .pte file")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Logits(model.eval())
    example = torch.randn(1, model.preprocessing.num_channels, *size, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(wrapped, (example,))
    meta = meta_of(model)
    lowered = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()],
                                               constant_methods={METADATA_METHOD: json.dumps(meta.to_dict())})
    outside = _ops_outside_delegates(lowered)
    path.write_bytes(lowered.to_executorch().buffer)
    path.with_suffix(".json").write_text(json.dumps(meta.to_dict(), indent=2))
    report: dict[str, Any] = {"executorch": str(path), "size": list(size), "delegate": "XNNPACK",
                              "ops_outside_xnnpack": outside}
    if check:
        with torch.no_grad():
            expected = wrapped(example)
        report.update(check_size=list(size), **compare_logits(ExecuTorchBackend(path).logits(example), expected))
    return report


def _ops_outside_delegates(lowered: Any) -> dict[str, int]:
    """Operator -> count of the compute nodes XNNPACK did not take (empty: the whole graph runs in XNNPACK)."""
    graph = lowered.exported_program().graph
    outside: dict[str, int] = {}
    for node in graph.nodes:
        target = str(node.target)
        # getitem only unpacks a delegate's outputs; it is not compute.
        if node.op == "call_function" and "executorch_call_delegate" not in target and "getitem" not in target:
            name = target.split(">")[0].removeprefix("<EdgeOpOverload:").strip(" <")  # "aten.add.Tensor"
            outside[name] = outside.get(name, 0) + 1
    return outside
