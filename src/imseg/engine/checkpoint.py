"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain dict of tensors and primitive values, so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint from someone
else can never run code. It carries everything needed to rebuild the model
and to predict exactly as training saw the data: the model spec, class
names, palette, ignore index and preprocessing.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imseg.models.registry import create_model
from imseg.preprocessing import Preprocessing

FORMAT = "imseg-checkpoint-v1"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file, fsync, rename.

    A crash or kill during the write leaves the previous file intact and at
    worst a stray ``.tmp`` file, never a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a checkpoint is as readable as any file
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(error):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise CheckpointError(f"no space left on device while writing {path} "
                                  f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free); {kept}") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(error: BaseException) -> bool:
    # torch.save reports a full disk as "RuntimeError: [enforce fail at inline_container.cc] . unexpected pos".
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        isinstance(error, RuntimeError) and "unexpected pos" in str(error))


def remove_partial_checkpoints(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed :func:`save_checkpoint` left in ``folder``; return them.

    Called when a run starts in its folder, where nothing else is writing.
    """
    folder = Path(folder)
    leftovers = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe content
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imseg checkpoint (expected format {FORMAT!r})")
    return state


def model_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model described by a checkpoint and load its weights."""
    spec = state["model"]
    kwargs = dict(spec["kwargs"])
    # The encoder's starting weights are already inside the state dict; the
    # file they came from need not exist where the checkpoint is loaded.
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None
    model = create_model(spec["name"], spec["num_classes"], **kwargs)
    result = model.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit model {spec['name']!r}: missing keys {result.missing_keys[:10]}, "
            f"unexpected keys {result.unexpected_keys[:10]}"
        )
    model.preprocessing = Preprocessing.from_dict(state["preprocessing"])
    model.class_names = list(state["class_names"])
    model.palette = [tuple(c) for c in state["palette"]]
    model.ignore_index = int(state["ignore_index"])
    model.eval_size = state.get("eval_size")
    model.eval_settings = dict(state.get("eval") or {})
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A model ready for inference (eval mode) from an imseg checkpoint or exported ``.safetensors``."""
    if Path(path).suffix == ".safetensors":
        from imseg.engine.export import load_safetensors_model

        return load_safetensors_model(path).to(device)
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, source=f"checkpoint {path}")
    return model.to(device).eval()


def prune_checkpoints(directory: str | Path, keep: int, pattern: str = "step-*.pt") -> None:
    """Delete all but the ``keep`` newest step checkpoints (by step number in the name)."""
    files = sorted(Path(directory).glob(pattern))
    for old in files[: max(0, len(files) - keep)]:
        old.unlink(missing_ok=True)


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of ``run_dir`` with the most training steps that can be read.

    A corrupt or truncated file (a crash mid-write on a filesystem without
    atomic rename, a full disk) is skipped with a warning, and the next
    newest is used. ``best.pt`` is never a resume point: it may be older.
    """
    folder = Path(run_dir) / "checkpoints"
    candidates = [p for p in folder.glob("*.pt") if p.name != "best.pt"] if folder.is_dir() else []
    readable: list[tuple[int, float, Path]] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint {path}: {e}", RuntimeWarning, stacklevel=2)
            continue
        readable.append((int(state.get("global_step", 0)), path.stat().st_mtime, path))
    return max(readable)[2] if readable else None
