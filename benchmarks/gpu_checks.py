"""What only a CUDA GPU shows: imseg's train / resume / eval / predict paths on a GPU, against the CPU.

Each check runs the real CLI (``python -m imseg.cli``) on CamVid and records figures, not just a pass:

- ``bf16``: a short run with ``train.amp=auto`` (bf16 on a GPU that has it) trains: the loss falls.
- ``fp16``: the same with ``train.amp=fp16``: the GradScaler path; every logged loss is finite.
- ``kill_resume``: SIGKILL part-way, ``--resume auto``, and the final weights against an uninterrupted run
  (``train.deterministic``: with cuDNN's deterministic kernels the two can be identical bit for bit).
- ``eval``: one checkpoint scored on the GPU (its eval autocast) and on the CPU (float32): the confusion
  matrices and mIoU side by side.
- ``predict``: masks written on the GPU and on the CPU, and the share of pixels where they agree.

    python benchmarks/gpu_checks.py --data-root /path/to/camvid --out gpu-checks.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from imseg.engine.checkpoint import load_checkpoint
from imseg.machine import machine_info, versions

STEPS = 60  # a short run: enough for the loss to fall, checkpoints every 20 steps
DEVICE = "cuda"  # --device cpu --steps 6: a dry run of the script itself on a machine without a GPU


def _config(data_root: str, out_dir: Path, **train) -> dict:
    return {
        "model": {"name": "lraspp", "args": {"encoder": "mobilenet_v3_large"}},
        "data": {"name": "camvid", "root": data_root, "crop_size": [240, 320], "batch_size": 8, "num_workers": 4},
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01, "warmup_iters": 10},
        "train": {"max_steps": STEPS, "val_every": 100, "device": DEVICE, "amp": "auto", "progress": False,
                  "log_every": 1, "bn_momentum": 0.1, "checkpoint_every_steps": max(1, STEPS // 3), "deterministic": True,
                  "out_dir": str(out_dir), **train},
    }


def _cli(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS's deterministic mode needs it
    proc = subprocess.run([sys.executable, "-m", "imseg.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"imseg {args[0]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


def _train(work: Path, name: str, data_root: str, **train) -> Path:
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(_config(data_root, work / name, **train)))
    start = time.perf_counter()
    _cli("train", cfg)
    (work / name / "wall_seconds").write_text(str(time.perf_counter() - start))
    return work / name


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if e.get("type") == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


def check_training(work: Path, data_root: str, amp: str) -> dict:
    run = _train(work, f"train-{amp}", data_root, amp=amp)
    losses = _losses(run)
    head, tail = np.mean(losses[:10]), np.mean(losses[-10:])
    return {"amp": amp, "steps": len(losses), "mean_loss_first_10": head, "mean_loss_last_10": tail,
            "all_finite": all(math.isfinite(x) for x in losses), "loss_fell": bool(tail < head),
            "wall_seconds": float((run / "wall_seconds").read_text()), "ok": bool(tail < head)}


def check_kill_resume(work: Path, data_root: str, reference: Path) -> dict:
    """SIGKILL after ~60% of the steps, resume auto; compare with the uninterrupted bf16 run."""
    run = work / "killed"
    cfg = work / "killed.yaml"
    cfg.write_text(yaml.safe_dump(_config(data_root, run)))
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    proc = subprocess.Popen([sys.executable, "-m", "imseg.cli", "train", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(_losses(run)) >= STEPS * 0.6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_losses(run))
    _cli("train", cfg, "--resume", "auto")
    expected, got = _weights(reference), _weights(run)
    diffs = {k: (got[k].double() - expected[k].double()).abs().max().item() for k in expected
             if expected[k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    return {"killed_after_logged_steps": killed_at, "tensors": len(diffs),
            "identical_tensors": sum(d == 0 for d in diffs.values()), "max_abs_difference": diffs[worst],
            "worst_tensor": worst, "ok": diffs[worst] == 0}


def check_eval(work: Path, data_root: str, run: Path) -> dict:
    ckpt = run / "checkpoints" / "last.pt"
    scores = {}
    for device in (DEVICE, "cpu"):
        out = work / f"eval-{device}.json"
        _cli("eval", ckpt, "--split", "val", "--data-root", data_root, "--device", device, "--out", out,
             "--no-report", "--no-boundary")
        scores[device] = json.loads(out.read_text())
    a, b = (np.array(scores[d]["confusion_matrix"]) for d in (DEVICE, "cpu"))
    changed = int(np.abs(a - b).sum() // 2)  # a pixel that moves cell leaves one and enters another
    return {"split": "val", "mIoU_gpu": scores[DEVICE]["mIoU"], "mIoU_cpu": scores["cpu"]["mIoU"],
            "pixels": int(a.sum()), "pixels_classified_differently_at_most": changed,
            "ok": abs(scores[DEVICE]["mIoU"] - scores["cpu"]["mIoU"]) < 0.005}


def check_predict(work: Path, data_root: str, run: Path) -> dict:
    ckpt = run / "checkpoints" / "last.pt"
    images = sorted((Path(data_root) / "test").iterdir())[:8]
    masks = {}
    for device in (DEVICE, "cpu"):
        out = work / f"predict-{device}"
        _cli("predict", ckpt, *images, "--out", out, "--device", device)
        masks[device] = {p.name: np.array(Image.open(p)) for p in sorted(out.glob("*.png"))
                         if "overlay" not in p.name and "legend" not in p.name}
    agree = [float((masks[DEVICE][k] == masks["cpu"][k]).mean()) for k in masks["cpu"]]
    return {"images": len(agree), "files": sorted(masks["cpu"])[:3], "pixel_agreement_min": min(agree),
            "pixel_agreement_mean": float(np.mean(agree)), "ok": min(agree) > 0.99}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--work", default="/tmp/gpu-checks")
    p.add_argument("--out", default="gpu-checks.json")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script")
    p.add_argument("--steps", type=int, default=60)
    global DEVICE, STEPS  # one setting for every check below
    args = p.parse_args()
    DEVICE, STEPS = args.device, args.steps
    if DEVICE == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU here: these checks are for a GPU machine (--device cpu to dry-run)")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    record = {"command": "python " + " ".join(sys.argv), "machine": machine_info(), "versions": versions(),
              "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None, "checks": {}}
    steps = [("bf16", lambda: check_training(work, args.data_root, "auto")),
             ("fp16", lambda: check_training(work, args.data_root, "fp16" if DEVICE == "cuda" else "none")),
             ("kill_resume", lambda: check_kill_resume(work, args.data_root, work / "train-auto")),
             ("eval", lambda: check_eval(work, args.data_root, work / "train-auto")),
             ("predict", lambda: check_predict(work, args.data_root, work / "train-auto"))]
    for name, check in steps:
        start = time.perf_counter()
        try:
            record["checks"][name] = check()
        except Exception as error:  # recorded: the next check may still run
            record["checks"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[-2000:]}
        record["checks"][name]["seconds"] = time.perf_counter() - start
        print(name, json.dumps(record["checks"][name])[:400], flush=True)
        Path(args.out).write_text(json.dumps(record, indent=2, default=float))
    return 0 if all(c.get("ok") for c in record["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
