"""ExecuTorch export for phones: a ``.pte`` program with its convolutions delegated to XNNPACK.

XNNPACK is ExecuTorch's CPU backend for Arm and x86 (the one Android and iOS
apps ship); operators it does not take run in ExecuTorch's portable kernels,
which are correct but slow, so the report lists what stayed outside XNNPACK. The
program is fixed to ``size`` (ExecuTorch plans memory ahead of time) and
batch 1; the `ModelMeta` JSON is a second method, ``imseg_metadata``.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from imseg.deploy.executorch_backend import METADATA_METHOD, ExecuTorchBackend
from imseg.deploy.parity import compare_logits, probe_input
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
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass
    path = Path(path)
    if path.suffix.lower() != ".pte":
        raise ValueError(f"--out {path}: an ExecuTorch program is a .pte file")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Logits(model.eval())
    example = probe_input(model.preprocessing.num_channels, size)
    meta = meta_of(model)
    with _frozen(wrapped):
        # Fold what depends only on the weights (the kernel slices of imseg.models.layers.AtrousConv2d):
        # XNNPACK takes a convolution only when its weight is a constant, not computed in the graph.
        program = constant_prop_pass(torch.export.export(wrapped, (example,)))
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


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients while exporting: folded constants must be plain tensors (ExecuTorch copies
    the program, and a tensor computed from a parameter that requires grad cannot be deep-copied)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


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
