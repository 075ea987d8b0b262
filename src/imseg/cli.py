"""The `imseg` command: train, eval, predict, models, plot, demo."""
from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from pathlib import Path

print = functools.partial(print, flush=True)  # noqa: A001 - progress must show when piped to a file


def _eval_data_config(model, path: str, data_root: str | None, config: str | None):
    """The data section for evaluating ``model``: from ``config`` if given, else the one the model file
    carries (the training run's), with ``data_root`` replacing its root."""
    from imseg.config import DataConfig, _build, load_config

    if config is not None:
        data = load_config(config).to_dict()["data"]
    elif model.meta.data is not None:
        data = dict(model.meta.data)
    else:
        raise ValueError(f"{path} carries no data settings (it was exported before imseg stored them); "
                         f"pass --config CONFIG.yaml whose data section names the dataset")
    if data_root is not None:
        data["root"] = data_root
    return _build(DataConfig, data, "data")


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


def default_eval_path(checkpoint: str | Path, split: str) -> Path:
    """``<run>/eval-<split>.json`` for a checkpoint in a run's ``checkpoints/`` folder; beside any other
    checkpoint, named after it (``model-eval-test.json``), so nothing outside its folder is touched."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent / f"eval-{split}.json"
    return path.with_name(f"{path.stem}-eval-{split}.json")


def run_eval(checkpoint: str, split: str, data_root: str | None = None, out: str | None = None,
             batch_size: int = 2, device: str = "auto", progress: bool = True,
             inference_overrides: dict | None = None, boundary: bool = True, calibration: bool = True,
             report: bool = True, worst: int = 5, config: str | None = None) -> dict:
    """Evaluate a checkpoint on a split: JSON scores, and a report folder beside them."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from imseg.data import build_dataset
    from imseg.engine.checkpoint import read_model_file
    from imseg.engine.evaluate import evaluate
    from imseg.engine.predict import model_inference
    from imseg.engine import distributed
    from imseg.metrics import format_table

    model, record = read_model_file(checkpoint)
    data_cfg = _eval_data_config(model, checkpoint, data_root, config)
    ctx = distributed.setup(device)  # under torchrun: one shard of the split per process
    dev = ctx.device
    model.to(dev)
    split_name = {"train": data_cfg.train_split, "val": data_cfg.val_split, "test": data_cfg.test_split}.get(split, split)
    ds = build_dataset(data_cfg, split_name, train=False)
    shard = Subset(ds, range(ctx.rank, len(ds), ctx.world_size)) if ctx.distributed else ds
    loader = DataLoader(shard, batch_size=batch_size, num_workers=data_cfg.num_workers)
    inference = model_inference(model, **(inference_overrides or {}))
    scores = evaluate(
        model, loader, num_classes=ds.num_classes, ignore_index=ds.ignore_index,
        inference=inference, device=dev, class_names=ds.class_names, progress=progress, desc=f"eval {split}",
        boundary=boundary, calibration=calibration, per_image=not ctx.distributed,
    )
    scores["inference"] = {"mode": inference.mode, "eval_size": inference.eval_size, "crop_size": inference.crop_size,
                           "stride": inference.stride, "scales": list(inference.scales), "flip": inference.flip}
    scores.update(checkpoint=str(checkpoint), split=split, model=dict(model.meta.spec), epoch=record.get("epoch"),
                  torch=torch.__version__, command="imseg " + " ".join(sys.argv[1:]))
    out_path = Path(out) if out else default_eval_path(checkpoint, split)
    scores["processes"] = ctx.world_size
    if ctx.is_main:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(scores, indent=2))
        print(format_table(scores))
        print(f"{len(ds)} images in {scores['seconds']:.1f}s; scores written to {out_path}")
        if report:
            from imseg.engine.report import write_report

            folder = out_path.with_name(out_path.stem + "-report")
            print(f"report: {write_report(scores, folder, model=model, dataset=ds, inference=inference, worst=worst)}")
    distributed.teardown(ctx)
    return scores


