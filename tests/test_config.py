from pathlib import Path

import pytest

from imseg.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    import imseg

    import torch

    cfg = load_config(path)
    assert cfg.model.name in imseg.list_models()
    with torch.device("meta"):  # shapes only: the arguments fit the builder, no memory spent
        imseg.create_model(cfg.model.name, 11, **cfg.model.args)


# FCN-8s and DeconvNet (134M and 252M parameters) write two checkpoints of
# 1-2 GB each: they train in the slow suite. In the default suite their
# configs still load and build (above), and their models' forward/backward
# contract runs in tests/test_models.py.
# RefineNet-ResNet-101 at 96x128 takes 17 s; its model runs in tests/test_zoo_context.py too.
HEAVY_CONFIGS = {"camvid_fcn8s.yaml", "camvid_deconvnet.yaml", "camvid_refinenet.yaml"}


def _lighter_model(path) -> list[str]:
    """Overrides that train a config's recipe (data, loss, optimiser, schedule, training flags) on a lighter
    network of the same architecture: ResNet-18 for a ResNet-50/101 encoder, a quarter of the original U-Net's
    width. A ResNet-101 config took 10-19 s of the two-worker suite, most of it writing 60M parameters and their
    optimiser state to two checkpoints; the architectures train steps in tests/test_models.py, and the
    config's own arguments build its full model above."""
    model = load_config(path).model
    if model.args.get("encoder") in ("resnet50", "resnet101"):
        return ["model.args.encoder=resnet18"]
    if model.name == "unet_original":
        return ["model.args.base_channels=16"]
    return []


@pytest.fixture(scope="module")
def tiny_root(camvid_root, tmp_path_factory):
    from tests.helpers import tiny_camvid_folder

    return tiny_camvid_folder(camvid_root, tmp_path_factory.mktemp("tiny"), n=2, size=(96, 128))


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.name in HEAVY_CONFIGS else p
                                  for p in CONFIGS], ids=lambda p: p.name)
