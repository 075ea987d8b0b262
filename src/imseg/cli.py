"""The `imseg` command: train, search, eval, predict, models, plot, demo, serve."""
from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from pathlib import Path

print = functools.partial(print, flush=True)  # noqa: A001 - progress must show when piped to a file


def cmd_train(args: argparse.Namespace) -> int:
    from imseg.config import load_config
    from imseg.engine.train import train

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args.nproc, sys.argv[1:])

    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    best = result["best_val_mIoU"]
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result['out_dir']}")
        if best is not None:
            print(f"best val mIoU: {100 * best:.1f}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from imseg.search.config import load_search_config

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ and not args.random:
        return _relaunch_with_torchrun(args.nproc, sys.argv[1:])
    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.out_dir:
        overrides.append(f"search.out_dir={args.out_dir}")
    cfg = load_search_config(args.config, overrides)
    if args.random:
        from imseg.search.decode import genotype_lines, random_architecture, write_architecture

        arch = random_architecture(cfg.space.layers, cfg.space.filter_multiplier, seed=cfg.search.seed)
        written = write_architecture(arch, args.random, about=f"a random architecture of the Auto-DeepLab space "
                                     f"(seed {cfg.search.seed}, L={cfg.space.layers}): uniform cell and path")
        print("\n".join([f"wrote {written}: path {list(arch.path)}", *genotype_lines(arch.genotype)]))
        return 0
    from imseg.search.loop import search

    result = search(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result['out_dir']}")
        if result["found"]:
            print(f"found architecture: {result['found']} (train it with model.name=autodeeplab, "
                  f"model.args.architecture={result['found']})")
    return 0


def _add_search_parser(sub) -> None:
    s = sub.add_parser("search", help="Auto-DeepLab architecture search (cell and network path) on a dataset; "
                                      "writes found.json for model autodeeplab (docs/search.md)")
    s.add_argument("config", help="YAML search config (e.g. configs/search/camvid_cpu.yaml)")
    s.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config values, e.g. search.epochs=4")
    s.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a search from a checkpoint, or 'auto': the newest readable one in the run folder")
    s.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds a search (its checkpoints and logs are deleted)")
    s.add_argument("--nproc", type=int, help="search with N processes on this machine (runs torchrun for you)")
    s.add_argument("--data-root", help="data folder (overrides data.root)")
    s.add_argument("--out-dir", help="run folder (overrides search.out_dir)")
    s.add_argument("--random", metavar="JSON", help="search nothing: write a random architecture of the config's "
                   "space (layers, F; seed search.seed) to JSON, the baseline a found one should beat")
    s.set_defaults(func=cmd_search)


def _inference_overrides(args: argparse.Namespace) -> dict:
    return {"mode": args.mode, "crop_size": args.crop, "stride": args.stride, "scales": args.scales,
            "flip": True if args.flip else None, "window_batch": args.window_batch}


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference (default: the settings stored in the checkpoint)")
    g.add_argument("--mode", choices=["whole", "slide"], help="whole image, or sliding windows")
    g.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), help="sliding-window size")
    g.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), help="sliding-window stride (default 2/3 crop)")
    g.add_argument("--window-batch", type=int, help="windows run at once")
    g.add_argument("--scales", nargs="+", type=float, help="test-time scales, e.g. 0.75 1 1.25")
    g.add_argument("--flip", action="store_true", help="also average the mirrored image")


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino", "executorch"], default="auto",
                   help="runtime for the model file (default auto: by file, .onnx onnxruntime, .xml OpenVINO, "
                        ".pte ExecuTorch, else PyTorch); class names, palette and preprocessing come from the file")


def cmd_eval(args: argparse.Namespace) -> int:
    from imseg.engine.eval_run import run_eval

    scores = run_eval(args.checkpoint, args.split, args.data_root, args.out, args.batch_size, args.device,
                      inference_overrides=_inference_overrides(args), report=not args.no_report, worst=args.worst,
                      boundary=not args.no_boundary, config=args.config, backend=args.backend)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.split} mIoU: {100 * scores['mIoU']:.1f}")
    return 0


def _relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`imseg train ... --nproc N`: the same command under torchrun, N processes on this machine."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "imseg.cli", *rest]
    print("running: " + " ".join(cmd))
    os.execv(sys.executable, cmd)
    return 0  # not reached


