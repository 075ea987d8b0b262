"""`imseg eval` as a function: a model file and a split in, scores JSON and a report folder out.

The CLI, the demo and the benchmark scripts all call `run_eval`; the
scoring itself is `imseg.engine.evaluate.evaluate`.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from imseg.config import DataConfig, data_config, load_config
from imseg.data import build_dataset
from imseg.data.collate import collate_pairs
from imseg.engine import distributed
from imseg.engine.checkpoint import read_model_file
from imseg.engine.evaluate import evaluate
from imseg.engine.predict import model_inference
from imseg.metrics import format_table

print = functools.partial(print, flush=True)  # noqa: A001 - progress must show when piped to a file


def default_eval_path(checkpoint: str | Path, split: str) -> Path:
    """``<run>/eval-<split>.json`` for a checkpoint in a run's ``checkpoints/`` folder; beside any other
    model file, named after it (``model-eval-test.json``), so nothing outside its folder is touched."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent / f"eval-{split}.json"
    return path.with_name(f"{path.stem}-eval-{split}.json")


def eval_data_config(model: nn.Module, path: str | Path, data_root: str | None = None,
                     config: str | None = None) -> DataConfig:
    """The data section for evaluating ``model``: from ``config`` if given, else the one its model file
    carries (the training run's), with ``data_root`` replacing its root."""
    if config is not None:
        data = load_config(config).to_dict()["data"]
    elif model.meta.data is not None:
        data = dict(model.meta.data)
    else:
        raise ValueError(f"{path} carries no data settings (it was exported before imseg stored them); "
                         f"pass --config CONFIG.yaml whose data section names the dataset")
    if data_root is not None:
        data["root"] = str(data_root)
    return data_config(data)


def run_eval(checkpoint: str | Path, split: str, data_root: str | None = None, out: str | None = None,
             batch_size: int = 2, device: str = "auto", progress: bool = True,
             inference_overrides: dict | None = None, boundary: bool = True, calibration: bool = True,
             report: bool = True, worst: int = 5, config: str | None = None, backend: str = "auto") -> dict[str, Any]:
    """Evaluate a checkpoint, exported ``.safetensors`` or deployed file (``.onnx``, ``.xml``, ``.pte``, run by
    ``backend``: see `imseg.deploy.open_backend`) on a split: JSON scores, and a report folder beside them.
    Under torchrun each process scores one shard of the split and the sums are reduced."""
    model, record = _read_model(checkpoint, backend)
    data_cfg = eval_data_config(model, checkpoint, data_root, config)
    ctx = distributed.setup(device)
    try:
        model.to(ctx.device)
        split_name = {"train": data_cfg.train_split, "val": data_cfg.val_split,
                      "test": data_cfg.test_split}.get(split, split)
        ds = build_dataset(data_cfg, split_name, train=False)
        shard = Subset(ds, range(ctx.rank, len(ds), ctx.world_size)) if ctx.distributed else ds
        loader = DataLoader(shard, batch_size=batch_size, num_workers=data_cfg.num_workers, collate_fn=collate_pairs)
        inference = model_inference(model, **(inference_overrides or {}))
        scores = evaluate(
            model, loader, num_classes=ds.num_classes, ignore_index=ds.ignore_index,
            inference=inference, device=ctx.device, class_names=ds.class_names, progress=progress,
            desc=f"eval {split}", boundary=boundary, calibration=calibration, per_image=not ctx.distributed,
        )
        scores["inference"] = {"mode": inference.mode, "eval_size": inference.eval_size,
                               "crop_size": inference.crop_size, "stride": inference.stride,
                               "scales": list(inference.scales), "flip": inference.flip}
        scores.update(checkpoint=str(checkpoint), backend=record.get("backend", "torch"), split=split,
                      model=dict(model.meta.spec),
                      epoch=record.get("epoch"), torch=torch.__version__, processes=ctx.world_size,
                      command="imseg " + " ".join(sys.argv[1:]))
        if ctx.is_main:
            _write(scores, Path(out) if out else default_eval_path(checkpoint, split), report,
                   model=model, dataset=ds, inference=inference, worst=worst)
    finally:
        distributed.teardown(ctx)
    return scores


def _read_model(path: str | Path, backend: str) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its training record: a PyTorch file as always, any other runtime behind `imseg.deploy`."""
    from imseg.deploy.backends import resolve_backend_name

    name = resolve_backend_name(Path(path), backend)
    if name == "torch":
        return read_model_file(path)
    from imseg.deploy import backend_model, open_backend

    return backend_model(open_backend(path, name)), {"backend": name}


def _write(scores: dict[str, Any], out_path: Path, report: bool, **report_inputs: Any) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(scores, indent=2))
    print(format_table(scores))
    print(f"{len(report_inputs['dataset'])} images in {scores['seconds']:.1f}s; scores written to {out_path}")
    if report:
        from imseg.engine.report import write_report  # matplotlib: only when a report is asked for

        folder = out_path.with_name(out_path.stem + "-report")
        print(f"report: {write_report(scores, folder, **report_inputs)}")
