"""Bad inputs and interruptions a new user meets: each gets one clear line, and nothing the user had changes.

Every case asserts the message (it names the file, key or value), the exit
status, and that the user's files hash the same before and after.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imseg.engine.checkpoint import remove_partial_checkpoints, save_checkpoint
from imseg.engine.predict import output_names
from tests.helpers import run_cli


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(folder / name)
    return folder


# ---------------------------------------------------------------- predict never loses an input


def test_predict_refuses_an_input_folder_as_its_output(tmp_path):
    photos = _images(tmp_path / "photos", "m0.jpg", "m1.png")
    with pytest.raises(ValueError, match=r"the output folder .*photos is an input folder"):
        output_names([photos], photos)


def test_predict_refuses_to_overwrite_an_input_file(tmp_path):
    photos = _images(tmp_path / "photos", "m0.png")
    elsewhere = _images(tmp_path / "out", "x_overlay.png")
    with pytest.raises(ValueError, match=r"would overwrite the input image .*x_overlay.png"):
        output_names([photos / "m0.png", elsewhere / "x_overlay.png"], elsewhere)  # m0 is fine, x would not be


def test_predict_gives_inputs_sharing_a_stem_their_own_outputs(tmp_path):
    photos = _images(tmp_path / "photos", "m0.jpg", "m0.png", "m1.png")
    plan = output_names([photos], tmp_path / "masks")
    assert sorted(stem for _, stem in plan) == ["m0_jpg", "m0_png", "m1"]
    other = _images(tmp_path / "other", "m1.png")
    with pytest.raises(ValueError, match=r"inputs .*photos/m1.png and .*other/m1.png would both write"):
        output_names([photos, other], tmp_path / "masks")


def test_imseg_predict_into_the_photo_folder_is_one_line_and_changes_nothing(tmp_path, trained_checkpoint):
    photos = _images(tmp_path / "photos", "m0.jpg", "m1.png")
    before = _hashes(photos)
    code, _, err = run_cli("predict", trained_checkpoint, photos, "--out", photos)
    assert code == 2 and "is an input folder" in _one_line(err)
    assert _hashes(photos) == before


# ---------------------------------------------------------------- eval writes beside its checkpoint


def test_eval_of_a_loose_checkpoint_writes_beside_it(tmp_path, trained_checkpoint, tiny_root):
    from imseg.cli import default_eval_path

    loose = tmp_path / "x" / "y" / "model.pt"
    loose.parent.mkdir(parents=True)
    loose.write_bytes(Path(trained_checkpoint).read_bytes())
    (tmp_path / "eval-val.json").write_text("mine")  # two folders up: must not be touched
    assert default_eval_path(loose, "val") == loose.with_name("model-eval-val.json")
    assert default_eval_path(trained_checkpoint, "val") == Path(trained_checkpoint).parent.parent / "eval-val.json"
    code, _, err = run_cli("eval", loose, "--split", "val", "--data-root", tiny_root, "--no-report")
    assert code == 0, err
    assert (tmp_path / "eval-val.json").read_text() == "mine"
    assert loose.with_name("model-eval-val.json").is_file()


# ---------------------------------------------------------------- leftovers of a killed write


def test_a_killed_checkpoint_write_leaves_a_temporary_the_next_start_removes(tmp_path):
    save_checkpoint({"x": torch.ones(2)}, tmp_path / "last.pt")
    leftover = tmp_path / ".last.pt.abc123.tmp"  # what mkstemp in save_checkpoint names it
    leftover.write_bytes(b"partial")
    other = tmp_path / "notes.tmp"
    other.write_text("not ours")
    assert remove_partial_checkpoints(tmp_path) == [leftover]
    assert not leftover.exists() and other.exists() and (tmp_path / "last.pt").is_file()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_root(camvid_root, tmp_path_factory):
    from tests.helpers import tiny_camvid_folder

    return tiny_camvid_folder(camvid_root, tmp_path_factory.mktemp("tiny"), n=2, size=(64, 96))


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_root, tmp_path_factory):
    from imseg.config import config_from_dict
    from imseg.engine.train import train
    from tests.helpers import tiny_config

    out = tmp_path_factory.mktemp("run")
    raw = tiny_config(tiny_root, out, **{"train.epochs": 1, "data.crop_size": [64, 96],
                                         "model.name": "unet_original",
                                         "model.args": {"base_channels": 4, "batch_norm": True}})
    train(config_from_dict(raw), log=lambda m: None)
    return out / "checkpoints" / "best.pt"
