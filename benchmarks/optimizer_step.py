"""The optimiser step on the CPU: torch's default AdamW / SGD against their fused kernels.

imseg builds its optimisers with ``fused=True`` wherever torch has the fused
kernel for the parameters' device (src/imseg/engine/schedule.py). This times
one ``step()`` of each variant on the parameters of a few imseg models, with
random gradients, the variants in alternation, and records how far apart the
fused and default paths' weights are after the same steps (float32 rounding).

    python benchmarks/optimizer_step.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from imseg.machine import machine_info, versions
from imseg.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"lraspp": {}, "unet": {"encoder": "resnet18"}, "deeplabv3plus": {}}
OPTIMISERS = {
    "adamw": lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kw),
    "sgd": lambda params, **kw: torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=1e-4, **kw),
}


def _with_grads(model_name: str) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    params = list(create_model(model_name, 11, **MODELS[model_name]).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_steps(model_name: str, optimiser: str, repeats: int) -> dict:
    """Median milliseconds of one step, default and fused, and the largest weight difference after them all."""
    params = {fused: _with_grads(model_name) for fused in (False, True)}
    opts = {fused: OPTIMISERS[optimiser](params[fused], fused=fused) for fused in (False, True)}
    for opt in opts.values():  # the first step allocates the optimiser's state
        opt.step()
    ms: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for fused, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            ms[fused].append((time.perf_counter() - start) * 1000)
    diff = max((a - b).abs().max().item() for a, b in zip(params[False], params[True]))
    default, fused = statistics.median(ms[False]), statistics.median(ms[True])
    return {"model": model_name, "optimiser": optimiser, "params_millions": sum(p.numel() for p in params[True]) / 1e6,
            "default_ms": round(default, 2), "fused_ms": round(fused, 2), "speedup": round(default / fused, 2),
            "steps_compared": repeats + 1, "max_weight_difference": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS / "optimizer-step.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model_name in MODELS:
        for optimiser in OPTIMISERS:
            rows.append(time_steps(model_name, optimiser, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    record = {"what": __doc__.split("\n\n")[0], "rows": rows, "threads": torch.get_num_threads(),
              "command": "python benchmarks/optimizer_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(), "versions": versions()}
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