def cmd_predict(args: argparse.Namespace) -> int:
    from imseg.deploy import load_runtime_model
    from imseg.engine.predict import model_inference, predict_files
    from imseg.engine.runtime import resolve_device

    model = load_runtime_model(args.checkpoint, args.backend, resolve_device(args.device))
    if args.mc_samples and next(model.parameters(), None) is None:
        raise ValueError(f"--mc-samples samples dropout in PyTorch; {args.checkpoint} runs in another runtime "
                         f"(--backend {args.backend}): give the checkpoint it was exported from")
    rasters, inputs = _raster_inputs(model, args)
    for path in rasters:
        _predict_raster(model, path, args)
    if rasters and not inputs:
        return 0
    inference = model_inference(model, **_inference_overrides(args))
    failures: list = []
    written = predict_files(model, inputs, args.out, alpha=args.alpha, inference=inference,
                            mc_samples=args.mc_samples, failures=failures)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    for path, reason in failures:  # the other images were predicted; the exit status says not all were
        print(f"imseg predict: could not read {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _raster_inputs(model, args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """The GeoTIFF inputs to predict tile by tile (``--raster``, or a model trained on rasters), and the rest."""
    meta = getattr(model, "meta", None)
    raster_model = args.raster or (meta is not None and (meta.data or {}).get("name") == "raster")
    if not raster_model:
        return [], list(args.inputs)
    rasters = [Path(p) for p in args.inputs if Path(p).suffix.lower() in (".tif", ".tiff")]
    return rasters, [p for p in args.inputs if Path(p) not in rasters]


def _predict_raster(model, path: Path, args: argparse.Namespace) -> None:
    from imseg.engine.raster_predict import predict_raster
    from imseg.engine.runtime import model_device

    data = (getattr(model, "meta", None) and model.meta.data) or {}
    tile = args.crop or data.get("crop_size") or (512, 512)
    out = Path(args.out) / f"{path.stem}.tif"
    if out.resolve() == path.resolve():
        raise ValueError(f"the output {out} is the input raster {path}: choose another --out folder")
    written = predict_raster(model, path, out, tile=tile, stride=args.stride, window_batch=args.window_batch or 2,
                             confidence=args.confidence, device=model_device(model))
    print(f"wrote {', '.join(map(str, written))} (the input's CRS, transform and size)")


def _catalogue_rows(size: tuple[int, int]) -> list[tuple[str, str, int, float, str, str]]:
    """(name, paper, year, params, GFLOPs, published, idea) per model: the shipped catalogue at its size
    (no torch import), else the live registry and profiles."""
    from imseg.catalogue import read_catalogue

    shipped = read_catalogue() if tuple(size) == (360, 480) else {}
    if shipped:
        return [(name, r["paper"], r["year"], r["params"], r["gflops"], r["published"], r["summary"])
                for name, r in sorted(shipped.items())]
    from imseg.models.profile import table_profile
    from imseg.models.registry import list_models, model_info

    rows = []
    for name in list_models():
        info, prof = model_info(name), table_profile(name, size)
        rows.append((name, info.paper, info.year, prof.params, prof.gflops, info.published, info.summary))
    return rows


def model_table(markdown: bool = False, size: tuple[int, int] = (360, 480)) -> str:
    """One row per registered model: paper, year, our params and GFLOPs, the paper's numbers."""
    rows = []
    for name, paper, year, params, gflops, published, summary in _catalogue_rows(size):
        first_author = paper.split(",")[0].split(":")[0].strip()
        rows.append((name, f"{first_author} {year}", f"{params / 1e6:.2f}", f"{gflops:.1f}", published or "-",
                     summary))
    head = ("model", "paper", "params (M)", f"GFLOPs {size[0]}x{size[1]}", "published")
    if markdown:
        lines = ["| " + " | ".join(head + ("idea",)) + " |", "|" + "---|" * (len(head) + 1)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head[:4])]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt(head[:4]) + "  published", "-" * (sum(widths) + 8 + 30)]
    lines += [fmt(r[:4]) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    if args.names:
        from imseg.catalogue import read_catalogue

        names = sorted(read_catalogue())
        if not names:
            from imseg.models.registry import list_models

            names = list_models()
        print("\n".join(names))
        return 0
    print(model_table(markdown=args.markdown))
    if args.verbose:
        from imseg.models.registry import list_models, model_arguments, model_info

        for name in list_models():
            info = model_info(name)
            print(f"\n{name}: {info.paper} ({info.year})\n  {info.summary}\n  arguments: {model_arguments(name)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from imseg.engine.checkpoint import load_model
    from imseg.engine.export import export_safetensors

    model = load_model(args.checkpoint)
    out = Path(args.out)
    if args.format == "safetensors":
        print(f"wrote {export_safetensors(model, out)} (load it with imseg.load_model)")
        return 0
    if args.format == "pretrained":
        from imseg.pretrained import save_pretrained

        print(f"wrote {save_pretrained(model, out)}/ (config.json, model.safetensors, README.md; "
              f"load it with imseg.from_pretrained, or upload it with `hf upload OWNER/NAME {out} .`)")
        return 0
    from imseg.deploy.export import ExportOptions, export_deployable

    options = ExportOptions(size=tuple(args.size), dynamic=not args.static, check=not args.no_check, int8=args.int8,
                            calibrate=args.calibrate, calibration_method=args.calibration_method,
                            keep_float=args.keep_float, data_root=args.data_root, config=args.config)
    report = export_deployable(model, args.format, out, args.checkpoint, options)
    print(json.dumps(report, indent=2))
    return 0


def _add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX, OpenVINO IR or ExecuTorch (each run and checked "
                                      "against PyTorch; ONNX and OpenVINO also int8), safetensors, or a model "
                                      "folder in the Hugging Face Hub layout (pretrained); docs/deploy.md")
    x.add_argument("checkpoint")
    x.add_argument("--format", choices=["onnx", "openvino", "executorch", "safetensors", "pretrained"],
                   default="onnx")
    x.add_argument("--out", required=True, help="output file (.onnx, .xml, .pte or .safetensors), or folder "
                                                "(pretrained)")
    x.add_argument("--size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"),
                   help="example input size (ExecuTorch: the program's fixed size)")
    x.add_argument("--static", action="store_true", help="fix H x W to --size instead of dynamic")
    x.add_argument("--no-check", action="store_true", help="skip running the file against eager PyTorch")
    q = x.add_argument_group("int8 (onnx: onnxruntime static QDQ; openvino: NNCF)")
    q.add_argument("--int8", action="store_true", help="quantise weights and activations to int8")
    q.add_argument("--calibrate", type=int, default=32, metavar="N",
                   help="training images to calibrate activation ranges on (default 32)")
    q.add_argument("--calibration-method", choices=["moving-average", "minmax", "entropy", "percentile"],
                   default="moving-average", help="onnx: how activation ranges are chosen (default moving-average; "
                                                  "entropy and percentile hold every activation in memory)")
    q.add_argument("--keep-float", choices=["none", "head", "ends"], default="ends",
                   help="layers left in float: the first convolution and the classifier (ends, default), the "
                        "classifier only (head), or none")
    q.add_argument("--data-root", help="data folder for calibration (default: the one in the model's config)")
    q.add_argument("--config", help="take the calibration data section from this YAML (default: the model file's)")
    x.set_defaults(func=cmd_export)


def cmd_plot(args: argparse.Namespace) -> int:
    from imseg.engine.plots import plot_curves

    print(f"wrote {plot_curves(args.run_dir, args.out)}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from imseg.data.splits import write_split_lists

    written = write_split_lists(args.root, args.image_dir, val=args.val, test=args.test, seed=args.seed)
    for name, path in written.items():
        print(f"{name}: {len(path.read_text().splitlines())} images -> {path}")
    return 0


def _add_split_parser(sub) -> None:
    s = sub.add_parser("split", help="write train/val/test lists for a folder dataset (seeded shuffle)")
    s.add_argument("root", help="data folder holding images/ and masks/")
    s.add_argument("--image-dir", default="images", help="image folder relative to ROOT (default images)")
    s.add_argument("--val", type=float, default=0.15, help="fraction for val (default 0.15)")
    s.add_argument("--test", type=float, default=0.15, help="fraction for test (default 0.15)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_split)


def cmd_check_data(args: argparse.Namespace) -> int:
    from imseg.data.doctor_report import check_data

    report, survey, found = check_data(args.target, image_dir=args.image_dir, mask_dir=args.mask_dir,
                                       mask_prefix=args.mask_prefix, mask_suffix=args.mask_suffix, out=args.out,
                                       write_classes=args.write_classes)
    print(f"{sum(survey.splits.values())} image/mask pairs: " + ", ".join(f"{k} {v}" for k, v in survey.splits.items()))
    print(f"mask encodings: {dict(survey.encodings)}")
    for kind, items in (("error", survey.errors), ("warning", survey.warnings)):
        for line in items[:10]:
            print(f"{kind}: {line}")
        if len(items) > 10:
            print(f"... and {len(items) - 10} more {kind}s (see the report)")
    for key, value in found.items():
        print(f"{key}: {value}")
    print(f"report: {report}")
    return 1 if survey.errors else 0


def _add_check_data_parser(sub) -> None:
    c = sub.add_parser("check-data", help="read every image and mask once and report what is wrong (exit 1 on errors)")
    c.add_argument("target", help="a config file (its data section, every split) or a folder of images and masks")
    c.add_argument("--image-dir", default="images", help="for a folder: image folder in it (default images)")
    c.add_argument("--mask-dir", default="masks", help="for a folder: mask folder in it (default masks)")
    c.add_argument("--mask-prefix", default="", help="for a folder: masks are <prefix><stem><suffix>.png")
    c.add_argument("--mask-suffix", default="", help="for a folder: e.g. _L or _mask")
    c.add_argument("--out", default="check-data-report", help="report folder (default ./check-data-report)")
    c.add_argument("--write-classes", metavar="FILE", help="write a CSV class table of the colours in colour masks")
    c.set_defaults(func=cmd_check_data)


def cmd_serve(args: argparse.Namespace) -> int:
    from imseg.serve import missing_extra

    missing = missing_extra()  # before loading the model: the fix is one pip command
    if missing:
        print(f"imseg serve: error: {missing}", file=sys.stderr)
        return 2
    from imseg.serve.limits import Limits
    from imseg.serve.server import serve

    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
                    queue=args.queue)
    return serve(args.model, host=args.host, port=args.port, samples=args.samples, limits=limits,
                 backend=args.backend, device=args.device, mc_samples=args.mc_samples, threads=args.threads)


def _add_serve_parser(sub) -> None:
    v = sub.add_parser("serve", help="a web page (Gradio) and an HTTP API that segment uploaded images "
                                     "(pip install 'imseg[serve]'; docs/serve.md)")
    v.add_argument("model", help="checkpoint, .safetensors, model folder, or an exported file (.onnx, OpenVINO .xml)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    v.add_argument("--port", type=int, default=7860)
    v.add_argument("--samples", metavar="DIR", help="offer the pictures in DIR as samples on the page")
    v.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino", "executorch"],
                   help="runtime (default: by the file: .onnx onnxruntime, .xml OpenVINO, else PyTorch)")
    v.add_argument("--device", default="auto", help="PyTorch device (default auto)")
    v.add_argument("--threads", type=int, help="intra-op threads of the runtime (default: its own choice)")
    v.add_argument("--mc-samples", type=int, default=8, help="Monte-Carlo dropout passes for the uncertainty map "
                   "of a model with dropout (default 8; 0: no map)")
    v.add_argument("--max-upload-mb", type=float, default=20, help="largest upload in MiB (default 20)")
    v.add_argument("--max-megapixels", type=float, default=12,
                   help="largest width x height in millions of pixels, read from the header before decoding "
                        "(default 12)")
    v.add_argument("--queue", type=int, default=16, help="requests running or waiting at once, page and API "
                   "together; more are refused as busy (default 16)")
    v.set_defaults(func=cmd_serve)


def cmd_demo(args: argparse.Namespace) -> int:
    from imseg.demo import run_demo

    return run_demo(data_root=args.data_root, out_dir=args.out_dir, config=args.config, overrides=args.set or [],
                    scratch=args.scratch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imseg", description="Semantic image segmentation: train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config values, e.g. train.epochs=5")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from a checkpoint, or 'auto': the newest readable one in the run folder")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds a run (its checkpoints and logs are deleted)")
    t.add_argument("--nproc", type=int, help="train with N processes on this machine (runs torchrun for you)")
    t.add_argument("--data-root", help="data folder (overrides data.root)")
    t.add_argument("--out-dir", help="run folder (overrides train.out_dir)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on a split; prints a per-class table, writes JSON")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="test", help="val, test, train or a split name (default test)")
    e.add_argument("--data-root", help="data folder (default: the one in the checkpoint's config)")
    e.add_argument("--config", help="take the data section from this YAML (default: the one stored in the model file)")
    e.add_argument("--out", help="JSON file to write (default: eval-<split>.json in the run folder)")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-report", action="store_true", help="skip the Markdown report and plots")
    e.add_argument("--no-boundary", action="store_true", help="skip boundary F1 (the slowest metric)")
    e.add_argument("--worst", type=int, default=5, help="images in the report's gallery of worst images")
    _add_backend_flag(e)
    _add_inference_flags(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="write index-PNG masks and colour overlays for images or folders")
    pr.add_argument("checkpoint", help="checkpoint, .safetensors, model folder, or an exported .onnx / .xml / .pte")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    pr.add_argument("--mc-samples", type=int, default=0,
                    help="Monte-Carlo dropout samples (models with dropout, e.g. bayesian_segnet): "
                         "mask from the mean probabilities, plus <name>_entropy.png uncertainty maps")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--raster", action="store_true",
                    help="predict .tif inputs tile by tile into GeoTIFFs (automatic for models trained on rasters)")
    pr.add_argument("--confidence", action="store_true",
                    help="rasters: also write <name>_confidence.tif (top probability, entropy)")
    _add_backend_flag(pr)
    _add_inference_flags(pr)
    pr.set_defaults(func=cmd_predict)

    m = sub.add_parser("models", help="the registered architectures: paper, params, GFLOPs at 360x480")
    m.add_argument("-v", "--verbose", action="store_true", help="also show each model's idea and arguments")
    m.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/models.md)")
    m.add_argument("--names", action="store_true", help="only the names, one per line")
    m.set_defaults(func=cmd_models)

    for add_parser in (_add_export_parser, _add_search_parser, _add_split_parser, _add_check_data_parser,
                       _add_serve_parser):
        add_parser(sub)

    pl = sub.add_parser("plot", help="draw loss and mIoU curves of a run folder")
    pl.add_argument("run_dir")
    pl.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    d = sub.add_parser("demo", help="train, evaluate and predict on CamVid in one go (make demo)")
    d.add_argument("--data-root", help="CamVid folder (default: $IMSEG_DATA or ../shared/data/camvid)")
    d.add_argument("--out-dir", default="runs/demo")
    d.add_argument("--config", default=None, help="config to use (default: configs/demo_camvid_pretrained.yaml "
                   "when the [weights] extra is installed, else configs/demo_camvid.yaml)")
    d.add_argument("--scratch", action="store_true", help="train from random weights even when the [weights] "
                   "extra is installed (configs/demo_camvid.yaml)")
    d.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: `imseg --help` answers at once
    if os.environ.get("IMSEG_DEBUG"):
        return args.func(args)  # full tracebacks for developers
    try:
        return args.func(args)
    except Exception as e:
        if not _user_error(e):
            raise
        # Errors a user can fix get one clear line, not a traceback.
        print(f"imseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imseg {args.command}: interrupted{_resume_hint(args, argv)}", file=sys.stderr)
        return 130


def _user_error(error: Exception) -> bool:
    """An error the user can fix from its message (imported here: `imseg models` must not load torch)."""
    from imseg.config import ConfigError
    from imseg.data import DataError
    from imseg.engine.checkpoint import CheckpointError
    from imseg.extras import MissingExtraError

    return isinstance(error, (ConfigError, DataError, CheckpointError, MissingExtraError, FileNotFoundError,
                              ValueError, TypeError))


def _resume_hint(args: argparse.Namespace, argv: list[str] | None) -> str:
    """For an interrupted `imseg train`: the command that continues it from its newest checkpoint."""
    if args.command not in ("train", "search"):
        return ""
    words, skip = [], False
    for word in (sys.argv[1:] if argv is None else [str(a) for a in argv]):
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif word != "--overwrite" and not word.startswith("--resume="):
            words.append(word)
    return "; continue from the newest checkpoint with: " + shlex.join(["imseg", *words, "--resume", "auto"])


if __name__ == "__main__":
    sys.exit(main())
