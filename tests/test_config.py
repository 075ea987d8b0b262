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


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_trains_through_imseg_train(path, camvid_root, tmp_path):
    """One epoch of each family's config, on 2 tiny CamVid images (the data part is overridden)."""
    import json

    from tests.helpers import tiny_camvid_folder, tiny_config
    from tests.test_cli import imseg

    root = tiny_camvid_folder(camvid_root, tmp_path / "data", n=2, size=(96, 128))
    tiny = tiny_config(root, tmp_path / "run")
    overrides = [f"data.{k}={json.dumps(v)}" for k, v in tiny["data"].items()]  # JSON is YAML
    imseg("train", path, "--out-dir", tmp_path / "run", "--set", *overrides, "train.epochs=1", "train.progress=false",
          "train.checkpoint_every_steps=0")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


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
