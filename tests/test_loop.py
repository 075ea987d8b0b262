"""The training loop's features: early stopping, EMA weights, non-finite steps, closing its logs; and its shape."""
from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import imseg.engine.loop as loop_module
import imseg.engine.train as train_module
from imseg.config import config_from_dict
from imseg.engine.checkpoint import load_checkpoint
from imseg.data import build_dataset
from imseg.engine.checkpoint import model_from_checkpoint
from imseg.engine.ema import build_ema, spread_subset, warmed_up_decay, with_recomputed_bn
from imseg.engine.train import train
from tests.helpers import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:split 'val' of")  # the tiny folder validates on its own images


def _cfg(root, out_dir, **overrides):
    # A small U-Net with BatchNorm (buffers the EMA averages too) and dropout (RNG draws a resume must repeat).
    return config_from_dict(tiny_config(root, out_dir, **{
        "data.crop_size": [64, 96], "model.name": "unet_original",
        "model.args": {"base_channels": 4, "batch_norm": True, "dropout": 0.5}, **overrides}))


def _scripted_validation(monkeypatch, mious):
    """Validation returning ``mious`` in turn; it keeps a copy of the weights it was given to score."""
    seen, values = [], iter(mious)

    def fake_evaluate(model, loader, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"mIoU": next(values), "pixel_accuracy": 0.5, "mean_class_accuracy": 0.5, "seconds": 0.0}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    return seen


def _epochs_logged(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e["epoch"] for e in map(json.loads, lines) if e["type"] == "epoch"]


# ------------------------------------------------------------------ early stopping


@pytest.mark.parametrize("val_every, mious, patience, stops_after, best_epoch", [
    (1, [0.1, 0.3, 0.2, 0.3, 0.9, 0.9], 2, 4, 2),  # 0.3 again is no new best: rounds 3 and 4 count
    (2, [0.3, 0.2, 0.9], 1, 4, 2),  # patience counts validation rounds, not epochs
])
def test_early_stopping_stops_at_the_right_epoch_and_says_why(tiny_root, tmp_path, monkeypatch, val_every, mious,
                                                              patience, stops_after, best_epoch):
    _scripted_validation(monkeypatch, mious)
    cfg = _cfg(tiny_root, tmp_path / "run", **{"train.epochs": 8, "train.early_stop": patience,
                                               "train.val_every": val_every})
    logged = []
    summary = train(cfg, log=logged.append)
    assert summary["stopped_early"] and summary["best_val_mIoU"] == 0.3
    reason = f"(best val mIoU 30.0 at epoch {best_epoch}; train.early_stop={patience})"
    assert reason in summary["stop_reason"] and logged[-1] == summary["stop_reason"]
    assert _epochs_logged(tmp_path / "run") == list(range(1, stops_after + 1))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == stops_after  # a normal end
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == best_epoch

    # Resuming a run that stopped early trains no further.
    logged.clear()
    again = train(cfg, resume="auto", log=logged.append)
    assert again["stopped_early"] and logged[-1] == summary["stop_reason"]
    assert _epochs_logged(tmp_path / "run") == list(range(1, stops_after + 1))


def test_without_early_stop_the_same_scores_run_every_epoch(tiny_root, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.1, 0.3, 0.2, 0.3, 0.1])
    summary = train(_cfg(tiny_root, tmp_path / "run", **{"train.epochs": 5}), log=lambda m: None)
    assert not summary["stopped_early"] and summary["stop_reason"] is None
    assert _epochs_logged(tmp_path / "run") == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ EMA


