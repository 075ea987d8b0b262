"""Parameter and FLOP counts, measured the same way for every model.

FLOPs come from torch's own ``FlopCounterMode`` (matmuls and convolutions,
2 FLOPs per multiply-add), run on the ``meta`` device: shapes propagate
without allocating memory or computing anything, so even a 250M-parameter
model is profiled at 360x480 in well under a second. Models whose ops have
no meta kernel fall back to a real CPU forward pass.

Profiling all 30 registered models still takes about 20 s (HRNet's and
Auto-DeepLab's thousands of ops), so ``imseg models`` reads the counts at
the default size from ``profiles.json`` (with the registry's paper facts, see
imseg/catalogue.py), written by
``python -m imseg.models.profile`` and checked against live counts by the
tests; a model missing from the file is profiled live.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from imseg.catalogue import CATALOGUE_FILE
from imseg.models.registry import create_model, main_logits


@dataclass(frozen=True)
class Profile:
    name: str
    params: int
    gflops: float  # one forward pass, 2 FLOPs per multiply-add
    size: tuple[int, int]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        main_logits(model(x))
    return counter.get_total_flops()


def profile_model(name: str, num_classes: int = 11, size: tuple[int, int] = (360, 480), **kwargs) -> Profile:
    """Params and forward GFLOPs of ``create_model(name, num_classes, **kwargs)`` at ``size`` (H, W).

    Weights change neither, so ``encoder_weights`` is dropped: loading them into a meta-device model
    would read the file for nothing (and warn once per tensor).
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "encoder_weights"}
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes, **kwargs).eval()
            flops = _forward_flops(model, torch.empty(1, model.preprocessing.num_channels, *size))
    except (NotImplementedError, RuntimeError):
        # An op without a meta kernel (e.g. max_unpool): measure on the CPU instead.
        model = create_model(name, num_classes, **kwargs).eval()
        flops = _forward_flops(model, torch.zeros(1, model.preprocessing.num_channels, *size))
    return Profile(name, count_params(model), flops / 1e9, size)


PROFILES_FILE = CATALOGUE_FILE
SHIPPED_SIZE = (360, 480)
SHIPPED_CLASSES = 11


def shipped_profiles(path: Path = PROFILES_FILE) -> dict[str, Profile]:
    """The default-argument profiles at 360x480, 11 classes, as written by :func:`write_profiles`."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["models"]
    return {name: Profile(name, row["params"], row["gflops"], SHIPPED_SIZE) for name, row in rows.items()}


def table_profile(name: str, size: tuple[int, int] = SHIPPED_SIZE) -> Profile:
    """The shipped profile of a model with default arguments where there is one, else a live one."""
    shipped = shipped_profiles() if tuple(size) == SHIPPED_SIZE else {}
    return shipped.get(name) or profile_model(name, SHIPPED_CLASSES, tuple(size))


def write_profiles(path: Path = PROFILES_FILE) -> Path:
    from imseg.models.registry import list_models, model_info

    rows = {}
    for name in list_models():
        prof, info = profile_model(name, SHIPPED_CLASSES, SHIPPED_SIZE), model_info(name)
        rows[name] = {"params": prof.params, "gflops": round(prof.gflops, 3), "paper": info.paper,
                      "year": info.year, "summary": info.summary, "published": info.published}
    record = {"what": f"create_model(name, {SHIPPED_CLASSES}) with default arguments, one forward at "
                      f"{SHIPPED_SIZE[0]}x{SHIPPED_SIZE[1]}; written by python -m imseg.models.profile",
              "models": rows}
    lines = [f'  "{name}": {json.dumps(row)}' for name, row in rows.items()]  # one line per model: readable diffs
    path.write_text('{\n "what": ' + json.dumps(record["what"]) + ',\n "models": {\n' + ",\n".join(lines) + "\n }\n}\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_profiles()}")