def test_every_shipped_config_trains_through_imseg_train(path, tiny_root, tmp_path):
    """One epoch of each family's config through ``imseg train`` (in this process: a subprocess per config
    cost 5-8 s of start-up each; tests/test_cli.py runs the command as a subprocess), on 2 tiny CamVid images
    (the data part is overridden)."""
    import json

    from tests.helpers import run_cli, tiny_config

    tiny = tiny_config(tiny_root, tmp_path / "run")
    overrides = [f"data.{k}={json.dumps(v)}" for k, v in tiny["data"].items()]  # JSON is YAML
    # train.max_steps=null: an iteration-based recipe (ADE20K's 160k steps) would otherwise outlast the one epoch.
    code, out, err = run_cli("train", path, "--out-dir", tmp_path / "run", "--set", *overrides, *_lighter_model(path),
                             "train.epochs=1", "train.max_steps=null", "train.time_budget_minutes=null",
                             "train.progress=false", "train.checkpoint_every_steps=0")
    assert code == 0, err
    assert "best val mIoU" in out
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string; users write learning rates that way."""
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-4\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 5e-4
    assert isinstance(cfg.optim.lr, float)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=5", "optim.lr=0.1", "data.crop_size=[64,96]", "model.args={encoder: resnet18}"])
    assert cfg.train.epochs == 5 and cfg.optim.lr == 0.1
    assert cfg.data.crop_size == [64, 96] and cfg.model.args == {"encoder": "resnet18"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "unknown config key 'train.epochz'"),
        ("train.epochs=five", "train.epochs: expected int, got 'five'"),
        ("optim.name=adam", "optim.name: expected one of"),
        ("data.crop_size=[64,x]", r"data.crop_size\[1\]: expected int"),
        ("train.amp=yes", "train.amp"),
        ("oops", "must look like key.sub=value"),
        # Numbers outside their range fail when the config loads, not as a ZeroDivisionError later.
        ("data.batch_size=-2", r"data.batch_size: expected a number >= 1, got -2"),
        ("data.batch_size=0", r"data.batch_size: expected a number >= 1, got 0"),
        ("train.epochs=0", r"train.epochs: expected a number >= 1, got 0"),
        ("train.val_every=0", r"train.val_every: expected a number >= 1"),
        ("train.save_every=0", r"train.save_every: expected a number >= 1"),
        ("train.log_every=0", r"train.log_every: expected a number >= 1"),
        ("train.grad_accum=0", r"train.grad_accum: expected a number >= 1"),
        ("optim.lr=0", r"optim.lr: expected a number > 0, got 0.0"),
        ("train.bn_momentum=1.5", r"train.bn_momentum: expected a number in \(0, 1\]"),
        ("data.crop_size=[0,96]", r"data.crop_size\[0\]: expected a number >= 1, got 0"),
        ("data.scale_range=[2.0,1.0]", r"data.scale_range: expected \[low, high\] with low <= high"),
        ("optim.lr=1e-x", r"optim.lr: expected float, got '1e-x'"),
        ("optim.lr=nan", r"optim.lr: expected float, got 'nan'"),
        ("train.max_steps=0", r"train.max_steps: expected a number >= 1, got 0"),
        ("train.early_stop=0", r"train.early_stop: expected a number >= 1, got 0"),
        ("train.ema_decay=1", r"train.ema_decay: expected a number in \(0, 1\), got 1.0"),
        ("loss.class_weights=inverse", r"loss.class_weights: expected .*'median_frequency'.*, got 'inverse'"),
        # model.args against the builder's signature and annotations (unet's by default).
        ("model.args={output_stride: '16'}", r"model.args.output_stride: expected int, got '16'"),
        ("model.args={decoder_channels: [64, x]}", r"model.args.decoder_channels\[1\]: expected int, got 'x'"),
        ("model.args={upsample: cubic}", r"model.args.upsample: expected one of \['nearest', 'bilinear'\]"),
        ("model.args={encoder_weights: 3}", r"model.args.encoder_weights: expected str \| None, got 3"),
        ("model.args={outptu_stride: 16}", r"unknown config key 'model.args.outptu_stride'; model 'unet' accepts: "
                                           r"decoder_channels, encoder, .*output_stride"),
        ("model.name=unet3", r"model.name: unknown model 'unet3'; choose one of: .*unet"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: [\n")
    with pytest.raises(ConfigError, match=str(p)):
        load_config(p)
    p.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=f"'train.lr'.*{p.name}"):
        load_config(p)


def test_a_typed_model_args_error_names_the_key_and_the_file_before_anything_runs(tmp_path):
    import re

    path = tmp_path / "c.yaml"
    path.write_text('model:\n  name: deeplabv3plus\n  args:\n    output_stride: "16"\n')
    with pytest.raises(ConfigError, match="^" + re.escape(f"model.args.output_stride: expected int, got '16' in {path}")):
        load_config(path)


def test_model_args_take_ints_for_floats_lists_for_tuples_and_none_where_optional():
    cfg = load_config(None, ["model.name=deeplabv3", "model.args={multi_grid: [1, 2, 4], aspp_rates: null, "
                                                     "aux_stride: 8}"])
    assert cfg.model.args == {"multi_grid": [1, 2, 4], "aspp_rates": None, "aux_stride": 8}
    cfg = load_config(None, ["model.name=unet_original", "model.args={dropout: 0, base_channels: 8}"])
    assert cfg.model.args == {"dropout": 0.0, "base_channels": 8} and isinstance(cfg.model.args["dropout"], float)
    assert load_config(None, ["model.name=pspnet", "model.args={bins: [1, 3]}"]).model.args == {"bins": [1, 3]}
    with pytest.raises(ConfigError, match=r"model.args.bins: expected a list, got 3"):
        load_config(None, ["model.name=pspnet", "model.args={bins: 3}"])


def test_early_stop_needs_a_validation_split():
    with pytest.raises(ConfigError, match=r"train.early_stop=3 counts validation rounds, but data.val_split is empty"):
        load_config(None, ["train.early_stop=3", "data.val_split="])
