"""The zoo's ``norm`` choice (imseg/models/norm.py) and batch size 1 in the training engine.

Every registered model trains a step at batch 1 with norm="group" (tests/test_models.py); here: what
each choice does to the layers, that it travels in the spec and the config, and that training at
batch 1 with BatchNorm after a global pooling fails before the first step, in one line naming the fix.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, GroupNormAct
from torch import nn

from imseg.config import ConfigError, config_from_dict
from imseg.engine.checkpoint import load_model
from imseg.engine.norm_check import batch_norm_sees_one_value
from imseg.engine.train import train
from imseg.models import create_model, model_arguments
from imseg.models.norm import group_count
from tests.helpers import tiny_config


def _quiet(msg: str) -> None:
    pass


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("channels, groups", [(256, 32), (48, 16), (18, 2), (32, 16), (16, 8), (2, 1), (1, 1)])
def test_group_count_divides_and_keeps_two_channels_per_group(channels: int, groups: int) -> None:
    assert group_count(channels) == groups


def test_group_norm_replaces_every_batch_norm_keeping_eps_affine_and_timm_activations() -> None:
    torch.manual_seed(0)
    reference = create_model("unet", 3, encoder="efficientnet_lite0")  # timm encoder: BatchNormAct2d with ReLU6
    fused = [m for m in reference.modules() if isinstance(m, BatchNormAct2d)]
    assert fused and all(m.eps == 1e-3 for m in fused)
    torch.manual_seed(0)
    model = create_model("unet", 3, encoder="efficientnet_lite0", norm="group")
    assert not _batch_norms(model)
    converted = [m for m in model.modules() if isinstance(m, GroupNormAct)]
    assert len(converted) == len(fused)
    assert all(isinstance(g.act, type(b.act)) and g.eps == b.eps for g, b in zip(converted, fused))
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_channels % m.num_groups == 0 for m in groups)
    assert model.imseg_spec["kwargs"]["norm"] == "group"
    assert "norm" not in reference.imseg_spec["kwargs"]  # "batch" is left out: older specs stay equal
    assert model_arguments("unet")["norm"] == "batch"


def test_frozen_batch_norm_keeps_its_statistics_and_learns_its_affine() -> None:
    model = create_model("pspnet", 3, encoder="resnet18", norm="frozen_batch").train()
    bns = _batch_norms(model)
    assert bns and not any(bn.training for bn in bns) and model.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x, target = torch.randn(1, 3, 64, 96), torch.randint(0, 3, (1, 64, 96))
    F.cross_entropy(model(x), target).backward()  # batch 1 through the 1x1 pyramid bin: fine
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(bn.weight.grad is not None for bn in bns)
    model.eval().train()
    assert not any(bn.training for bn in bns)
    assert set(model.state_dict()) == set(create_model("pspnet", 3, encoder="resnet18").state_dict())


def test_bad_norm_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="norm must be one of 'batch', 'group', 'frozen_batch', got 'layer'"):
        create_model("unet", 3, norm="layer")
    with pytest.raises(ConfigError, match="model.args.norm: expected one of"):
        config_from_dict({"model": {"name": "unet", "args": {"norm": "instance"}}})
    assert config_from_dict({"model": {"name": "pspnet", "args": {"norm": "group"}}}).model.args == {"norm": "group"}


def test_the_probe_finds_batch_norm_after_global_pooling_only() -> None:
    assert batch_norm_sees_one_value(create_model("pspnet", 3, encoder="resnet18"), (64, 96))
    assert not batch_norm_sees_one_value(create_model("unet", 3, encoder="resnet18"), (64, 96))
    # A crop small enough to shrink the deepest map to 1x1 puts any BatchNorm there at one value.
    assert batch_norm_sees_one_value(create_model("unet", 3, encoder="resnet18"), (32, 32))


def test_batch_one_with_batch_norm_fails_before_the_first_step(tiny_root, tmp_path) -> None:
    raw = tiny_config(tiny_root, tmp_path / "run", **{"data.batch_size": 1, "data.crop_size": [64, 96],
                                                      "train.epochs": 1, "data.val_split": ""})
    raw["model"] = {"name": "pspnet", "args": {"encoder": "resnet18"}}
    with pytest.raises(ValueError) as caught:
        train(config_from_dict(raw), log=_quiet)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("batch size 1 with BatchNorm")
    assert "set model.args.norm=group or frozen_batch" in message
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written

    for norm in ("group", "frozen_batch"):
        raw["model"]["args"]["norm"] = norm
        raw["train"]["out_dir"] = str(tmp_path / norm)
        train(config_from_dict(raw), log=_quiet)
        # The checkpoint's spec carries the choice: the model comes back with the same layers.
        model = load_model(tmp_path / norm / "checkpoints" / "last.pt")
        assert model.imseg_spec["kwargs"]["norm"] == norm
        assert bool(_batch_norms(model)) == (norm == "frozen_batch") and model.frozen_batch_norm == (norm != "group")
