"""Export a trained model: ONNX for deployment, safetensors for weights.

Both carry what a consumer needs to use the model correctly: the model
spec, class names, palette and, above all, the preprocessing: `ModelMeta`,
in the safetensors metadata, in the ONNX graph's ``metadata_props`` and in a
``.json`` beside the ``.onnx`` file. The readers are in checkpoint.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imseg.deploy.parity import probe_input
from imseg.engine.checkpoint import METADATA_KEY
from imseg.extras import require
from imseg.meta import meta_of


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Weights as safetensors (no pickle: loading cannot execute code), `ModelMeta` in its metadata.

    Read it back with `imseg.load_model` (engine/checkpoint.py); every command that takes a checkpoint
    takes this file too.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory; contiguous copies are cheap here.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(meta_of(model).to_dict())})
    return path


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int] = (360, 480),
                dynamic: bool = True, check: bool = True) -> dict[str, Any]:
    """ONNX graph of the model on normalised input ``[1, C, H, W]`` (H, W dynamic by default).

    With ``check``, onnxruntime runs the file on a random input of another
    size and the largest difference from eager PyTorch is reported.
    """
    require("onnxscript", "export", "ONNX export")  # torch.onnx's exporter; onnx and onnxruntime come with it
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    channels = model.preprocessing.num_channels
    example = probe_input(channels, size)  # traced only: its values shape nothing
    dims = {2: torch.export.Dim("height", min=64, max=4096), 3: torch.export.Dim("width", min=64, max=4096)}
    program = torch.export.export(model, (example,), dynamic_shapes=({**dims},) if dynamic else None)
    torch.onnx.export(program, (example,), str(path), dynamo=True, input_names=["image"], output_names=["logits"],
                      verbose=False)
    write_onnx_metadata(path, meta_of(model).to_dict())
    report: dict[str, Any] = {"onnx": str(path), "metadata": str(path.with_suffix(".json")), "dynamic": dynamic}
    if check:
        import onnxruntime as ort

        probe_size = (size[0] + 17, size[1] - 13) if dynamic else size
        x = probe_input(channels, probe_size)  # seeded: the reported difference repeats
        with torch.no_grad():
            expected = model(x)
        expected = expected.out if hasattr(expected, "out") else expected
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        report["check_size"] = list(probe_size)
        report["max_abs_difference"] = float(abs(got - expected.numpy()).max())
        report["max_abs_logit"] = float(abs(expected).max())
        report["relative_difference"] = report["max_abs_difference"] / max(report["max_abs_logit"], 1e-12)
    return report


def write_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Store the metadata inside the graph (``metadata_props``, replacing any there), so the .onnx file is
    complete on its own, and the same as ``<name>.json`` beside it for people and tools (nothing reads that)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)  # large models keep their external weights file
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]  # a quantiser may have copied it over
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(proto, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
