"""Devices, precision, seeds and threads: the few decisions every engine shares."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available here")
    return device


def cpu_supports_bf16() -> bool:
    # Native bf16 matmuls (AVX512-BF16 or AMX); elsewhere bf16 autocast is
    # emulated and slower than float32, so 'auto' leaves it off.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value: 'none', 'auto', 'bf16' or 'fp16'."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp='fp16' needs a CUDA device; use 'bf16' on CPU")
        return torch.float16
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise ValueError(f"train.amp must be one of none, auto, bf16, fp16; got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; numpy and random
    # follow so any augmentation library in a worker is reproducible too.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def set_threads(threads: int | None) -> None:
    # None keeps torch's default (one thread per core, or OMP_NUM_THREADS).
    if threads:
        torch.set_num_threads(threads)
