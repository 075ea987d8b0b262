"""How long the commands a user meets first take: `imseg --help`, `imseg models`, and eval with boundary F1.

Start-up: each command runs ``--repeats`` times as a fresh process; the
median wall time and the peak resident memory (the child's ``ru_maxrss``)
are recorded.

Eval: the first ``--images`` CamVid test images go through the same
`imseg.engine.evaluate.evaluate` three times: without boundary F1, with
today's BoundaryF1, and with the BoundaryF1 of ``--before`` (a git commit;
default 60cdb80, the last one with the disk-convolution dilation), so the
before/after pair is measured on the same predictions and the same machine.

    python benchmarks/cli_times.py --checkpoint runs/demo/checkpoints/best.pt
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE = "60cdb80"


def time_command(argv: list[str], repeats: int) -> dict:
    """Median wall seconds and peak RSS (MiB) of ``argv`` as a fresh process."""
    walls, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)  # kilobytes on Linux
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-500:]}")
    return {"command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv)),
            "median_seconds": round(statistics.median(walls), 3), "seconds": [round(w, 3) for w in walls],
            "peak_rss_mib": round(max(peaks), 1)}


def old_boundary_f1(commit: str):
    """BoundaryF1 as it was at ``commit``, loaded from `git show` (the benchmark's own repository)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:src/imseg/metrics.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"metrics_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"metrics_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BoundaryF1


def eval_times(checkpoint: str | None, images: int, before: str, repeats: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset

    import imseg.engine.evaluate as ev
    from imseg.data.camvid import CamVid
    from imseg.engine.checkpoint import load_model
    from imseg.engine.predict import model_inference

    model = load_model(checkpoint) if checkpoint else None
    if model is None:  # no trained model at hand: the demo's architecture, untrained (more boundaries, not fewer)
        torch.manual_seed(0)
        model = __import__("imseg").create_model("lraspp", 11, encoder="mobilenet_v3_large").eval()
    camvid = CamVid(split="test")
    ds = Subset(camvid, range(images))
    loader = DataLoader(ds, batch_size=2)
    inference = model_inference(model)
    new_bf1 = ev.BoundaryF1
    variants = {"no_boundary": (False, new_bf1), "boundary_now": (True, new_bf1),
                f"boundary_{before}": (True, old_boundary_f1(before))}
    results = {}
    for name, (boundary, cls) in variants.items():
        ev.BoundaryF1 = cls
        seconds, scores = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            scores = ev.evaluate(model, loader, num_classes=11, ignore_index=camvid.ignore_index, inference=inference,
                                 device=torch.device("cpu"), boundary=boundary)
            seconds.append(time.perf_counter() - start)
        results[name] = {"median_seconds": round(statistics.median(seconds), 2),
                         "seconds": [round(s, 2) for s in seconds], "mIoU": scores["mIoU"],
                         "mean_bf1": scores.get("mean_bf1")}
    ev.BoundaryF1 = new_bf1
    return {"checkpoint": checkpoint, "images": images, "image_size": list(camvid[0][1].shape), **results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model for the eval timing (default: an untrained LR-ASPP)")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--before", default=BEFORE, help="git commit whose BoundaryF1 is the 'before'")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cli-times.json"))
    args = p.parse_args()

    imseg_bin = str(Path(sys.executable).with_name("imseg"))
    # Before this process imports torch: a child's peak memory counts what it was forked from.
    startup = [time_command([imseg_bin, "--help"], args.repeats), time_command([imseg_bin, "models"], args.repeats)]

    from imseg.machine import describe, machine_info, versions

    result = {
        "machine": machine_info(),
        "versions": versions(),
        "command": "python " + " ".join([Path(sys.argv[0]).resolve().relative_to(REPO).as_posix(), *sys.argv[1:]]),
        "startup": startup,
        "eval": eval_times(args.checkpoint, args.images, args.before, args.repeats),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(describe(result["machine"]))
    for row in result["startup"]:
        print(f"{row['command']:>14}: {row['median_seconds']:.2f} s, peak {row['peak_rss_mib']:.0f} MiB")
    for name, row in result["eval"].items():
        if isinstance(row, dict):
            print(f"eval {result['eval']['images']} images, {name}: {row['median_seconds']:.2f} s, BF1 {row['mean_bf1']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
