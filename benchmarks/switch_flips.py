"""Why SegNet's ExecuTorch program is 4.5e-3 from eager (export-matrix.json): one max-pool switch decided the
other way. SegNet and DeconvNet unpool with the positions of their max-pool maxima; where two values of a 2x2
window are within rounding of each other, another summation order can pick the other one, and the unpooled
value lands one pixel away. This measures, for the export matrix's model (seed 0, conditioned, 96 x 128):

* how far eager's logits move when the input moves by 1e-6 (Gaussian; three draws), and how many switches
  flip;
* the same move with the unmoved input's switches forced: what is left without the flips;
* with --executorch, where the exported program differs from eager, against where the draw that moved the
  logits most moved them.

    python benchmarks/switch_flips.py segnet --executorch
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

import imseg
from imseg.deploy.parity import compare_logits, probe_input
from imseg.machine import machine_info, versions
from imseg.models import deconvnet, segnet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_matrix import K, conditioned  # noqa: E402 - beside this script

SWITCH_USERS = (segnet, deconvnet)  # the modules that call max_pool_with_switches


@contextmanager
def switches_seen(forced: list[torch.Tensor] | None = None) -> Iterator[list[torch.Tensor]]:
    """Record every pool's switch indices; with ``forced``, use those indices instead of the argmax."""
    original = segnet.max_pool_with_switches
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, ceil_mode: bool = True):
        y, s = original(x, ceil_mode)
        if forced is not None:
            index = forced[len(seen)]
            padded = torch.nn.functional.pad(x, s.pads, value=float("-inf")) if any(s.pads) else x
            y, s = padded.flatten(2).gather(2, index.flatten(2)).view_as(y), s._replace(indices=index)
        seen.append(s.indices.clone())
        return y, s

    for module in SWITCH_USERS:
        module.max_pool_with_switches = spy
    try:
        yield seen
    finally:
        for module in SWITCH_USERS:
            module.max_pool_with_switches = original


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the export reports' relative difference (imseg.deploy.parity)."""
    return compare_logits(a, b)["relative_difference"]


@torch.no_grad()
def measure(model: torch.nn.Module, x: torch.Tensor, noise: float, draws: int) -> dict[str, Any]:
    """Each of ``draws`` input shifts (seeds 1..draws, as export_matrix.eager_input_sensitivity) measured; the
    logits of the shift that moved them most are kept for the comparison with ExecuTorch."""
    with switches_seen() as clean_switches:
        clean = model(x)
    rows, noisiest = [], clean
    for seed in range(1, draws + 1):
        moved = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        with switches_seen() as moved_switches:
            noisy = model(moved)
        with switches_seen(forced=clean_switches):
            forced = model(moved)
        rows.append({"seed": seed, "logits_moved": relative(noisy, clean),
                     "switches_flipped_per_pool": [int((a != b).sum()) for a, b in zip(clean_switches, moved_switches)],
                     "logits_moved_with_the_clean_switches_forced": relative(forced, clean)})
        if rows[-1]["logits_moved"] >= max(r["logits_moved"] for r in rows):
            noisiest = noisy
    return {"clean": clean, "noisy": noisiest, "report": {
        "input_noise": noise, "switches_per_pool": [s.numel() for s in clean_switches], "draws": rows}}


def compare_executorch(model: torch.nn.Module, x: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor,
                       size: tuple[int, int]) -> dict[str, Any]:
    from imseg.deploy import open_backend
    from imseg.deploy.executorch_export import export_executorch

    with tempfile.TemporaryDirectory(prefix="imseg-flips-") as tmp:
        export_executorch(model, Path(tmp) / "m.pte", size, check=False)
        got = torch.from_numpy(open_backend(Path(tmp) / "m.pte").logits(x))
    bound = 1e-3 * clean.abs().max()
    by_export, by_noise = (got - clean).abs() > bound, (noisy - clean).abs() > bound
    return {"executorch_relative_difference": relative(got, clean),
            "elements_off_by_more_than_1e-3_of_the_scale": {
                "executorch": int(by_export.sum()), "noisiest_draw": int(by_noise.sum()),
                "both": int((by_export & by_noise).sum()), "of": clean.numel()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["segnet", "bayesian_segnet", "segnet_basic", "deconvnet"])
    p.add_argument("--size", nargs=2, type=int, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--noise", type=float, default=1e-6)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--executorch", action="store_true", help="also export to ExecuTorch and compare")
    p.add_argument("--out", help="JSON path (default benchmarks/results/switch-flips-MODEL.json)")
    args = p.parse_args(argv)
    size = (args.size[0], args.size[1])
    torch.manual_seed(0)  # the export matrix's weights
    model = conditioned(imseg.create_model(args.model, K), size)
    x = probe_input(3, size)
    measured = measure(model, x, args.noise, args.draws)
    report = {"model": args.model, "size": list(size), **measured["report"]}
    if args.executorch:
        report.update(compare_executorch(model, x, measured["clean"], measured["noisy"], size))
    print(json.dumps(report, indent=2))
    out = Path(args.out or f"benchmarks/results/switch-flips-{args.model}.json")
    record = {**report, "command": "python " + " ".join(sys.argv), "machine": machine_info(probe=False),
              "versions": versions("executorch")}
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(out)  # atomic: a run killed mid-write leaves the previous file whole
    return 0


if __name__ == "__main__":
    sys.exit(main())
