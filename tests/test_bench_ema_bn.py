"""benchmarks/ema_bn.py: val scores of the trained weights, the EMA as averaged, and the EMA with recomputed statistics."""
from __future__ import annotations

import json

import pytest
import torch

from imseg.config import config_from_dict
from imseg.engine.train import train
from tests.helpers import load_benchmark, tiny_config


def _run(root, out_dir):
    cfg = config_from_dict(tiny_config(root, out_dir, **{
        "data.crop_size": [64, 96], "model.name": "unet_original", "data.val_split": "train",
        "model.args": {"base_channels": 4, "batch_norm": True}, "train.epochs": 2, "train.ema_decay": 0.9}))
    train(cfg, log=lambda m: None)
    return out_dir / "checkpoints" / "last.pt"


def test_three_scores_per_checkpoint_and_a_clear_line_without_ema(tiny_root, tmp_path):
    bench = load_benchmark("ema_bn")
    last = _run(tiny_root, tmp_path / "run")
    assert bench.main([str(last), "--images", "2", "--threads", "1", "--data-root", str(tiny_root),
                       "--results", str(tmp_path), "--name", "bn"]) == 0
    record = json.loads((tmp_path / "bn.json").read_text())
    (row,) = record["rows"]
    assert row["epoch"] == 2 and row["ema_updates"] == row["step"] > 0 and row["bn_images"] == 2
    for label in ("trained", "ema_averaged_bn", "ema_recomputed_bn"):
        assert 0.0 <= row[label]["val_mIoU"] <= 1.0
    assert record["command"].startswith("python benchmarks/ema_bn.py") and record["machine"]["cpu"]

    state = torch.load(last, weights_only=True)
    del state["ema"]  # as a run without train.ema_decay writes it
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    with pytest.raises(SystemExit, match="no EMA weights in this checkpoint"):
        bench.main([str(plain), "--results", str(tmp_path)])
