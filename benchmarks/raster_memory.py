"""Peak memory of `imseg predict` on a 10000x10000 4-band uint16 GeoTIFF, tiled and streamed.

Writes the scene (tiled, deflate; smooth synthetic bands, written in strips
so this script stays small too) and a checkpoint of an untrained 4-band
U-Net (11 classes: the accuracy is not the point, the memory is), then runs
``imseg predict CKPT SCENE --raster`` as a fresh process and records its peak
resident memory (``ru_maxrss``), wall time and the output's georeference
against the input's.

    python benchmarks/raster_memory.py                     # 10000 x 10000
    python benchmarks/raster_memory.py --size 2000 --out /tmp/r.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_scene(path: Path, size: int, bands: int = 4) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "height": size, "width": size, "count": bands, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(500000.0, 4600000.0, 0.3, 0.3), "nodata": 0,
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, 512):
            rows = np.arange(top, min(size, top + 512), dtype=np.float32)[:, None]
            strip = np.stack([1000 + 900 * (b + 1) * (1 + np.sin(rows / 97 + cols / (53 + 10 * b)))
                              for b in range(bands)]).astype(np.uint16)
            dst.write(strip, window=Window(0, top, size, strip.shape[1]))


def write_checkpoint(path: Path) -> None:
    import torch

    from imseg.engine.checkpoint import save_checkpoint
    from imseg.meta import ModelMeta
    from imseg.models import create_model
    from imseg.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = create_model("unet_original", 11, base_channels=4, batch_norm=True, in_channels=4)
    meta = ModelMeta(spec=model.imseg_spec, preprocessing=Preprocessing((2000.0,) * 4, (900.0,) * 4, "RGB", 1.0),
                     class_names=tuple(f"c{i}" for i in range(11)),
                     palette=tuple((20 * i, 10 * i, 255 - 20 * i) for i in range(11)),
                     data={"name": "raster", "crop_size": [512, 512]})
    save_checkpoint({**meta.to_dict(), "state_dict": model.state_dict()}, path)


def run_predict(ckpt: Path, scene: Path, out: Path) -> dict:
    imseg_bin = str(Path(sys.executable).with_name("imseg"))
    argv = [imseg_bin, "predict", str(ckpt), str(scene), "--raster", "--out", str(out), "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"imseg predict failed: {proc.stderr.read().decode()[-2000:]}")
    return {"command": " ".join(["imseg", *argv[1:]]), "wall_seconds": round(wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--workdir", help="where the scene and outputs go (default: a temporary folder, removed)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "raster-predict-memory.json"))
    p.add_argument("--write-checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_checkpoint:
        write_checkpoint(Path(args.write_checkpoint))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_scene(tmp / "scene.tif", args.size)
        # In a child process: this one must not import torch before the measured run, whose peak
        # memory would otherwise count the pages it was forked from.
        subprocess.run([sys.executable, __file__, "--write-checkpoint", str(tmp / "model.pt")], check=True)
        setup = time.perf_counter() - t0
        run = run_predict(tmp / "model.pt", tmp / "scene.tif", tmp / "pred")
        import rasterio

        from imseg.machine import describe, machine_info, versions

        with rasterio.open(tmp / "scene.tif") as src, rasterio.open(tmp / "pred" / "scene.tif") as out:
            same_grid = (src.crs == out.crs and src.transform == out.transform
                         and (src.width, src.height) == (out.width, out.height))
            scene_mb = src.width * src.height * src.count * 2 / 2**20
    result = {"machine": machine_info(), "versions": versions("rasterio"),
              "command": "python " + " ".join([Path(sys.argv[0]).resolve().relative_to(REPO).as_posix(), *sys.argv[1:]]),
              "scene": {"width": args.size, "height": args.size, "bands": 4, "dtype": "uint16",
                        "uncompressed_mib": round(scene_mb, 1)},
              "model": "unet_original base_channels 4, batch_norm, 4 bands in, 11 classes (untrained)",
              "tile": [512, 512], "setup_seconds": round(setup, 1), **run, "output_on_the_input_grid": same_grid}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(describe(result["machine"]))
    print(f"{args.size}x{args.size}x4 uint16 ({scene_mb:.0f} MiB raw): peak {run['peak_rss_mib']:.0f} MiB, "
          f"{run['wall_seconds']:.0f} s; same CRS/transform/size: {same_grid}; wrote {args.out}")


if __name__ == "__main__":
    main()
