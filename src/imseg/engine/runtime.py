"""Devices, precision, seeds and threads: the few decisions every engine shares."""
from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import torch

from imseg.machine import bf16_slowdown, cpu_model, cpu_supports_bf16  # noqa: F401 - re-exported


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device / --device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        built = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"device {name!r} (train.device / --device) was asked for, but torch {torch.__version__} "
                         f"({built}) sees no CUDA GPU on this machine; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


_warned_slow_bf16 = False


def _warn_emulated_bf16() -> None:
    """Once per process: bf16 was asked for on a CPU that emulates it; say how much slower it is here."""
    global _warned_slow_bf16
    if _warned_slow_bf16:
        return
    _warned_slow_bf16 = True
    slowdown = bf16_slowdown()
    warnings.warn(
        f"train.amp=bf16 on a CPU without native bf16 ({cpu_model()}; no AVX512-BF16 or AMX in use): a 3x3 "
        f"convolution runs {slowdown:.1f}x slower under bf16 autocast than in float32 here; "
        f"set train.amp=auto (float32 on this CPU) unless bf16 is wanted for its numerics",
        RuntimeWarning, stacklevel=3,
    )


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value: 'none', 'auto', 'bf16' or 'fp16'.

    'auto' is bf16 only where it is native (CUDA with bf16, or a CPU with
    AVX512-BF16/AMX), float16 on older GPUs, and float32 on every other CPU.
    On a CPU with native bf16 a training run then times both precisions and
    keeps the faster (amp_probe.py), for its validation passes too.
    """
    if amp == "none":
        return None
    if amp == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            _warn_emulated_bf16()
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


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live; the CPU for a module without any (a runtime behind `imseg.deploy`)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
