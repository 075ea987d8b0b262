"""Model folders in the Hugging Face Hub layout: save_pretrained, from_pretrained, `imseg export --format pretrained`.

The hub path is tested without a network: `huggingface_hub.snapshot_download`
is replaced by a function that returns a prepared folder (or raises as it
does offline), and the tests check what imseg asked it for.
"""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

import imseg
from imseg.engine.checkpoint import CheckpointError, load_model, save_checkpoint
from imseg.models import create_model
from tests.helpers import run_cli, small_model_with_meta


@pytest.fixture(scope="module")
def model():
    return small_model_with_meta()


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("pretrained") / "roads")


def _logits(net, seed=1):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x)


def test_save_then_load_gives_the_same_logits_and_metadata(model, folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = imseg.from_pretrained(folder)
    assert loaded.meta == model.meta and not loaded.training
    assert torch.equal(_logits(loaded), _logits(model))
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "imseg-pretrained" and config["format_version"] == 1
    card = (folder / "README.md").read_text()
    assert "library_name: imseg" in card and "0 sky, 1 road, 2 car" in card and "imseg.from_pretrained" in card


def test_the_weights_are_bare_safetensors_the_metadata_is_in_config_json(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # no second copy of the metadata to disagree with config.json
    with pytest.raises(CheckpointError, match=r"weights of a model folder.*pass the folder"):
        load_model(folder / "model.safetensors")


def test_a_card_the_user_wrote_is_kept_and_imsegs_own_is_rewritten(model, tmp_path):
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(card + "stale line\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == card
    (tmp_path / "README.md").write_text("# my own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my own card\n"


def test_export_pretrained_writes_a_folder_with_the_checkpoints_logits(model, tmp_path):
    pt = save_checkpoint({**model.meta.to_dict(), "state_dict": model.state_dict(), "epoch": 2}, tmp_path / "b.pt")
    code, out, err = run_cli("export", pt, "--format", "pretrained", "--out", tmp_path / "exported")
    assert code == 0, err
    assert "imseg.from_pretrained" in out
    loaded = imseg.from_pretrained(tmp_path / "exported")
    assert loaded.meta == model.meta
    assert torch.equal(_logits(loaded), _logits(load_model(pt)))


def test_a_fresh_model_saves_with_numbered_classes(tmp_path):
    net = create_model("lraspp", 2, encoder="mobilenet_v3_small").eval()
    loaded = imseg.from_pretrained(net.save_pretrained(tmp_path / "fresh"))
    assert loaded.meta.class_names == ("class_0", "class_1")
    assert torch.equal(_logits(loaded), _logits(net))


def test_a_hub_id_is_downloaded_through_huggingface_hub(folder, model, monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = imseg.from_pretrained("acme/roads", revision="v1", cache_dir=tmp_path)
    assert torch.equal(_logits(loaded), _logits(model))
    [(repo_id, kwargs)] = calls
    assert repo_id == "acme/roads" and kwargs["revision"] == "v1" and kwargs["cache_dir"] == tmp_path
    assert set(kwargs["allow_patterns"]) == {"config.json", "model.safetensors", "README.md"}


@pytest.mark.parametrize("error, message", [
    (LocalEntryNotFoundError("cannot reach the Hub"),
     r"^hub model acme/roads@v1 is not in the cache and cannot be downloaded .*pass a local folder"),
    (RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, request=None)),  # as the Hub answers
     r"^hub model acme/roads does not exist, or is private or gated"),
    (OSError("[Errno 28] No space left on device"),
     r"^cannot download hub model acme/roads@v1: OSError: \[Errno 28\] No space left on device; pass a local"),
])
def test_hub_errors_are_one_line_naming_the_id(monkeypatch, error, message):
    def fake_snapshot_download(repo_id, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(CheckpointError, match=message) as caught:
        imseg.from_pretrained("acme/roads", revision="v1")
    assert "\n" not in str(caught.value)


def test_a_missing_path_that_is_no_hub_id_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(CheckpointError, match=r"no such folder, and not a Hugging Face Hub id"):
        imseg.from_pretrained(tmp_path / "not" / "there")


def _break(name, folder):
    """Damage a copy of a good folder in one way."""
    if name == "no config.json":
        (folder / "config.json").unlink()
    elif name == "another library's config.json":
        (folder / "config.json").write_text(json.dumps({"architectures": ["SegformerForSemanticSegmentation"],
                                                        "model_type": "segformer"}))
    elif name == "no weights":
        (folder / "model.safetensors").unlink()
    elif name == "weights for another class count":
        config = json.loads((folder / "config.json").read_text())
        config["model"]["num_classes"], config["class_names"] = 2, ["sky", "road"]
        (folder / "config.json").write_text(json.dumps(config))
    elif name == "a newer format":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))


@pytest.mark.parametrize("damage, message", [
    ("no config.json", r"^{d} is not an imseg model folder: it has no config.json"),
    ("another library's config.json",
     r"^{d}/config.json is not an imseg model config: 'format' is None, expected 'imseg-pretrained'"),
    ("no weights", r"^{d} has config.json but no model.safetensors"),
    ("weights for another class count",
     r"^{d}/model.safetensors does not fit model 'unet_original' with num_classes 2: .* is \[3, "),
    ("a newer format", r"^{d}/config.json: 'format_version' is 99, this imseg reads 1 to 1"),
])
def test_a_bad_folder_fails_in_one_line_naming_the_file(folder, tmp_path, damage, message):
    bad = shutil.copytree(folder, tmp_path / "bad")
    _break(damage, bad)
    with pytest.raises(CheckpointError, match=message.format(d=str(bad).replace("\\", "\\\\"))) as caught:
        imseg.from_pretrained(bad)
    assert "\n" not in str(caught.value)


def test_a_foreign_hub_folder_is_named_by_its_id(folder, monkeypatch, tmp_path):
    foreign = shutil.copytree(folder, tmp_path / "snapshot")
    _break("another library's config.json", foreign)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(foreign))
    with pytest.raises(CheckpointError, match=r"^acme/segformer/config.json is not an imseg model config"):
        imseg.from_pretrained("acme/segformer")


def test_imseg_predict_takes_a_model_folder(folder, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "street.png")
    code, out, err = run_cli("predict", folder, tmp_path / "street.png", "--out", tmp_path / "masks", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "masks" / "street.png").is_file()
