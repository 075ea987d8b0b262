"""Fine-tuning controls: a frozen encoder, frozen BatchNorm statistics, a lower encoder learning rate."""
from __future__ import annotations

import json

import pytest
import torch

from imseg.config import ConfigError, OptimConfig, config_from_dict
from imseg.engine.checkpoint import load_checkpoint
from imseg.engine.schedule import build_optimizer, build_scheduler
from imseg.engine.train import train
from imseg.models import create_model
from tests.helpers import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:split 'val' of")  # the tiny folder validates on its own images


def _cfg(root, out_dir, **overrides):
    # LR-ASPP on MobileNetV3-Small: a real encoder with BatchNorm, fast at 64x96.
    return config_from_dict(tiny_config(root, out_dir, **{
        "data.crop_size": [64, 96], "model.name": "lraspp",
        "model.args": {"encoder": "mobilenet_v3_small"}, **overrides}))


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _split(state: dict[str, torch.Tensor]):
    encoder = {k: v for k, v in state.items() if k.startswith("encoder.")}
    return encoder, {k: v for k, v in state.items() if not k.startswith("encoder.")}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_frozen_encoder_stays_bit_identical_then_trains_once_unfrozen(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "run", **{"train.epochs": 3, "train.freeze_encoder_epochs": 2})
    torch.manual_seed(0)
    initial = create_model("lraspp", 11, encoder="mobilenet_v3_small").state_dict()  # the run's seed-0 init
    messages: list[str] = []
    train(cfg, log=messages.append)
    log = "\n".join(messages)
    assert "epoch 1: encoder frozen" in log and "epoch 3: encoder unfrozen" in log and "epoch 2: encoder" not in log
    final_enc, final_dec = _split(_weights(tmp_path / "run" / "checkpoints" / "last.pt"))
    init_enc, init_dec = _split(initial)
    assert not _same(final_dec, init_dec)
    assert not _same(final_enc, init_enc)  # epoch 3 trained it


def test_frozen_epochs_leave_encoder_weights_and_statistics_untouched(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "run", **{"train.epochs": 2, "train.freeze_encoder_epochs": 2})
    torch.manual_seed(0)
    initial = create_model("lraspp", 11, encoder="mobilenet_v3_small").state_dict()
    train(cfg)
    final = _weights(tmp_path / "run" / "checkpoints" / "last.pt")
    enc, dec = _split(final)
    init_enc, init_dec = _split(initial)
    assert _same(enc, init_enc)  # weights and BatchNorm running statistics, bit for bit
    assert not _same(dec, init_dec)
    assert any("running_mean" in k for k in enc)


def test_frozen_bn_statistics_keep_every_running_mean(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "run", **{"train.epochs": 1, "train.freeze_bn_stats": True})
    torch.manual_seed(0)
    initial = create_model("lraspp", 11, encoder="mobilenet_v3_small").state_dict()
    train(cfg)
    final = _weights(tmp_path / "run" / "checkpoints" / "last.pt")
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(final[k], initial[k]) for k in stats)
    scales = [k for k in final if k.endswith(".weight") and final[k].ndim == 1 and k in initial]
    assert any(not torch.equal(final[k], initial[k]) for k in scales)  # the affine parts still learn


def test_the_encoder_learning_rate_multiplier_holds_through_the_schedule():
    model = create_model("lraspp", 3, encoder="mobilenet_v3_small")
    cfg = OptimConfig(name="sgd", lr=0.01, encoder_lr_mult=0.1, warmup_iters=2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, 10, cfg)
    encoder = {id(p) for p in model.encoder.parameters()}
    enc_groups = [g for g in opt.param_groups if any(id(p) in encoder for p in g["params"])]
    dec_groups = [g for g in opt.param_groups if not any(id(p) in encoder for p in g["params"]) and g["params"]]
    assert len(enc_groups) == 2 and dec_groups
    assert sum(len(g["params"]) for g in enc_groups) == len(encoder)  # every encoder tensor, none twice
    for _ in range(5):
        opt.step()
        sched.step()
        for g in enc_groups:
            assert g["lr"] == pytest.approx(0.1 * dec_groups[0]["lr"])


def test_fine_tuning_keys_are_checked(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="optim.encoder_lr_mult"):
        _cfg(tiny_root, tmp_path, **{"optim.encoder_lr_mult": -1})
    with pytest.raises(ConfigError, match="train.freeze_encoder_epochs"):
        _cfg(tiny_root, tmp_path, **{"train.freeze_encoder_epochs": -2})
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "run", **{
        "model.name": "unet_original", "model.args": {"base_channels": 4}, "data.crop_size": [64, 96],
        "train.freeze_encoder_epochs": 1}))
    with pytest.raises(ValueError, match="train.freeze_encoder_epochs=1: model .* has no encoder"):
        train(cfg)


def test_resuming_inside_the_frozen_epochs_gives_the_uninterrupted_weights(tiny_root, tmp_path):
    over = {"train.epochs": 3, "train.freeze_encoder_epochs": 1, "optim.encoder_lr_mult": 0.1}
    train(_cfg(tiny_root, tmp_path / "whole", **over))
    train(_cfg(tiny_root, tmp_path / "parts", **over, **{"train.stop_after": 1}))
    train(_cfg(tiny_root, tmp_path / "parts", **over), resume="auto")
    a = _weights(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert _same(a, b)
    metrics = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m["type"] == "epoch"] == [1, 2, 3]
