"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain dict of tensors and primitive values, so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint from someone
else can never run code. It carries everything needed to rebuild the model
and to predict exactly as training saw the data: the model spec, class
names, palette, ignore index and preprocessing.

Exported ``.safetensors`` files and model folders (imseg/pretrained.py) are
read here too, so every command that takes a checkpoint takes them.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imseg.meta import MetadataError, ModelMeta, attach
from imseg.models.registry import create_model
from imseg.pretrained import CONFIG_NAME, FORMAT as FOLDER_FORMAT, FORMAT_VERSION as FOLDER_VERSION, WEIGHTS_NAME

FORMAT = "imseg-checkpoint-v1"
METADATA_KEY = "imseg"  # the safetensors metadata entry and ONNX metadata_props key holding ModelMeta as JSON


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
        with open(path, "rb") as f:  # a file object: torch.load would read a `.safetensors` name as safetensors
            state = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only unpickler met something that is not plain data
        raise CheckpointError(f"checkpoint {path} cannot be read: it holds pickled objects beyond tensors and "
                              f"plain values, and imseg never unpickles those (that could run code)") from None
    except Exception as e:  # truncated file, not a torch file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imseg checkpoint (expected format {FORMAT!r})")
    return state


def model_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model described by a checkpoint (or metadata + ``state_dict``) and load its weights."""
    try:
        meta = ModelMeta.from_dict(state, source)
    except MetadataError as e:
        raise CheckpointError(str(e)) from None
    return build_model(meta, state["state_dict"], source)


def build_model(meta: ModelMeta, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The model ``meta`` describes, holding ``state_dict``; every mismatch is one line naming ``source``."""
    kwargs = dict(meta.spec["kwargs"])
    # The encoder's starting weights are already inside the state dict; the
    # file they came from need not exist where the checkpoint is loaded.
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None
    try:
        model = create_model(meta.name, meta.num_classes, **kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source} describes a model this imseg cannot build: {e}") from None
    load_fitting(model, state_dict, source, f"model {meta.name!r} with num_classes {meta.num_classes}")
    return attach(model, meta)


def load_fitting(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, what: str,
                 keep_mismatched: bool = False) -> list[str]:
    """Load ``state_dict`` into ``model`` when every key and shape fits; else one line naming ``source``.

    ``keep_mismatched``: tensors whose shape differs keep the model's own values instead of failing;
    their names are returned.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {what}: missing keys {missing[:10]}, "
                              f"unexpected keys {unexpected[:10]}")
    wrong = [k for k, v in expected.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
    if wrong and keep_mismatched:
        model.load_state_dict({**state_dict, **{k: expected[k] for k in wrong}})
        return wrong
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source} does not fit {what}: "
            f"{k} is {list(state_dict[k].shape)} in the file but {list(expected[k].shape)} in the model"
            f"{f' (and {len(wrong) - 1} more tensors differ)' if len(wrong) > 1 else ''}; "
            f"the weights were trained for another class count or architecture")
    model.load_state_dict(state_dict)
    return []


def read_safetensors(path: Path) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """The metadata and weights of a ``.safetensors`` file written by `imseg export`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            if raw is None and (path.parent / CONFIG_NAME).is_file():
                raise CheckpointError(f"{path} holds bare tensors, the weights of a model folder: its metadata is "
                                      f"in {path.parent / CONFIG_NAME}; pass the folder {path.parent} instead")
            if raw is None:
                raise CheckpointError(
                    f"{path} holds {len(list(f.keys()))} bare tensors and no imseg metadata (key {METADATA_KEY!r}): "
                    f"it was not written by `imseg export`; to start training from such weights, give it as "
                    f"model.args.encoder_weights")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} cannot be read as safetensors: {e}") from None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the imseg metadata is not valid JSON ({e})") from None
    try:
        return ModelMeta.from_dict(info, str(path)), state
    except MetadataError as e:
        raise CheckpointError(str(e)) from None