def _ema_cfg(root, out_dir, **overrides):
    # Batch 1 of 2 images: 2 steps an epoch; step-*.pt after steps 1, 3 and 5 are mid-epoch resume points.
    cfg = _cfg(root, out_dir, **{"train.epochs": 3, "train.ema_decay": 0.5, "data.val_split": "",
                                 "train.checkpoint_every_steps": 1, "train.keep_checkpoints": 10, **overrides})
    cfg.data.batch_size = 1
    return cfg


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("warmup", [None, 2], ids=["fixed-decay", "warmed-up"])
def test_ema_resume_is_bit_exact_at_an_epoch_end_and_mid_epoch(tiny_root, tmp_path, warmup):
    def cfg(out_dir, **overrides):
        return _ema_cfg(tiny_root, tmp_path / out_dir, **{"train.ema_warmup_steps": warmup, **overrides})

    train(cfg("straight"), log=lambda m: None)
    train(cfg("split", **{"train.stop_after": 1}), log=lambda m: None)
    train(cfg("split"), resume="auto", log=lambda m: None)
    mid_epoch = tmp_path / "straight" / "checkpoints" / "step-00000003.pt"
    assert load_checkpoint(mid_epoch)["batch_in_epoch"] == 1
    train(cfg("mid"), resume=mid_epoch, log=lambda m: None)

    reference = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert int(reference["ema"]["n_averaged"]) == reference["global_step"] == 6
    for other in ("split", "mid"):
        state = load_checkpoint(tmp_path / other / "checkpoints" / "last.pt")
        _assert_same_tensors(state["state_dict"], reference["state_dict"])
        _assert_same_tensors(state["ema"], reference["ema"])


@pytest.mark.parametrize("warmup", [None, 3.0])
def test_the_ema_follows_its_recursion_with_and_without_the_warm_up(warmup):
    # BatchNorm brings an integer buffer (num_batches_tracked), which torch's update blends apart from the floats
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(model, 0.9, warmup)
    expected = fixed = 1.0
    for n in range(6):  # the n-th update sees n_averaged == n; the first one copies
        with torch.no_grad():
            model[0].weight.fill_(float(n + 1))
        ema.update_parameters(model)
        if n:
            decay = 0.9 if warmup is None else warmed_up_decay(0.9, warmup, n)
            expected, fixed = decay * expected + (1 - decay) * (n + 1), 0.9 * fixed + 0.1 * (n + 1)
        assert ema.module[0].weight.flatten().tolist() == pytest.approx([expected] * 4, rel=1e-6)
    if warmup is not None:  # the warmed-up average sits nearer the current weights (6) than the fixed one
        assert fixed < expected < 6


def test_warmed_up_decay_rises_to_the_set_decay():
    ramp = [warmed_up_decay(0.999, 2000, n) for n in (1, 2000, 10000, 50000)]
    assert ramp == sorted(ramp) and ramp[0] < 0.001 and ramp[1] == pytest.approx(0.999 * (1 - 1 / math.e))
    assert 0.99 < ramp[-1] < 0.999


def test_recomputed_bn_statistics_are_the_images_own_and_leave_the_average_alone():
    module = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 1))
    images = [torch.rand(2, 3, 4, 5) * 10, torch.rand(2, 3, 4, 5)]
    loader = [(images[0], None), ([images[1][0], images[1][1]], None)]  # a stacked batch, then a list of two
    before = {k: v.clone() for k, v in module.state_dict().items()}
    copy = with_recomputed_bn(module, loader, lambda x: x - 1, torch.device("cpu"), None)
    # the cumulative average weighs the three forward passes' batch means (2 images, then 1 and 1) equally
    means = [(images[0] - 1).mean((0, 2, 3)), (images[1][0] - 1).mean((1, 2)), (images[1][1] - 1).mean((1, 2))]
    assert torch.allclose(copy[0].running_mean, sum(means) / 3, atol=1e-5)
    assert not copy.training and copy[0].momentum == module[0].momentum
    _assert_same_tensors(module.state_dict(), before)


def test_spread_subset_takes_evenly_spaced_samples():
    assert list(spread_subset(list(range(10)), 4).indices) == [0, 2, 5, 7]
    assert list(spread_subset(list(range(3)), 5).indices) == [0, 1, 2]


@pytest.mark.parametrize("workers, cached", [(0, True), (1, False)])
def test_the_bn_recompute_images_share_the_training_data_cache_setting(tiny_root, tmp_path, workers, cached):
    # each validation re-reads these images: with data.cache (the default without workers) they are decoded once
    from imseg.engine.distributed import Context
    from imseg.engine.run_setup import build_run

    cfg = _ema_cfg(tiny_root, tmp_path / "run", **{"train.ema_bn_images": 2, "data.num_workers": workers})
    run = build_run(cfg, Context(), log=lambda m: None)
    assert len(run.bn_loader.dataset) == 2
    assert run.bn_loader.dataset.dataset.cache_samples is cached and run.train_ds.cache_samples is cached


