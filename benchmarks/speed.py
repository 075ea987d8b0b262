"""imseg against torchvision and SMP, timed in the same process and run.

For each pair (the same architecture in imseg and in a peer library), with
random weights and 11 classes: batch-1 inference latency and a batch-4
training step (forward, cross-entropy, backward, SGD step), each the median
of ``--repeats`` runs after one warm-up, interleaved (imseg, peer, imseg,
peer, ...) so a load change on the machine hits both alike. Input 360x480;
SMP needs sides divisible by 32, so SMP pairs run both models at 352x480.

Also measured: the machine's float32 matrix-multiply peak (GFLOP/s), each
model's achieved GFLOP/s (forward FLOPs from torch's FlopCounterMode /
latency) as a fraction of it, and the CamVid data pipeline's throughput per
worker against what the training step consumes.

    pip install -e .[bench]
    python benchmarks/speed.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import imseg
from imseg.machine import data_seconds_per_image, describe, machine_info, matmul_gflops, versions
from imseg.models.registry import main_logits

K = 11


def _tv(name, **kwargs):
    def build():
        from torchvision.models import segmentation as seg

        return getattr(seg, name)(weights=None, weights_backbone=None, num_classes=K, **kwargs)

    return build


def _smp(cls, encoder):
    def build():
        import segmentation_models_pytorch as smp

        return getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=K)

    return build


def _ours(name, **kwargs):
    return lambda: imseg.create_model(name, K, **kwargs)


def _ours_deeplabv3plus_in_smp_layout():
    """A diagnostic, not a registered model: imseg's separable DeepLabV3+ rewired into SMP's layout.

    Ours follows the paper and TF DeepLab: every separable conv is depthwise ->
    BN -> ReLU -> pointwise -> BN -> ReLU, and the decoder runs two of them at
    stride 4. SMP's separable conv is depthwise -> pointwise -> BN -> ReLU, and
    it moves one decoder conv to stride 16 (after ASPP). Built from imseg's own
    modules, this model isolates the cost of those two design choices from
    any framework overhead: if it times like SMP's, the gap is the design.
    """
    from torch import nn

    from imseg.models.layers import SeparableConvBNAct

    def smp_style(sep: SeparableConvBNAct) -> nn.Sequential:
        depthwise, pointwise = sep  # two ConvBNAct: (conv, BN, ReLU) each
        return nn.Sequential(depthwise[0], pointwise[0], pointwise[1], nn.ReLU(inplace=True))

    model = imseg.create_model("deeplabv3plus", K, encoder="resnet50", separable=True)
    aspp = model.aspp
    for i, branch in enumerate(aspp.convs):
        if isinstance(branch, SeparableConvBNAct):
            aspp.convs[i] = smp_style(branch)
    model.aspp = nn.Sequential(aspp, smp_style(SeparableConvBNAct(256, 256, 3)))
    model.decoder = nn.Sequential(smp_style(model.decoder[0]))
    return model


# (label, imseg builder, peer, peer builder, input size)
PAIRS = [
    ("FCN-ResNet50", _ours("fcn_resnet50"), "torchvision", _tv("fcn_resnet50", aux_loss=False), (360, 480)),
    # torchvision's DeepLabV3 configuration: no multi-grid (the paper's default here), rates 12/24/36, a head conv.
    ("DeepLabV3-ResNet50", _ours("deeplabv3", encoder="resnet50", output_stride=8, aspp_rates=(12, 24, 36),
                                 head_conv=True, multi_grid=None), "torchvision", _tv("deeplabv3_resnet50", aux_loss=False),
     (360, 480)),
    # torchvision's rates here too (12/24/36 at output stride 16; imseg's default is the paper's 6/12/18).
    ("DeepLabV3-MobileNetV3-Large", _ours("deeplabv3", encoder="mobilenet_v3_large", output_stride=16,
                                          aspp_rates=(12, 24, 36), head_conv=True, multi_grid=None), "torchvision",
     _tv("deeplabv3_mobilenet_v3_large", aux_loss=False), (360, 480)),
    ("LR-ASPP-MobileNetV3-Large", _ours("lraspp"), "torchvision", _tv("lraspp_mobilenet_v3_large"), (360, 480)),
    ("U-Net ResNet-34", _ours("unet", encoder="resnet34"), "smp", _smp("Unet", "resnet34"), (352, 480)),
    ("PSPNet ResNet-34", _ours("pspnet", encoder="resnet34"), "smp", _smp("PSPNet", "resnet34"), (352, 480)),
    ("PAN ResNet-34", _ours("pan", encoder="resnet34"), "smp", _smp("PAN", "resnet34"), (352, 480)),
    ("DeepLabV3+ ResNet-50", _ours("deeplabv3plus", encoder="resnet50"), "smp", _smp("DeepLabV3Plus", "resnet50"),
     (352, 480)),
    # The same two with SMP's design choices, for a comparison at (nearly) equal FLOPs:
    # SMP's PAN decoder is 32 channels wide, its DeepLabV3+ ASPP and decoder are separable.
    ("PAN ResNet-34, 32-ch decoder", _ours("pan", encoder="resnet34", decoder_channels=32), "smp",
     _smp("PAN", "resnet34"), (352, 480)),
    ("DeepLabV3+ ResNet-50, separable", _ours("deeplabv3plus", encoder="resnet50", separable=True), "smp",
     _smp("DeepLabV3Plus", "resnet50"), (352, 480)),
    # Not a model we ship: the pair above with our model rewired into SMP's layout, to show
    # whether its 1.10x train step is the paper's design or overhead (see the builder).
    ("DeepLabV3+ ResNet-50, rewired to SMP's layout", _ours_deeplabv3plus_in_smp_layout, "smp",
     _smp("DeepLabV3Plus", "resnet50"), (352, 480)),
]


def logits(out):
    return out["out"] if isinstance(out, dict) else main_logits(out)


def forward_gflops(model, size):
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *size, device=device))
    return counter.get_total_flops() / 1e9


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work: a CUDA kernel launch returns before the kernel runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_pair(models, size, repeats, batch, device=torch.device("cpu"), amp=None):
    """Median forward (batch 1) and train-step (``batch``) seconds per model, runs interleaved.

    ``amp``: an autocast dtype for both (bf16 on a GPU is how people run these), or None for float32.
    """
    x1 = torch.randn(1, 3, *size, device=device)
    xb = torch.randn(batch, 3, *size, device=device)
    yb = torch.randint(0, K, (batch, *size), device=device)
    opts = [torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in models]
    cast = lambda: torch.autocast(device.type, dtype=amp, enabled=amp is not None)  # noqa: E731

    def fwd(m):
        m.eval()
        with torch.no_grad(), cast():
            m(x1)

    def step(m, opt):
        m.train()
        with cast():
            loss = F.cross_entropy(logits(m(xb)).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fwd_t = [[] for _ in models]
    step_t = [[] for _ in models]
    for r in range(repeats + 1):  # round 0 is the warm-up
        for i, m in enumerate(models):
            t = _clock(device)
            fwd(m)
            if r:
                fwd_t[i].append(_clock(device) - t)
        for i, (m, opt) in enumerate(zip(models, opts)):
            t = _clock(device)
            step(m, opt)
            if r:
                step_t[i].append(_clock(device) - t)
    return [statistics.median(t) for t in fwd_t], [statistics.median(t) for t in step_t]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pairs", nargs="*", help="labels to run (default: all)")
    p.add_argument("--out", default="benchmarks/results/speed-vs-peers.json")
    p.add_argument("--plot", default=None, help="also draw the ratios to this PNG (e.g. docs/benchmarks-speed.png)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast both models to this dtype (default none: float32)")
    args = p.parse_args()
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    peak = _peak_gflops(device, amp)  # the peak the achieved GFLOP/s are compared with
    per_image = data_seconds_per_image(samples=24, color_jitter=0.2)
    data_rate = 1 / per_image if per_image else None
    print(f"machine: {describe()}; device {device}, amp {args.amp}")
    print(f"matmul peak {peak:.0f} GFLOP/s; data pipeline {data_rate or float('nan'):.1f} images/s per worker")
    rows = []
    for label, ours, peer, theirs, size in PAIRS:
        if args.pairs and label not in args.pairs:
            continue
        torch.manual_seed(0)
        models = [ours().to(device), theirs().to(device)]
        flops = [forward_gflops(m.eval(), size) for m in models]
        params = [sum(q.numel() for q in m.parameters()) / 1e6 for m in models]
        fwd, step = timed_pair(models, size, args.repeats, args.batch, device, amp)
        row = {
            "pair": label, "peer": peer, "size": list(size),
            "imseg": {"params_millions": params[0], "forward_gflops": flops[0], "forward_seconds": fwd[0],
                      "train_step_seconds": step[0], "achieved_gflops_per_second": flops[0] / fwd[0]},
            peer: {"params_millions": params[1], "forward_gflops": flops[1], "forward_seconds": fwd[1],
                   "train_step_seconds": step[1], "achieved_gflops_per_second": flops[1] / fwd[1]},
            "ratio_forward": fwd[0] / fwd[1],
            "ratio_train_step": step[0] / step[1],
            "ratio_forward_per_flop": (fwd[0] / flops[0]) / (fwd[1] / flops[1]),
            "train_images_per_second_needed": args.batch / step[0],
        }
        rows.append(row)
        print(f"{label:<28} {peer:<11} fwd {fwd[0]:.3f}/{fwd[1]:.3f}s ({row['ratio_forward']:.2f}x)  "
              f"step {step[0]:.2f}/{step[1]:.2f}s ({row['ratio_train_step']:.2f}x)  "
              f"GFLOPs {flops[0]:.1f}/{flops[1]:.1f}  at {flops[0] / fwd[0] / peak:.0%} of peak", flush=True)
    out = {
        "what": f"imseg / peer in one process: batch-1 forward and batch-{args.batch} train step, median of "
                f"{args.repeats} interleaved runs after a warm-up; SMP pairs at 352x480 (SMP needs multiples of 32)",
        "device": str(device), "amp": args.amp,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "matmul_peak_gflops_per_second": peak,
        "data_pipeline_images_per_second_per_worker": data_rate,
        "results": rows,
        "machine": machine_info(),
        "versions": versions("segmentation_models_pytorch"),
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    print(markdown_table(out))
    if args.plot:
        plot_ratios(out, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _peak_gflops(device: torch.device, amp) -> float:
    """The matrix-multiply peak on ``device`` in the timed precision (CPU: float32, as always measured here)."""
    if device.type != "cuda":
        return matmul_gflops(n=2048, repeats=10)
    a = torch.randn(8192, 8192, device=device, dtype=amp or torch.float32)
    for _ in range(3):
        a @ a
    start = _clock(device)
    for _ in range(10):
        a @ a
    return 10 * 2 * 8192**3 / (_clock(device) - start) / 1e9


def markdown_table(out: dict) -> str:
    lines = ["| pair | peer | input | params imseg / peer (M) | GFLOPs imseg / peer | forward imseg / peer (s) "
             "| ratio | per-FLOP ratio | train step imseg / peer (s) | ratio | imseg % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        a, b = r["imseg"], r[r["peer"]]
        lines.append(
            f"| {r['pair']} | {r['peer']} | {r['size'][0]}x{r['size'][1]} | {a['params_millions']:.1f} / "
            f"{b['params_millions']:.1f} | {a['forward_gflops']:.1f} / {b['forward_gflops']:.1f} | "
            f"{a['forward_seconds']:.3f} / {b['forward_seconds']:.3f} | {r['ratio_forward']:.2f} | "
            f"{r['ratio_forward_per_flop']:.2f} | {a['train_step_seconds']:.2f} / {b['train_step_seconds']:.2f} | "
            f"{r['ratio_train_step']:.2f} | {a['achieved_gflops_per_second'] / out['matmul_peak_gflops_per_second']:.0%} |")
    return "\n".join(lines)


def plot_ratios(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["pair"] for r in out["results"]]
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([i - 0.2 for i in x], [r["ratio_forward"] for r in out["results"]], 0.4, label="forward (batch 1)")
    ax.bar([i + 0.2 for i in x], [r["ratio_train_step"] for r in out["results"]], 0.4, label="train step")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.05, color="tab:red", ls="--", lw=0.8, label="1.05")
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set(ylabel="time imseg / peer", title="imseg vs torchvision and SMP (lower is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