def read_pretrained_folder(folder: Path, label: str | None = None) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """The metadata and weights of a model folder (``config.json`` + ``model.safetensors``, imseg/pretrained.py).

    ``label`` names the folder in errors (a hub id instead of its cache path); files are named ``label/file``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    label = label or str(folder)
    if not (folder / CONFIG_NAME).is_file():
        run_folder = (folder / "checkpoints").is_dir()
        run = " (it is a training run folder: pass its checkpoints/best.pt)" if run_folder else ""
        raise CheckpointError(f"{label} is not an imseg model folder: it has no {CONFIG_NAME}{run}; expected "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME} as written by save_pretrained")
    config = _folder_config(folder / CONFIG_NAME, f"{label}/{CONFIG_NAME}")
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{label} has {CONFIG_NAME} but no {WEIGHTS_NAME}: the weights are missing")
    try:
        meta = ModelMeta.from_dict(config, f"{label}/{CONFIG_NAME}")
        weights = load_file(str(folder / WEIGHTS_NAME))
    except MetadataError as e:
        raise CheckpointError(str(e)) from None
    except SafetensorError as e:
        raise CheckpointError(f"{label}/{WEIGHTS_NAME} cannot be read as safetensors: {e}") from None
    return meta, weights


def _folder_config(path: Path, name: str) -> dict[str, Any]:
    """``config.json`` of a model folder, checked to be imseg's (a transformers or timm folder has one too)."""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name} is not valid JSON ({e})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FOLDER_FORMAT:
        keys = sorted(config)[:8] if isinstance(config, dict) else f"a JSON {type(config).__name__}"
        raise CheckpointError(f"{name} is not an imseg model config: 'format' is {found!r}, expected "
                              f"{FOLDER_FORMAT!r} (it holds {keys}); a folder of another library does not load here")
    version = config.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FOLDER_VERSION:
        raise CheckpointError(f"{name}: 'format_version' is {version!r}, this imseg reads 1 to {FOLDER_VERSION}; "
                              f"a newer version needs a newer imseg")
    return config


def read_onnx_meta(path: str | Path) -> ModelMeta:
    """The `ModelMeta` stored in an ONNX file exported by imseg (its ``metadata_props``)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # not a protobuf, truncated
        raise CheckpointError(f"{path} cannot be read as ONNX: {e}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path} has no imseg metadata (metadata_props key {METADATA_KEY!r}): "
                              f"it was not exported by imseg, or by a version before 2026-12")
    try:
        return ModelMeta.from_dict(json.loads(props[METADATA_KEY]), str(path))
    except (json.JSONDecodeError, MetadataError) as e:
        raise CheckpointError(f"{path}: {e}" if isinstance(e, json.JSONDecodeError) else str(e)) from None


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte header length and then the JSON header;
    # a torch checkpoint is a zip (or an old pickle). The name is not trusted: files get renamed.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_weights(path: str | Path) -> tuple[ModelMeta, dict[str, torch.Tensor], str]:
    """The metadata and weights of any model file imseg writes, and how errors should name it.

    A checkpoint gives its ``state_dict``: the EMA weights in best.pt when the run kept an EMA
    (the weights it validated), the raw ones in last.pt and step checkpoints.
    """
    return _read_file(path)[:3]


def read_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Any model file imseg writes (a checkpoint, exported ``.safetensors``, a model folder): the model (eval
    mode) and the file's training record (epoch, config, metrics; empty for an export or a folder)."""
    meta, weights, source, record = _read_file(path)
    return build_model(meta, weights, source).to(device).eval(), record


def _read_file(path: str | Path) -> tuple[ModelMeta, dict[str, torch.Tensor], str, dict[str, Any]]:
    """(metadata, weights, the file as errors name it, training record) of a model file of any kind."""
    path = Path(path)
    if path.is_dir():
        meta, weights = read_pretrained_folder(path)
        return meta, weights, f"{path / WEIGHTS_NAME}", {}
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path} is an ONNX graph, for onnxruntime and other deployment runtimes; this "
                              f"command takes the checkpoint (.pt) or .safetensors file it was exported from")
    if _is_safetensors(path):
        meta, weights = read_safetensors(path)
        return meta, weights, f"weights file {path}", {}
    state = load_checkpoint(path)
    try:
        meta = ModelMeta.from_dict(state, f"checkpoint {path}")
    except MetadataError as e:
        raise CheckpointError(str(e)) from None
    record = {k: v for k, v in state.items() if k not in ("state_dict", "optimizer", "scheduler", "scaler", "ema")}
    return meta, state["state_dict"], f"checkpoint {path}", record


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A model ready for inference (eval mode) from an imseg checkpoint, exported ``.safetensors`` or model folder."""
    return read_model_file(path, device)[0]


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
