"""A bounded load test of `imseg serve`'s HTTP API: latency, errors and the server's memory.

Starts ``imseg serve`` on loopback as a child process, sends ``--warmup``
requests (``--concurrency`` at once, so every worker thread of the server has
served one), then ``--requests`` ``POST /api/segment`` requests with
``--concurrency`` clients at once (each the same picture, the mask PNG
back), and records p50 / p95 / p99 latency, throughput, errors by status,
and the server's resident memory after the warm-up, at its peak (sampled
every 0.1 s, and the kernel's high-water mark), once a second through the
load (``rss_timeline``) and at the end; "flat" is judged on the growth from
the end of the warm-up and over the second half of the load. Writes JSON
with the machine, the versions and the command.

Without ``--checkpoint`` the model is an untrained U-Net (ResNet-18
encoder) with CamVid's 11 classes: the speed and memory are those of
a trained one, only its masks are noise. The picture is the first CamVid
test image (360 x 480) where the data is found, else a synthetic one of that size.

    python benchmarks/serve_load.py                                  # 200 requests, 8 at once
    python benchmarks/serve_load.py --requests 10 --concurrency 2 --out /tmp/serve-load.json

The clients run in this process on the same machine: on a 2-core CPU they
take a little of the server's CPU, as a reverse proxy would.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.serve_support: starting the server and waiting for it


def write_checkpoint(path: Path) -> None:
    """An untrained `unet` (ResNet-18 encoder, no downloaded weights) with CamVid's metadata."""
    import torch

    from imseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE
    from imseg.engine.checkpoint import save_checkpoint
    from imseg.meta import ModelMeta
    from imseg.models import create_model
    from imseg.preprocessing import TORCHVISION

    torch.manual_seed(0)
    model = create_model("unet", len(CAMVID_CLASSES), encoder="resnet18")
    meta = ModelMeta(spec=model.imseg_spec, preprocessing=TORCHVISION, class_names=tuple(CAMVID_CLASSES),
                     palette=tuple(tuple(c) for c in CAMVID_PALETTE[: len(CAMVID_CLASSES)]))
    save_checkpoint({**meta.to_dict(), "state_dict": model.state_dict()}, path)


def picture(path: str | None) -> tuple[bytes, str]:
    """(PNG bytes, where they came from)."""
    if path:
        return Path(path).read_bytes(), path
    from imseg.data import DataError, find_camvid_root

    try:
        first = sorted((find_camvid_root(None) / "test").glob("*.png"))[0]
        return first.read_bytes(), str(first.relative_to(first.parents[1]))
    except (DataError, IndexError):
        from PIL import Image

        rng = np.random.default_rng(0)
        smooth = np.kron(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(smooth).save(buffer, format="PNG")
        return buffer.getvalue(), "synthetic 360x480 (CamVid not found)"


def rss_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and its high-water mark (VmHWM), MiB."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "hwm": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError):  # no /proc (macOS): psutil, if installed
        import psutil

        return {"rss": psutil.Process(pid).memory_info().rss / 2**20, "hwm": float("nan")}


def multipart(data: bytes, name: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def one_request(url: str, body: bytes, content_type: str) -> tuple[float, int | str]:
    """(seconds, HTTP status or the error's name) of one POST."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status: int | str = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        status = type(e).__name__
    return time.perf_counter() - start, status


class MemorySampler(threading.Thread):
    """The server's resident memory every ``every`` seconds, while the load runs."""

    def __init__(self, pid: int, every: float = 0.1, record_every: int = 10) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.record_every, self.peak = pid, every, record_every, 0.0
        self.timeline: list[float] = []  # RSS every ``every * record_every`` seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        samples = 0
        while not self.stopped.is_set():
            rss = rss_mib(self.pid)["rss"]
            self.peak = max(self.peak, rss)
            if samples % self.record_every == 0:
                self.timeline.append(round(rss, 1))
            samples += 1
            self.stopped.wait(self.every)


def run_load(url: str, pid: int, body: bytes, content_type: str, requests: int, concurrency: int) -> dict:
    sampler = MemorySampler(pid)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one_request(url, body, content_type), range(requests)))
    wall = time.perf_counter() - start
    sampler.stopped.set()
    sampler.join()
    seconds = np.array([s for s, _ in results]) * 1000
    ok = seconds[[status == 200 for _, status in results]]
    errors: dict[str, int] = {}
    for _, status in results:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    pct = (lambda q: round(float(np.percentile(ok, q)), 1)) if ok.size else (lambda q: None)
    return {"wall_seconds": round(wall, 2), "throughput_rps": round(len(ok) / wall, 2),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99), "min": pct(0), "max": pct(100),
                           "mean": round(float(ok.mean()), 1) if ok.size else None},
            "latency_ms_all_requests": {"p50": round(float(np.percentile(seconds, 50)), 1),
                                        "p95": round(float(np.percentile(seconds, 95)), 1)},
            "errors": sum(errors.values()), "errors_by_status": errors, "peak_rss_sampled_mib": round(sampler.peak, 1),
            "rss_timeline_mib": sampler.timeline}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file to serve (default: an untrained unet/resnet18, CamVid classes)")
    p.add_argument("--image", help="picture to send (default: the first CamVid test image)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=16, help="requests sent before measuring (--concurrency at once)")
    p.add_argument("--threads", type=int, help="the server's intra-op threads (default: torch's, one per core)")
    p.add_argument("--queue", type=int, help="the server's --queue (default: twice --concurrency, at least 16)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve-load.json"))
    p.add_argument("--write-checkpoint", help=argparse.SUPPRESS)
    return p.parse_args()


