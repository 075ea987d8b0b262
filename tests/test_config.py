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
HEAVY_CONFIGS = {"camvid_fcn8s.yaml", "camvid_deconvnet.yaml"}


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
    code, out, err = run_cli("train", path, "--out-dir", tmp_path / "run", "--set", *overrides, "train.epochs=1",
                             "train.time_budget_minutes=null", "train.progress=false",
                             "train.checkpoint_every_steps=0")
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
