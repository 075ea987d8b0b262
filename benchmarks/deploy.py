"""Batch-1 latency of four models in every runtime and precision imseg exports to, with peers.

For LR-ASPP (MobileNetV3-Large), DeepLabV3 (MobileNetV3-Large), U-Net
(ResNet-18) and DeepLabV3+ (ResNet-50), each with random weights and 11
classes, at 360x480 (``--size``):

* imseg in eager PyTorch, fp32 (the reference every export is checked against);
* onnxruntime fp32 and int8 (static QDQ), OpenVINO fp32 and int8 (NNCF),
  ExecuTorch fp32 (XNNPACK), each exported by imseg's own exporters;
* the peer in eager PyTorch in the same run: torchvision's
  lraspp_mobilenet_v3_large / deeplabv3_mobilenet_v3_large, SMP's
  Unet(resnet18) / DeepLabV3Plus(resnet50) (SMP needs sides divisible by 32,
  so SMP peers run at 352x480, and imseg's eager model is timed there too).

Each number is the median of ``--repeats`` calls after ``--warmup`` calls;
within one model the variants run interleaved (one call of each per round),
so a load change on the machine hits them alike. int8 calibration uses random
inputs: latency does not depend on the values (benchmarks/int8_accuracy.py
measures what int8 costs in CamVid mIoU). Every exported file is checked
against eager before it is timed; the check is in the JSON.

    pip install -e .[deploy,mobile,bench]
    python benchmarks/deploy.py                       # everything (about 5 minutes on 2 cores)
    python benchmarks/deploy.py --models lraspp --variants torch-fp32 onnxruntime-fp32 --size 64 96 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import imseg
from imseg.machine import describe, machine_info, versions

K = 11
# key -> (label, imseg builder arguments, peer library, peer builder)
MODELS: dict[str, tuple[str, dict[str, Any], str, Callable[[], torch.nn.Module]]] = {}


def _tv(name: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from torchvision.models import segmentation as seg

        return getattr(seg, name)(weights=None, weights_backbone=None, num_classes=K, **kwargs)

    return build


def _smp(cls: str, encoder: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=K)

    return build


MODELS.update({
    "lraspp": ("LR-ASPP MobileNetV3-Large", {"name": "lraspp"}, "torchvision", _tv("lraspp_mobilenet_v3_large")),
    # torchvision's configuration: output stride 16, a head conv, no multi-grid, ASPP rates 12/24/36 (imseg's
    # default at output stride 16 is the paper's 6/12/18). On the 23 x 30 map of a 360 x 480 picture the rate-36
    # branch reads only padding off its centre tap and the rate-24 branch off its centre row: imseg runs those as
    # 1x1 / 1x3 convolutions (AtrousConv2d, exact), torchvision as full 3x3 ones.
    "deeplabv3_mnv3": ("DeepLabV3 MobileNetV3-Large",
                       {"name": "deeplabv3", "encoder": "mobilenet_v3_large", "output_stride": 16, "head_conv": True,
                        "multi_grid": None, "aspp_rates": (12, 24, 36)}, "torchvision",
                       _tv("deeplabv3_mobilenet_v3_large", aux_loss=False)),
    "unet_r18": ("U-Net ResNet-18", {"name": "unet", "encoder": "resnet18"}, "smp", _smp("Unet", "resnet18")),
    # SMP's DeepLabV3+ has depthwise-separable ASPP and decoder convolutions: imseg's `separable` option is the
    # same network (26.69M parameters against SMP's 26.68M; the default, plain convolutions, has 40.3M).
    "deeplabv3plus_r50": ("DeepLabV3+ ResNet-50", {"name": "deeplabv3plus", "encoder": "resnet50", "separable": True},
                          "smp", _smp("DeepLabV3Plus", "resnet50")),
})
VARIANTS = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8",
            "executorch-fp32")
SMP_SIZE_MULTIPLE = 32


def build_ours(spec: dict[str, Any], size: tuple[int, int]) -> torch.nn.Module:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return with_batchnorm_statistics(imseg.create_model(spec["name"], K, **kwargs), size)


def with_batchnorm_statistics(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """``model`` in eval mode, its BatchNorm statistics measured on a few random pictures.

    Freshly initialised statistics (mean 0, variance 1) let activations shrink layer after layer: an untrained
    DeepLabV3-MobileNetV3 answers logits of about 1e-7. int8 rounds those to zero (its OpenVINO int8 check
    failed: agreement 0.001), and float arithmetic on such values may hit the CPU's slow denormal path, in
    imseg's model and the peer's alike. Measured statistics give activations of a trained network's scale, so
    both sides are timed on realistic numbers and the int8 files are real int8 models.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, *size))
    return model.eval()


