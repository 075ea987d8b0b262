"""The same-budget table of docs/benchmarks.md, from benchmarks/results/camvid-budget-*.json.

    benchmarks/camvid_table.sh 2          # train + test every architecture, 2 minutes each
    python benchmarks/camvid_table.py     # print the markdown table

The published column gives a CamVid test figure where the paper (or the
FC-DenseNet paper's comparison table, which trained them with ImageNet-
pretrained encoders) has one, else the paper's own headline figure from the
model registry (another dataset: not comparable, shown for orientation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# CamVid 11-class test mIoU. From scratch: SegNet-Basic (Badrinarayanan et
# al. 2017). The rest as listed in Jegou et al. 2017 ("The One Hundred Layers
# Tiramisu"), Table 2, where these networks start from ImageNet weights.
CAMVID_PUBLISHED = {
    "segnet_basic": "47.7 (from scratch)",
    "segnet": "46.4 (pretrained VGG)",
    "bayesian_segnet": "63.1 (pretrained VGG, MC dropout)",
    "deconvnet": "48.9 (pretrained VGG)",
    "fcn8s": "57.0 (pretrained VGG)",
    "deeplabv1": "61.6 (DeepLab-LFOV, pretrained VGG)",
}


def rows() -> list[dict]:
    out = []
    for path in sorted(RESULTS.glob("camvid-budget-*.json")):
        out.append(json.loads(path.read_text()))
    return sorted(out, key=lambda r: -(r.get("test") or {}).get("mIoU", -1))


def markdown(records: list[dict]) -> str:
    from imseg.models import model_info

    lines = [
        "| model | test mIoU | pixel acc | steps (epochs) | params (M) | GFLOPs at 180x240 | published |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        test = r.get("test") or {}
        published = CAMVID_PUBLISHED.get(r["model"]) or (model_info(r["model"]).published or "-") + " (not CamVid)"
        miou = f"{100 * test['mIoU']:.1f}" if r.get("status") == "ok" else f"failed: {r.get('error', '?')[:60]}"
        acc = f"{100 * test['pixel_accuracy']:.1f}" if test else "-"
        steps = f"{r['steps']} ({r['epochs']:.1f})" if "steps" in r else "-"
        size = f"{r['params_millions']:.2f} | {r['gflops_at_eval_size']:.1f}" if "params_millions" in r else "- | -"
        lines.append(f"| {r['model']} | {miou} | {acc} | {steps} | {size} | {published} |")
    return "\n".join(lines)


def main() -> int:
    records = rows()
    if not records:
        print(f"no camvid-budget-*.json in {RESULTS}: run benchmarks/camvid_table.sh first", file=sys.stderr)
        return 1
    budgets = sorted({r.get("budget_minutes") for r in records})
    threads = sorted({r["machine"]["torch_threads"] for r in records})
    cpus = sorted({r["machine"].get("cpu") or r["machine"].get("processor", "?") for r in records})
    print(f"Budget: {', '.join(map(str, budgets))} min of training per model, {', '.join(map(str, threads))} "
          f"CPU thread(s) on {'; '.join(cpus)}, recipe benchmarks/recipes/camvid-budget.yaml\n")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
