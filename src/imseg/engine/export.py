"""Export a trained model: ONNX for deployment, safetensors for weights.

Both carry what a consumer needs to use the model correctly: the model
spec, class names, palette and, above all, the preprocessing (safetensors
in its metadata, ONNX in a ``.json`` beside the ``.onnx`` file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imseg.engine.checkpoint import CheckpointError

SAFETENSORS_KEY = "imseg"


def _metadata(model: nn.Module) -> dict[str, Any]:
    return {
        "model": model.imseg_spec,
        "preprocessing": model.preprocessing.to_dict(),
        "class_names": list(getattr(model, "class_names", [])),
        "palette": [list(c) for c in getattr(model, "palette", [])],
        "ignore_index": getattr(model, "ignore_index", 255),
        "eval_size": getattr(model, "eval_size", None),
        "eval": getattr(model, "eval_settings", {}),
    }


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Weights as safetensors (no pickle: loading cannot execute code), metadata included."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory; contiguous copies are cheap here.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={SAFETENSORS_KEY: json.dumps(_metadata(model))})
    return path


def load_safetensors_model(path: str | Path) -> nn.Module:
    """Rebuild a model exported by `export_safetensors` (eval mode)."""
    from safetensors import safe_open

    from imseg.engine.checkpoint import model_from_checkpoint

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(SAFETENSORS_KEY)
        if meta is None:
            raise CheckpointError(f"{path} has no imseg metadata: it was not written by `imseg export`")
        state = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta)
    return model_from_checkpoint({**info, "state_dict": state}, source=f"weights file {path}").eval()


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int] = (360, 480),
                dynamic: bool = True, check: bool = True) -> dict[str, Any]:
    """ONNX graph of the model on normalised input ``[1, C, H, W]`` (H, W dynamic by default).

    With ``check``, onnxruntime runs the file on a random input of another
    size and the largest difference from eager PyTorch is reported.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    channels = model.preprocessing.num_channels
    example = torch.randn(1, channels, *size)
    dims = {2: torch.export.Dim("height", min=64, max=4096), 3: torch.export.Dim("width", min=64, max=4096)}
    program = torch.export.export(model, (example,), dynamic_shapes=({**dims},) if dynamic else None)
    torch.onnx.export(program, (example,), str(path), dynamo=True, input_names=["image"], output_names=["logits"],
                      verbose=False)
    path.with_suffix(".json").write_text(json.dumps(_metadata(model), indent=2))
    report: dict[str, Any] = {"onnx": str(path), "metadata": str(path.with_suffix(".json")), "dynamic": dynamic}
    if check:
        import onnxruntime as ort

        probe_size = (size[0] + 17, size[1] - 13) if dynamic else size
        x = torch.randn(1, channels, *probe_size)
        with torch.no_grad():
            expected = model(x)
        expected = expected.out if hasattr(expected, "out") else expected
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        report["check_size"] = list(probe_size)
        report["max_abs_difference"] = float(abs(got - expected.numpy()).max())
        report["max_abs_logit"] = float(abs(expected).max())
    return report
