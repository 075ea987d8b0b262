"""Forward and backward time of each training loss on a batch of CamVid-recipe logits.

The CamVid recipes' loss sees float32 logits of 8 crops of 240x320 with 11
classes (autocast upcasts them); a term's forward and backward, median of
``--repeats`` after two warm-ups, with ENet-like class weights where the
loss takes them; on random logits (every pixel uncertain) and on "fitted"
ones (the true class far ahead on 90% of the pixels). ``--compare-with``
times another checkout's ``imseg.losses`` too (e.g. a ``git worktree`` of an
older commit), the two in alternation.

    git worktree add /tmp/old-acc7ac4 acc7ac4
    python benchmarks/loss_speed.py --threads 2 --compare-with /tmp/old-acc7ac4/src
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from imseg.machine import alternated_medians, machine_info, versions, write_record

TERMS = {
    "ce": {"name": "ce"},
    "ohem": {"name": "ohem", "thresh": 0.7, "min_kept": 100000},
    "dice": {"name": "dice"},
    "focal": {"name": "focal"},
    "lovasz": {"name": "lovasz"},
}


def _losses_module(path: str | None):
    if path is None:
        import imseg.losses

        return imseg.losses
    spec = importlib.util.spec_from_file_location("other_losses", Path(path) / "imseg" / "losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_terms(modules: dict, term: dict, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
               repeats: int) -> dict[str, float]:
    """Median seconds of the term's forward and backward under each of ``modules`` (an ``imseg.losses``
    each), timed in alternation after two warm-ups so that a machine slowing down slows every one alike."""
    def step(loss):
        return lambda: loss(logits.detach().requires_grad_(), target).backward()

    steps = {key: step(module.build_loss([term], ignore_index=255, class_weights=weights))
             for key, module in modules.items()}
    return alternated_medians(steps, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--terms", nargs="*", default=list(TERMS), choices=list(TERMS))
    parser.add_argument("--compare-with", default=None,
                        help="a src/ folder whose imseg/losses.py to time too, in alternation (other_ms, speedup)")
    parser.add_argument("--out", default="benchmarks/results/loss-speed.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modules = {"this": _losses_module(None)}
    if args.compare_with:
        modules["other"] = _losses_module(args.compare_with)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, 11, *args.size, generator=generator)
    target = torch.randint(0, 11, (args.batch, *args.size), generator=generator)
    target[:, :8] = 255  # a void band, as CamVid's labels have
    weights = 1 / torch.log(1.02 + torch.linspace(0.003, 0.25, 11))  # ENet-style weights, about 4 to 44
    # A fitted model: the true class far ahead on 90% of the pixels (OHEM then tops up its few hard pixels).
    fitted = logits.clone()
    sure = (torch.rand(target.shape, generator=generator) < 0.9) & (target != 255)
    fitted.scatter_add_(1, target.clamp(max=10)[:, None], 6.0 * sure[:, None].float())
    rows = []
    for name in args.terms:
        for kind, x in (("random", logits), ("fitted", fitted)):
            seconds = time_terms(modules, TERMS[name], x, target, weights, args.repeats)
            row = {"loss": name, "logits": kind, "ms": round(1000 * seconds["this"], 2)}
            if "other" in seconds:
                row.update(other_ms=round(1000 * seconds["other"], 2),
                           speedup=round(seconds["other"] / seconds["this"], 2))
            rows.append(row)
            print(rows[-1], flush=True)
    record = {"rows": rows, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
              "compare_with": args.compare_with, "command": "python " + " ".join(sys.argv),
              "machine": machine_info(probe=False), "versions": versions()}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