def measure(args: argparse.Namespace, checkpoint: Path, workdir: Path) -> dict:
    """Start the server, warm it up, load it, stop it: the numbers of one run."""
    from tests.serve_support import free_port, start_server, wait_until_up

    data, source = picture(args.image)
    body, content_type = multipart(data)
    port, log = free_port(), workdir / "server.log"
    queue = args.queue or max(16, 2 * args.concurrency)
    extra = ["--queue", str(queue), "--mc-samples", "0", "--device", "cpu"]
    extra += ["--threads", str(args.threads)] if args.threads else []
    started = time.perf_counter()
    server = start_server(checkpoint, port, *extra, log=log)
    try:
        wait_until_up(server, port, timeout=300, log=log)
        startup = time.perf_counter() - started
        idle = rss_mib(server.pid)["rss"]
        url = f"http://127.0.0.1:{port}/api/segment"
        with ThreadPoolExecutor(args.concurrency) as pool:
            warm = list(pool.map(lambda _: one_request(url, body, content_type), range(args.warmup)))
        if any(status != 200 for _, status in warm):
            raise SystemExit(f"warm-up requests failed: {warm}; server output: {log.read_text()[-2000:]}")
        after_warmup = rss_mib(server.pid)["rss"]
        load = run_load(url, server.pid, body, content_type, args.requests, args.concurrency)
        end = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    timeline = load.pop("rss_timeline_mib")
    middle = timeline[len(timeline) // 2] if timeline else after_warmup
    memory = {"idle_after_startup": round(idle, 1), "after_warmup": round(after_warmup, 1),
              "end": round(end["rss"], 1), "peak_sampled": load.pop("peak_rss_sampled_mib"),
              "high_water_mark": round(end["hwm"], 1), "growth_after_warmup": round(end["rss"] - after_warmup, 1),
              "growth_second_half": round(end["rss"] - middle, 1), "rss_timeline": timeline}
    return {"image": source, "server_args": extra, "server_startup_seconds": round(startup, 1), **load,
            "memory_mib": memory}


def main() -> None:
    args = parse_args()
    if args.write_checkpoint:
        write_checkpoint(Path(args.write_checkpoint))
        return
    with tempfile.TemporaryDirectory(prefix="imseg-serve-load-") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else tmp / "unet-resnet18-untrained.pt"
        if not args.checkpoint:  # in a child: this process (the clients) stays without torch while it runs
            subprocess.run([sys.executable, __file__, "--write-checkpoint", str(checkpoint)], check=True)
        run = measure(args, checkpoint, tmp)
    from imseg.machine import describe, machine_info, versions

    result = {"machine": machine_info(), "versions": versions("gradio", "fastapi", "uvicorn"),
              "command": "python " + " ".join([Path(sys.argv[0]).resolve().relative_to(REPO).as_posix(),
                                               *sys.argv[1:]]),
              "model": args.checkpoint or "unet, resnet18 encoder, 11 CamVid classes (untrained)",
              "requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup,
              "endpoint": "POST /api/segment (multipart, mask PNG back)", **run}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_ms"]
    print(describe(result["machine"]))
    print(f"{args.requests} requests, {args.concurrency} at once: p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
          f"{result['throughput_rps']} req/s, {result['errors']} errors; server RSS "
          f"{result['memory_mib']['after_warmup']:.0f} MiB after warm-up, {result['memory_mib']['end']:.0f} MiB at "
          f"the end (peak {result['memory_mib']['high_water_mark']:.0f}, +{result['memory_mib']['growth_second_half']}"
          f" over the second half); wrote {args.out}")


if __name__ == "__main__":
    main()