def export_variant(model: torch.nn.Module, variant: str, folder: Path, size: tuple[int, int],
                   calibrate: int, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(backend, export check report) for one exported variant of ``model``."""
    from imseg.deploy import open_backend

    backend, precision = variant.split("-")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, *size), dtype=np.float32) for _ in range(calibrate)]
    if backend == "onnxruntime" and precision == "fp32":
        from imseg.engine.export import export_onnx

        path, report = folder / "m.onnx", export_onnx(model, folder / "m.onnx", size, dynamic=False)
    elif backend == "onnxruntime":
        from imseg.deploy.onnx_int8 import export_onnx_int8

        path, report = folder / "q.onnx", export_onnx_int8(model, folder / "q.onnx", batches, size, dynamic=False)
    elif backend == "openvino":
        from imseg.deploy.openvino_export import export_openvino

        path = folder / f"{precision}.xml"
        int8 = batches if precision == "int8" else None
        report = export_openvino(model, path, size, dynamic=False, int8_batches=int8)
    else:
        from imseg.deploy.executorch_export import export_executorch

        path, report = folder / "m.pte", export_executorch(model, folder / "m.pte", size)
    return open_backend(path, backend, threads=threads), report


def timed(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each entry, the entries interleaved round by round."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    seconds: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            seconds[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in seconds.items()}


def eager_call(model: torch.nn.Module, size: tuple[int, int]) -> Callable[[], Any]:
    x = torch.randn(1, 3, *size)

    def run() -> Any:
        with torch.no_grad():
            return model(x)

    return run


def bench_model(key: str, variants: list[str], size: tuple[int, int], repeats: int, warmup: int,
                calibrate: int, with_peer: bool, threads: int | None = None) -> dict[str, Any]:
    label, spec, peer, build_peer = MODELS[key]
    torch.manual_seed(0)
    ours = build_ours(spec, size)
    calls: dict[str, Callable[[], Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="imseg-bench-deploy-") as tmp:
        for variant in variants:
            if variant == "torch-fp32":  # the parameter counts show the peer is the same network
                calls[variant], rows[variant] = eager_call(ours, size), {"size": list(size),
                                                                         "parameters": _parameters(ours)}
                continue
            try:
                folder = Path(tmp) / variant
                folder.mkdir()
                backend, report = export_variant(ours, variant, folder, size, calibrate, threads)
            except Exception as e:  # one runtime failing on one model is a result, not the end of the run
                rows[variant] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
                print(f"  {variant}: export failed: {rows[variant]['error']}", flush=True)
                traceback.print_exc(limit=3)
                continue
            x = np.random.default_rng(1).standard_normal((1, 3, *size), dtype=np.float32)
            calls[variant] = lambda b=backend, x=x: b.logits(x)
            rows[variant] = {"size": list(size), "check": _check_fields(report)}
        if with_peer:
            peer_size = _peer_size(peer, size)
            peer_model = with_batchnorm_statistics(build_peer(), peer_size)
            calls[f"{peer}-eager-fp32"] = eager_call(peer_model, peer_size)
            rows[f"{peer}-eager-fp32"] = {"size": list(peer_size), "parameters": _parameters(peer_model)}
            if peer_size != size:  # imseg at the peer's size too, for a like-for-like ratio
                calls["torch-fp32-at-peer-size"] = eager_call(ours, peer_size)
                rows["torch-fp32-at-peer-size"] = {"size": list(peer_size)}
        for variant, seconds in timed(calls, repeats, warmup).items():
            rows[variant]["seconds"] = seconds
    return {"key": key, "model": label, "imseg": spec, "peer": peer, "variants": rows}


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _peer_size(peer: str, size: tuple[int, int]) -> tuple[int, int]:
    if peer != "smp":
        return size
    return (size[0] // SMP_SIZE_MULTIPLE * SMP_SIZE_MULTIPLE, size[1] // SMP_SIZE_MULTIPLE * SMP_SIZE_MULTIPLE)


def _check_fields(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("relative_difference", "agreement", "agreement_with_fp32", "miou_against_fp32", "ops_outside_xnnpack")
    return {k: report[k] for k in keep if k in report}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calibrate", type=int, default=8, help="random calibration inputs for the int8 variants")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of torch, onnxruntime and OpenVINO "
                   "(default: each runtime's own choice; ExecuTorch's XNNPACK pool is fixed by its build)")
    p.add_argument("--no-peers", action="store_true", help="skip torchvision / SMP")
    p.add_argument("--out", default="benchmarks/results/deploy-latency.json")
    p.add_argument("--plot", default="benchmarks/results/deploy-latency.png", help="PNG ('' for none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (args.size[0], args.size[1])
    print(f"machine: {describe()}", flush=True)
    results = []
    for key in args.models:
        print(f"{MODELS[key][0]}:", flush=True)
        result = bench_model(key, args.variants, size, args.repeats, args.warmup, args.calibrate, not args.no_peers,
                             args.threads)
        for variant, row in result["variants"].items():
            print(f"  {variant:<26} {row.get('seconds', float('nan')) * 1000:8.1f} ms  {row.get('error', '')}",
                  flush=True)
        results.append(result)
    out = {
        "what": f"batch-1 latency (median of {args.repeats} after {args.warmup} warm-up calls, variants "
                f"interleaved), random weights, {K} classes, input {size[0]}x{size[1]} (SMP peers at multiples "
                f"of 32); exports fixed to that size (static shapes let the runtimes plan ahead); OpenVINO "
                f"at f32 inference precision (imseg's setting, for parity)",
        "results": results,
        "machine": machine_info(),
        "versions": versions("onnxruntime", "openvino", "nncf", "executorch", "segmentation_models_pytorch"),
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    if args.plot:
        plot(out, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(out: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = out["results"]
    names = sorted({v for r in results for v, row in r["variants"].items() if "seconds" in row},
                   key=lambda v: (VARIANTS.index(v) if v in VARIANTS else len(VARIANTS), v))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(results), 4.5))
    for j, name in enumerate(names):
        values = [1000 * r["variants"].get(name, {}).get("seconds", float("nan")) for r in results]
        ax.bar([i - 0.4 + (j + 0.5) * width for i in range(len(results))], values, width, label=name)
    ax.set_xticks(range(len(results)), [r["model"] for r in results], rotation=15, ha="right")
    ax.set(ylabel="batch-1 latency (ms)", yscale="log", title="imseg exports by runtime and precision, with peers")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