def cmd_eval(args: argparse.Namespace) -> int:
    scores = run_eval(args.checkpoint, args.split, args.data_root, args.out, args.batch_size, args.device,
                      inference_overrides=_inference_overrides(args), report=not args.no_report, worst=args.worst,
                      boundary=not args.no_boundary, config=args.config)
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
    from imseg.engine.checkpoint import load_model
    from imseg.engine.predict import model_inference, predict_files
    from imseg.engine.runtime import resolve_device

    model = load_model(args.checkpoint, resolve_device(args.device))
    inference = model_inference(model, **_inference_overrides(args))
    failures: list = []
    written = predict_files(model, args.inputs, args.out, alpha=args.alpha, inference=inference,
                            mc_samples=args.mc_samples, failures=failures)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    for path, reason in failures:  # the other images were predicted; the exit status says not all were
        print(f"imseg predict: could not read {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


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
    from imseg.engine.export import export_onnx, export_safetensors

    model = load_model(args.checkpoint)
    out = Path(args.out)
    if args.format == "safetensors":
        print(f"wrote {export_safetensors(model, out)} (load it with imseg.load_model)")
        return 0
    report = export_onnx(model, out, tuple(args.size), dynamic=not args.static, check=not args.no_check)
    print(json.dumps(report, indent=2))
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from imseg.demo import run_demo

    return run_demo(data_root=args.data_root, out_dir=args.out_dir, config=args.config, overrides=args.set or [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imseg", description="Semantic image segmentation: train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config values, e.g. train.epochs=5")
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
    _add_inference_flags(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="write index-PNG masks and colour overlays for images or folders")
    pr.add_argument("checkpoint")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    pr.add_argument("--mc-samples", type=int, default=0,
                    help="Monte-Carlo dropout samples (models with dropout, e.g. bayesian_segnet): "
                         "mask from the mean probabilities, plus <name>_entropy.png uncertainty maps")
    pr.add_argument("--device", default="auto")
    _add_inference_flags(pr)
    pr.set_defaults(func=cmd_predict)

    m = sub.add_parser("models", help="the registered architectures: paper, params, GFLOPs at 360x480")
    m.add_argument("-v", "--verbose", action="store_true", help="also show each model's idea and arguments")
    m.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/models.md)")
    m.add_argument("--names", action="store_true", help="only the names, one per line")
    m.set_defaults(func=cmd_models)

    x = sub.add_parser("export", help="export a checkpoint to ONNX (checked with onnxruntime) or safetensors")
    x.add_argument("checkpoint")
    x.add_argument("--format", choices=["onnx", "safetensors"], default="onnx")
    x.add_argument("--out", required=True, help="output file (.onnx or .safetensors)")
    x.add_argument("--size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"), help="example input size")
    x.add_argument("--static", action="store_true", help="fix H x W to --size instead of dynamic")
    x.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    x.set_defaults(func=cmd_export)

    _add_split_parser(sub)

    pl = sub.add_parser("plot", help="draw loss and mIoU curves of a run folder")
    pl.add_argument("run_dir")
    pl.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    d = sub.add_parser("demo", help="train, evaluate and predict on CamVid in one go (make demo)")
    d.add_argument("--data-root", help="CamVid folder (default: $IMSEG_DATA or ../shared/data/camvid)")
    d.add_argument("--out-dir", default="runs/demo")
    d.add_argument("--config", default=None, help="config to use (default: configs/demo_camvid.yaml)")
    d.add_argument("--set", nargs="+", metavar="KEY=VALUE")
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

    return isinstance(error, (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError, TypeError))


def _resume_hint(args: argparse.Namespace, argv: list[str] | None) -> str:
    """For an interrupted `imseg train`: the command that continues it from its newest checkpoint."""
    if args.command != "train":
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
