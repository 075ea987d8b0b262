"""One lease of a GPU machine, planned ahead: the jobs below share one GPU and its CPU cores until a deadline.

A lent GPU comes for minutes, so everything it should show runs from one command. The jobs, in order:

1. ``speed``: benchmarks/speed.py on the GPU, alone (timings want a quiet device), bf16 autocast.
2. ``random-init``: the 2-hour pretrained recipe (benchmarks/recipes/camvid-pretrained.yaml) from random
   weights for the step count the 2-hour CPU run took (``train.max_steps``): the same computation as the
   CPU run's budget, so "the same architecture from random weights at the same budget" without two CPU
   hours. Its model folder comes back for scoring the test split on the original PNGs elsewhere.
3. ``checks``: benchmarks/gpu_checks.py.
4. ``variants``: short recipes at the step count a CPU budget gives them (``--set train.max_steps=N``),
   two at a time; what finishes before the deadline is reported.

Data: a CamVid copy with JPEG (quality 90) images, as the machine takes at most 64 MiB of files; the
labels are the original PNGs. Every result names it.

    python benchmarks/gpu_session.py --data-root .gpu/camvid --lite0 .gpu/efficientnet-lite0-57934424.pth \
        --out $OUT --deadline 500
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

PRETRAINED_STEPS = 3909  # camvid-pretrained.json: the 2-hour CPU run's resolved train.max_steps
FAST_PRETRAINED_STEPS = 1545  # camvid-pretrained-fast-bs4-enc1.json (batch 4)
FAST_SCRATCH_STEPS = 1890  # camvid-fast-bf16.json


def variants(lite0: str) -> list[tuple[str, str, list[str]]]:
    """(name, recipe, overrides): ideas for the 20-minute recipes, each at its CPU step count."""
    p = [f"model.args.encoder_weights={lite0}", f"train.max_steps={FAST_PRETRAINED_STEPS}"]
    s = [f"train.max_steps={FAST_SCRATCH_STEPS}"]
    return [
        ("p-base", "pretrained-fast", p),
        ("p-enc-lr-0.5", "pretrained-fast", p + ["optim.encoder_lr_mult=0.5"]),
        ("p-no-class-weights", "pretrained-fast", p + ["loss.class_weights=none"]),
        ("p-lr-4e-3", "pretrained-fast", p + ["optim.lr=0.004"]),
        ("p-ce", "pretrained-fast", p + ["loss.terms=[{name: ce}]"]),
        ("p-scale-0.5-1.5", "pretrained-fast", p + ["data.scale_range=[0.5,1.5]"]),
        ("p-ema", "pretrained-fast", p + ["train.ema_decay=0.995"]),
        ("p-freeze-bn", "pretrained-fast", p + ["train.freeze_bn_stats=true"]),
        # 288x384 crops cost 1.44x the pixels of 240x320: 1545 / 1.44 steps
        ("p-crop-288x384", "pretrained-fast", [p[0], "train.max_steps=1073", "data.crop_size=[288,384]"]),
        ("s-base", "fast", s),
        ("s-strong-aug", "fast", s + ["data.scale_range=[0.5,2.0]", "data.color_jitter=0.4"]),
        ("s-wd-0.05", "fast", s + ["optim.weight_decay=0.05"]),
    ]


def camvid_job(name: str, recipe: str, overrides: list[str], args, workers: int) -> list[str]:
    cmd = [sys.executable, "benchmarks/camvid.py", recipe, "--name", name, "--data-root", args.data_root,
           "--no-boundary", "--results", str(args.work / "results"), "--out-dir", str(args.work / "runs"),
           "--fresh", "--note", "GPU session: JPEG q90 CamVid images, original labels"]
    for item in overrides + ["train.device=cuda", f"data.num_workers={workers}", "train.time_budget_minutes=null"]:
        cmd += ["--set", item]
    return cmd


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # many processes share 16 cores
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def run_until(jobs: list[tuple[str, list[str]]], parallel: int, deadline: float, work: Path) -> dict[str, int | None]:
    """Run ``jobs`` ``parallel`` at a time; kill what outlives the deadline."""
    codes: dict[str, int | None] = {}
    queue = list(jobs)
    mine: dict[str, subprocess.Popen] = {}
    while (queue or mine) and time.time() < deadline:
        for name, proc in list(mine.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                del mine[name]
        while queue and len(mine) < parallel:
            name, cmd = queue.pop(0)
            mine[name] = start(cmd, work / f"{name}.log")
            print(f"{time.strftime('%X')} started {name}", flush=True)
        time.sleep(1)
    for name, proc in mine.items():
        proc.kill()
        codes[name] = None  # killed at the deadline
    return codes


def split_folder(folder: Path, out: Path) -> list[str]:
    """model.safetensors in two halves: a returned file may hold at most 16 MiB."""
    tensors = load_file(folder / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    names = []
    for i, part in enumerate((keys[:half], keys[half:])):
        save_file({k: tensors[k].contiguous() for k in part}, out / f"random-init-part{i}.safetensors")
        names.append(f"random-init-part{i}.safetensors")
    (out / "random-init-config.json").write_text((folder / "config.json").read_text())
    return names


def collect(work: Path, out: Path, codes: dict) -> None:
    """Everything measured so far into one JSON under ``out`` (written after every phase)."""
    record: dict = {"command": "python " + " ".join(sys.argv), "exit_codes": codes, "runs": {}}
    for name in ("speed", "checks"):
        path = work / f"{name}.json"
        record[name] = json.loads(path.read_text()) if path.exists() else None
    for path in sorted((work / "results").glob("*.json")):
        record["runs"][path.stem] = json.loads(path.read_text())
    for name, code in codes.items():  # why a job failed, in its own words
        if code != 0 and (work / f"{name}.log").exists():
            record.setdefault("log_tails", {})[name] = (work / f"{name}.log").read_text()[-3000:]
    (out / "gpu-session.json").write_text(json.dumps(record, indent=2, default=str))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--lite0", required=True, help="the EfficientNet-Lite0 ImageNet .pth")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-session"))
    p.add_argument("--deadline", type=float, default=500, help="seconds from now when every job is stopped")
    args = p.parse_args()
    deadline = time.time() + args.deadline
    (args.work / "results").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    codes: dict = {}
    speed = [sys.executable, "benchmarks/speed.py", "--device", "cuda", "--amp", "bf16", "--batch", "8",
             "--repeats", "5", "--out", str(args.work / "speed.json")]
    codes.update(run_until([("speed", speed)], 1, min(deadline, time.time() + 75), args.work))
    collect(args.work, args.out, codes)
    long_run = start(camvid_job("camvid-pretrained-random-init", "pretrained",
                                ["model.args.encoder_weights=null", f"train.max_steps={PRETRAINED_STEPS}"],
                                args, workers=8), args.work / "random-init.log")
    checks = [sys.executable, "benchmarks/gpu_checks.py", "--data-root", args.data_root,
              "--out", str(args.work / "checks.json")]
    jobs = [("checks", checks)] + [(n, camvid_job(n, r, o, args, workers=3)) for n, r, o in variants(args.lite0)]
    codes.update(run_until(jobs, 2, deadline, args.work))
    collect(args.work, args.out, codes)
    while long_run.poll() is None and time.time() < deadline + 20:
        time.sleep(1)
    if long_run.poll() is None:
        long_run.kill()
    codes["random-init"] = long_run.poll()
    best = sorted((args.work / "runs" / "camvid-pretrained-random-init" / "checkpoints").glob("best*.pt"))
    if best:
        folder = args.work / "random-init-folder"
        subprocess.run([sys.executable, "-m", "imseg.cli", "export", str(best[0]), "--format", "pretrained",
                        "--out", str(folder)], check=False)
        if (folder / "model.safetensors").exists():
            split_folder(folder, args.out)
    collect(args.work, args.out, codes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
