"""What machine this is: the CPU, the vector and matrix units PyTorch may use, and a speed probe.

Results from different machines only compare when each says where it came
from, and a precision choice (bf16 or float32) is only right for the CPU it
runs on: the same bf16 autocast that halves a step's time on a CPU with
AVX512-BF16 makes it ~35x slower on one with AVX2 only, where bf16 is
emulated. Everything here is cheap except the two probes, which time real
kernels and are only run when asked for.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

# The /proc/cpuinfo flags that decide which kernels PyTorch and oneDNN run.
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
          "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still allow native bf16 dot products.
_ONEDNN_BF16_ISAS = {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                     "AVX512_CORE_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info.setdefault(key, value)  # the first core's entry stands for all
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector and matrix extensions of this CPU that matter to PyTorch, as /proc/cpuinfo names them."""
    info = _cpuinfo()
    present = set((info.get("flags") or info.get("Features") or "").split())
    if not present:  # no /proc/cpuinfo (macOS, Windows): ask PyTorch instead
        checks = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                  "avx512_vnni": "_is_vnni_supported", "avx512_bf16": "_is_avx512_bf16_supported",
                  "amx_tile": "_is_amx_tile_supported"}
        present = {flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()}
    return [flag for flag in _FLAGS if flag in present]


def isa_caps() -> dict[str, str | None]:
    """Kernel caps set in the environment, and the capability PyTorch's own kernels run at."""
    return {"ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_supports_bf16() -> bool:
    """True where bf16 autocast runs on native units (AVX512-BF16 or AMX), not emulated.

    PyTorch's own checks read the CPU's flags only; ``ATEN_CPU_CAPABILITY=avx2``
    and ``ONEDNN_MAX_CPU_ISA=AVX2`` make a CPU with AVX-512 run the kernels of
    one without it, and then bf16 is emulated there too, so the caps count.
    """
    native = any(getattr(torch.cpu, fn, lambda: False)()
                 for fn in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    if not native:
        return False
    if "AVX512" not in torch.backends.cpu.get_cpu_capability().upper():
        return False
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return onednn_cap is None or onednn_cap.strip().upper() in _ONEDNN_BF16_ISAS


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 matrix-multiply speed with the current thread count (GFLOP/s, best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def bf16_slowdown(repeats: int = 3) -> float:
    """Time of a 3x3 convolution under CPU bf16 autocast over its float32 time (above 1: bf16 is slower)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 48, 64)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)

    with torch.no_grad():
        return _best_seconds(bf16, repeats) / _best_seconds(lambda: conv(x), repeats)


def machine_info(probe: bool = True) -> dict:
    """A JSON-ready description of this machine for benchmark results; ``probe`` adds the matmul speed."""
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "isa_caps": isa_caps(),
        "native_bf16": cpu_supports_bf16(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if probe:
        info["matmul_fp32_gflops"] = round(matmul_gflops(), 1)
    return info


def describe(info: dict | None = None) -> str:
    """One line for logs: the CPU, its extensions and any kernel caps."""
    info = info or machine_info(probe=False)
    caps = {k: v for k, v in info["isa_caps"].items() if v and k != "torch_cpu_capability"}
    text = f"{info['cpu']} ({' '.join(info['cpu_flags'])}; torch kernels {info['isa_caps']['torch_cpu_capability']}"
    text += "".join(f", {k}={v}" for k, v in caps.items()) + f"; {info['torch_threads']} threads)"
    if "matmul_fp32_gflops" in info:
        text += f", fp32 matmul {info['matmul_fp32_gflops']:.0f} GFLOP/s"
    return text


def versions(*extra: str) -> dict:
    """The versions a benchmark result depends on (plus the ``extra`` packages, where installed) and the
    git commit of the code that ran, for the ``versions`` field of every JSON in benchmarks/results/."""
    import importlib
    import subprocess

    import torchvision

    import imseg

    found = {"torch": torch.__version__, "torchvision": torchvision.__version__, "imseg": imseg.__version__,
             "python": sys.version.split()[0]}
    for name in extra:
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            found[name] = None
        except AttributeError:  # a package without __version__ (executorch): its installed distribution's
            from importlib.metadata import PackageNotFoundError, version

            try:
                found[name] = version(name.replace("_", "-"))
            except PackageNotFoundError:
                found[name] = None
    try:
        found["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found["git_commit"] = None  # an installed copy, not a checkout
    return found


def data_seconds_per_image(root: str | None = None, samples: int = 16, color_jitter: float = 0.0) -> float | None:
    """Seconds one CamVid training sample takes to load and augment (360x480 crops, scale 0.5-2, flip),
    the data pipeline's share of a training step; None without CamVid."""
    from imseg.config import DataConfig
    from imseg.data import DataError, build_dataset

    cfg = DataConfig(name="camvid", root=root, crop_size=[360, 480], scale_range=[0.5, 2.0], hflip=True,
                     color_jitter=color_jitter)
    try:
        ds = build_dataset(cfg, "train", train=True)
    except DataError:
        return None
    start = time.perf_counter()
    for i in range(samples):
        ds[i]
    return (time.perf_counter() - start) / samples


def write_record(path: str | Path, record: dict) -> Path:
    """A benchmark's JSON record (with its `machine_info` and `versions`), written atomically: a run killed
    mid-write leaves the previous file whole."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)
    return path


def alternated_medians(steps: dict, repeats: int, warmups: int = 2) -> dict:
    """Median seconds of each callable in ``steps``, timed round-robin after ``warmups`` calls each, so
    that a machine slowing down mid-benchmark (shared cloud cores) slows every one alike."""
    import statistics

    times: dict = {key: [] for key in steps}
    for i in range(warmups + repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmups:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}