def test_validation_and_best_pt_use_the_ema_with_recomputed_bn_statistics(tiny_root, tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [0.1, 0.2, 0.3] * 2)
    cfg = _ema_cfg(tiny_root, tmp_path / "run", **{"data.val_split": "train", "train.ema_bn_images": 2})
    train(cfg, log=lambda m: None)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    _assert_same_tensors(seen[-1], best["state_dict"])
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k != "n_averaged"}
    stats = [k for k in averaged if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(best["state_dict"][k], averaged[k]) for k in stats)
    for key in set(averaged) - set(stats) - {k for k in averaged if k.endswith("num_batches_tracked")}:
        assert torch.equal(best["state_dict"][key], averaged[key]), key  # the weights are the average's
    # and the statistics are the training images' own under the averaged weights
    model = model_from_checkpoint(best)
    model.load_state_dict(averaged)
    images = spread_subset(build_dataset(cfg.data, cfg.data.train_split, train=False), 2)
    again = with_recomputed_bn(model, DataLoader(images, batch_size=1), model.meta.preprocessing,
                               torch.device("cpu"), None)
    for key in stats:
        assert torch.allclose(again.state_dict()[key], best["state_dict"][key], atol=1e-6), key
    # The recomputation draws nothing from training's RNG (the model has dropout): the same trained weights.
    train(_ema_cfg(tiny_root, tmp_path / "plain", **{"data.val_split": "train"}), log=lambda m: None)
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")
    _assert_same_tensors(plain["state_dict"], last["state_dict"])
    _assert_same_tensors(plain["ema"], last["ema"])


def test_ema_weights_are_validated_and_kept_as_best_pt(tiny_root, tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [0.1, 0.2, 0.3])
    train(_ema_cfg(tiny_root, tmp_path / "run", **{"data.val_split": "train"}), log=lambda m: None)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k != "n_averaged"}
    _assert_same_tensors(seen[-1], averaged)  # validation scored the EMA weights
    _assert_same_tensors(best["state_dict"], averaged)  # and best.pt holds them, for eval, predict, export
    assert "ema" not in best and "optimizer" not in best
    trained = last["state_dict"]
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained if k.endswith("weight"))
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained if k.endswith("running_mean"))


# ------------------------------------------------------------------ non-finite steps, closing the logs


def test_a_nonfinite_loss_skips_its_whole_accumulation_window(tiny_root, tmp_path, monkeypatch):
    real, calls = loop_module.forward_loss, []

    def nan_on_second_batch(run, images, masks):
        calls.append(1)
        loss = real(run, images, masks)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(loop_module, "forward_loss", nan_on_second_batch)
    cfg = _cfg(tiny_root, tmp_path / "run", **{"train.epochs": 2, "train.grad_accum": 2, "data.val_split": "",
                                               "train.on_nonfinite": "skip"})
    cfg.data.batch_size = 1  # 2 batches an epoch: one window of 2
    logged = []
    train(cfg, log=logged.append)
    assert any(line.startswith("skipping epoch 1, batch 1, optimiser step 1: non-finite loss nan") for line in logged)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["global_step"] == 1 and state["scheduler"]["last_epoch"] == 1


def _open_files() -> list[str]:
    fds = Path("/proc/self/fd")
    return [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()] if fds.is_dir() else []


def test_ctrl_c_propagates_and_the_logs_are_closed(tiny_root, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_root, tmp_path / "run", **{"train.epochs": 2}), log=lambda m: None)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not [f for f in _open_files() if str(tmp_path / "run") in f]


# ------------------------------------------------------------------ shape


def test_no_engine_function_is_over_80_lines():
    engine = Path(__file__).resolve().parents[1] / "src" / "imseg" / "engine"
    long = []
    for path in sorted(engine.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long
