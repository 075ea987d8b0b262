"""Small builders shared by the engine and CLI tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from imseg.data.camvid import CAMVID_CLASSES


def load_benchmark(name: str) -> ModuleType:
    """A fresh import of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_camvid_folder(camvid_root: Path, dest: Path, n: int = 2, size: tuple[int, int] = (96, 128)) -> Path:
    """A folder dataset made of ``n`` CamVid training images, downscaled to ``size`` (H, W).

    Void (11) becomes 255 so the generic folder dataset treats it as ignore.
    """
    h, w = size
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for path in sorted((camvid_root / "train").glob("*.png"))[:n]:
        Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR).save(dest / "images" / path.name)
        mask = np.asarray(Image.open(camvid_root / "trainannot" / path.name).resize((w, h), Image.NEAREST)).copy()
        mask[mask == 11] = 255
        Image.fromarray(mask).save(dest / "masks" / path.name)
    return dest


def tiny_config(root: Path, out_dir: Path, **overrides) -> dict:
    """A raw config dict for a small, fast run on a tiny folder dataset."""
    cfg = {
        "model": {"name": "unet", "args": {"encoder": "resnet18"}},
        "data": {
            "name": "folder",
            "root": str(root),
            "class_names": list(CAMVID_CLASSES),
            "crop_size": [96, 128],
            "scale_range": [1.0, 1.0],
            "hflip": False,
            "batch_size": 2,
            "num_workers": 0,
        },
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "train": {"epochs": 2, "out_dir": str(out_dir), "progress": False, "log_every": 1},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def tiny_camvid_copy(camvid_root: Path, dest: Path, n: int = 2, size: tuple[int, int] = (96, 128)) -> Path:
    """A CamVid folder (same layout and list files) with ``n`` downscaled images per split."""
    h, w = size
    for split in ("train", "val", "test"):
        (dest / split).mkdir(parents=True, exist_ok=True)
        (dest / f"{split}annot").mkdir(parents=True, exist_ok=True)
        lines = []
        for path in sorted((camvid_root / split).glob("*.png"))[:n]:
            Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR).save(dest / split / path.name)
            Image.open(camvid_root / f"{split}annot" / path.name).resize((w, h), Image.NEAREST).save(
                dest / f"{split}annot" / path.name)
            lines.append(f"/SegNet/CamVid/{split}/{path.name} /SegNet/CamVid/{split}annot/{path.name}")
        (dest / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return dest


def run_cli(*args) -> tuple[int, str, str]:
    """``imseg <args>`` in this process: (exit code, stdout, stderr).

    A subprocess costs 5-8 s of start-up (torch, torchvision, kernel
    warm-up) on a 2-core CPU; tests/test_cli.py runs the real console
    command, the other tests drive the same ``main`` in-process.
    """
    import contextlib
    import io

    from imseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def small_model_with_meta():
    """A tiny U-Net (eval mode) carrying metadata unlike any default: caffe preprocessing, named classes, an
    odd ignore index, sliding-window evaluation, a data section. Round trips must keep every field."""
    import torch

    from imseg.meta import ModelMeta, attach
    from imseg.models import create_model
    from imseg.preprocessing import CAFFE

    torch.manual_seed(0)
    net = create_model("unet_original", 3, base_channels=4, batch_norm=True)
    meta = ModelMeta(spec=net.imseg_spec, preprocessing=CAFFE, class_names=("sky", "road", "car"),
                     palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)), ignore_index=11, eval_size=(64, 96),
                     eval_settings={"mode": "slide", "crop_size": [32, 32]},
                     data={"name": "folder", "root": "/data/x"})
    return attach(net, meta).eval()
