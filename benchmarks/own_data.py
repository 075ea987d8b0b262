"""A new user's data, three ways, end to end: check-data, train, eval, predict, through the real commands.

CamVid images are laid out as the data users bring (no data of another
kind exists on this machine, so the pixels are CamVid's; the layouts,
encodings and file types are the real ones):

1. ``photos``: JPEG photos with RGB colour masks named ``<stem>_L.png`` and a
   CSV class table (``name,r,g,b`` with spaces, a Void row marked ignore);
2. ``voc``: ``VOCdevkit/VOC2012`` with JPEGImages, palette-PNG
   SegmentationClass and ImageSets lists (CamVid's ids stored as VOC ids);
3. ``geo``: 4-band uint16 GeoTIFF scenes (CamVid mosaics, RGB scaled to 16
   bits plus a synthetic fourth band) with label rasters, in UTM; prediction
   tiled into a GeoTIFF whose CRS, transform and size are checked.

Each run is a few optimiser steps (the point is that every step works and
what each command says, not accuracy); the commands, exit codes, times and
scores go to benchmarks/results/own-data.json.

    python benchmarks/own_data.py [--steps 30] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMSEG = str(Path(sys.executable).with_name("imseg"))


def camvid_pairs(split: str, n: int) -> list[tuple[Path, Path]]:
    from imseg.data.camvid import find_camvid_root, read_camvid_list

    return read_camvid_list(find_camvid_root(), split)[:n]


def make_photos(root: Path, n_train: int, n_val: int) -> None:
    from imseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        stems = []
        for image, mask in camvid_pairs(split, n):
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
            Image.open(image).convert("RGB").save(root / "images" / f"{image.stem}.jpg", quality=95)
            ids = np.asarray(Image.open(mask))
            rgb = np.zeros((*ids.shape, 3), np.uint8)  # id 11 (void) stays black
            for k, colour in enumerate(CAMVID_PALETTE):
                rgb[ids == k] = colour
            Image.fromarray(rgb).save(root / "masks" / f"{image.stem}_L.png")
            stems.append(image.stem)
        (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    rows = [f"{name}, {r}, {g}, {b}" for name, (r, g, b) in zip(CAMVID_CLASSES, CAMVID_PALETTE)]
    (root / "classes.csv").write_text("name, r, g, b, ignore\n" + "\n".join(rows) + "\nVoid, 0, 0, 0, yes\n")


def make_voc(root: Path, n_train: int, n_val: int) -> None:
    from imseg.data.benchmark_classes import voc_colormap

    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        stems = []
        for image, mask in camvid_pairs(split, n):
            Image.open(image).convert("RGB").save(voc / "JPEGImages" / f"{image.stem}.jpg", quality=95)
            ids = np.asarray(Image.open(mask)).copy()
            ids[ids == 11] = 255  # void -> VOC's border/void value
            palette_png = Image.fromarray(ids.astype(np.uint8), mode="P")
            palette_png.putpalette([v for c in voc_colormap() for v in c])
            palette_png.save(voc / "SegmentationClass" / f"{image.stem}.png")
            stems.append(image.stem)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")


def make_geo(root: Path, scenes: int = 4, grid: int = 3) -> None:
    """Mosaics of grid x grid CamVid frames as 4-band uint16 GeoTIFFs in UTM 33N, with label rasters."""
    import rasterio
    from rasterio.transform import from_origin

    pairs = camvid_pairs("train", scenes * grid * grid)
    for s in range(scenes):
        tiles = pairs[s * grid * grid:(s + 1) * grid * grid]
        rows = [tiles[r * grid:(r + 1) * grid] for r in range(grid)]
        rgb = np.concatenate([np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p, _ in row], 1)
                              for row in rows], 0)
        labels = np.concatenate([np.concatenate([np.asarray(Image.open(m)) for _, m in row], 1)
                                 for row in rows], 0).astype(np.uint8)
        labels[labels == 11] = 255
        bands = np.concatenate([rgb.transpose(2, 0, 1).astype(np.uint16) * 200,
                                (rgb.mean(-1) * 150 + 1000)[None].astype(np.uint16)])
        h, w = labels.shape
        common = {"driver": "GTiff", "height": h, "width": w, "crs": "EPSG:32633", "tiled": True,
                  "blockxsize": 256, "blockysize": 256,
                  "transform": from_origin(500000.0 + 10000 * s, 4600000.0, 0.5, 0.5)}
        for sub, array, dtype in (("images", bands, "uint16"), ("masks", labels[None], "uint8")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            with rasterio.open(root / sub / f"scene{s}.tif", "w", count=array.shape[0], dtype=dtype, **common) as dst:
                dst.write(array)
    (root / "train.txt").write_text("scene0\nscene1\n")
    (root / "val.txt").write_text("scene2\n")
    (root / "test.txt").write_text("scene3\n")


def run(args: list, log: list) -> tuple[int, str]:
    start = time.perf_counter()
    proc = subprocess.run([IMSEG, *map(str, args)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    log.append({"command": shlex.join(["imseg", *map(str, args)]), "exit": proc.returncode,
                "seconds": round(time.perf_counter() - start, 1), "last_lines": out.strip().splitlines()[-6:]})
    print(f"[{proc.returncode}] {log[-1]['command']} ({log[-1]['seconds']} s)\n    " + "\n    ".join(log[-1]["last_lines"]))
    return proc.returncode, out


def trial(name: str, work: Path, data: dict, model: dict, steps: int, predict_input: Path, extra: list) -> dict:
    log: list = []
    cfg = {"model": model, "data": {"batch_size": 4, "num_workers": 0, "scale_range": [1.0, 1.0], **data},
           "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
           "train": {"max_steps": steps, "epochs": 100, "val_every": 100, "out_dir": str(work / f"run-{name}"),
                     "progress": False, "log_every": 10, "time_budget_minutes": None}}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    run(["check-data", work / f"{name}.yaml", "--out", work / f"check-{name}"], log)
    run(["train", work / f"{name}.yaml"], log)
    best = work / f"run-{name}" / "checkpoints" / "best.pt"
    if not best.exists():
        best = work / f"run-{name}" / "checkpoints" / "last.pt"
    _, out = run(["eval", best, "--split", "val", "--no-report", "--out", work / f"eval-{name}.json"], log)
    run(["predict", best, predict_input, "--out", work / f"pred-{name}", *extra], log)
    scores = json.loads((work / f"eval-{name}.json").read_text()) if (work / f"eval-{name}.json").exists() else {}
    return {"steps": steps, "config": cfg, "val_mIoU": scores.get("mIoU"), "commands": log}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workdir")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "own-data.json"))
    args = p.parse_args()
    small = {"name": "unet", "args": {"encoder": "resnet18"}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        make_photos(work / "photos", 24, 8)
        make_voc(work / "voc", 24, 8)
        make_geo(work / "geo")
        results = {
            "photos": trial("photos", work, {"name": "folder", "root": str(work / "photos"), "classes": "classes.csv",
                                             "mask_suffix": "_L", "crop_size": [256, 320]}, small, args.steps,
                            work / "photos" / "images", []),
            # VOC's test labels are not public: score on val, as configs/voc_deeplabv3plus.yaml does
            "voc": trial("voc", work, {"name": "voc", "root": str(work / "voc"), "crop_size": [256, 320],
                                       "test_split": "val"}, small,
                         args.steps, work / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages", []),
            "geo": trial("geo", work, {"name": "raster", "root": str(work / "geo"), "crop_size": [256, 256],
                                       "windows_per_epoch": 40, "hflip": False,
                                       "class_names": ["Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                                       "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]},
                         small, args.steps, work / "geo" / "images" / "scene3.tif", ["--confidence"]),
        }
        results["geo"]["output_on_the_input_grid"] = _same_grid(work / "geo" / "images" / "scene3.tif",
                                                                work / "pred-geo" / "scene3.tif")
    from imseg.machine import machine_info, versions

    record = {"machine": machine_info(), "versions": versions("rasterio", "scipy"),
              "command": "python " + " ".join([Path(sys.argv[0]).resolve().relative_to(REPO).as_posix(), *sys.argv[1:]]),
              **results}
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


def _same_grid(source: Path, output: Path) -> bool | None:
    import rasterio

    if not output.exists():
        return None
    with rasterio.open(source) as a, rasterio.open(output) as b:
        return a.crs == b.crs and a.transform == b.transform and (a.width, a.height) == (b.width, b.height)


if __name__ == "__main__":
    main()
