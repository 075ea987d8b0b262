"""Model folders in the Hugging Face Hub layout: ``model.safetensors``, ``config.json``, ``README.md``.

The Hub hosts folders and `huggingface_hub` downloads and caches them, so one
layout serves a directory on disk and a hub id alike. The weights are bare
safetensors (no pickle: loading cannot run code). ``config.json`` holds
`ModelMeta.to_dict()` at its top level beside a format marker, so it reads
with `ModelMeta.from_dict` and a config of another library (transformers,
timm) is told apart by the marker. The metadata lives in config.json only,
not also in the safetensors header: one place to read, one place to edit
(renaming a class, say).

Only writing is here: `SegmentationModel.save_pretrained` calls it, and it
imports no engine module, so the models reach it without an import cycle.
The reader is `engine/checkpoint.read_pretrained_folder`; hub ids are
`imseg/hub.py`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from imseg.meta import ModelMeta, meta_of

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "imseg-pretrained"  # config.json's "format": how a reader tells an imseg folder from another library's
FORMAT_VERSION = 1
# Marks a card imseg wrote: saving again refreshes it, while a card the user wrote (no marker) is kept.
CARD_MARKER = "<!-- written by imseg save_pretrained"


def folder_config(meta: ModelMeta) -> dict[str, Any]:
    """The content of ``config.json``: the format marker, the imseg version and `ModelMeta.to_dict()`."""
    from imseg import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "imseg_version": __version__, **meta.to_dict()}


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` (an imseg model, trained or fresh from `create_model`) as a model folder; return it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; save_pretrained writes a folder (config.json, model.safetensors)")
    folder.mkdir(parents=True, exist_ok=True)
    meta = meta_of(model)
    try:
        config = json.dumps(folder_config(meta), indent=2)
    except TypeError as e:
        raise ValueError(f"{folder / CONFIG_NAME}: the metadata of model {meta.name!r} is not JSON ({e})") from None
    # safetensors refuses tensors that share memory, and writes from the CPU; copies are cheap here.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # "format": "pt" is what the Hub's tools (transformers, the file viewer) expect in the header.
    _write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config + "\n"))
    card = folder / CARD_NAME
    if not card.exists() or CARD_MARKER in card.read_text(errors="replace"):
        _write(card, lambda tmp: Path(tmp).write_text(model_card(meta)))
    return folder


def _write(path: Path, write: Callable[[str], Any]) -> None:
    """``write`` to a temporary name, then rename: a killed save never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def model_card(meta: ModelMeta) -> str:
    """A short ``README.md``: Hub metadata, what the model predicts, its preprocessing and how to load it."""
    from imseg import __version__

    p = meta.preprocessing
    kwargs = json.dumps(dict(meta.spec["kwargs"])) if meta.spec["kwargs"] else "its defaults"
    classes = ", ".join(f"{i} {name}" for i, name in enumerate(meta.class_names))
    size = f" Evaluated at {meta.eval_size[0]}x{meta.eval_size[1]} pixels." if meta.eval_size else ""
    scaled = "divided by 255" if abs(p.scale * 255 - 1) < 1e-6 else f"multiplied by {p.scale:g}"
    return f"""---
library_name: imseg
pipeline_tag: image-segmentation
tags:
- semantic-segmentation
---

{CARD_MARKER}, which rewrites this card; delete this line to keep your edits -->

# {meta.name}: semantic segmentation, {meta.num_classes} classes

Saved by imseg {__version__}: architecture `{meta.name}` with arguments {kwargs}.

**Classes** (id name): {classes}. Label {meta.ignore_index} is ignored in training and evaluation.{size}

**Preprocessing**: {p.num_channels}-channel images of 0-255 values, {p.channel_order} channel order, {scaled},
minus mean {list(p.mean)}, divided by std {list(p.std)}. `imseg.predict` applies it.

## Load it

```python
import imseg
model = imseg.from_pretrained("owner/name")  # this folder's hub id, or its path on disk
mask = imseg.predict(model, "image.png")     # the class id of every pixel
```

On the command line: `imseg predict path/to/this/folder image.png --out masks/`. The files:
`config.json` (architecture, classes, palette, preprocessing, evaluation settings) and `model.safetensors`.
"""
