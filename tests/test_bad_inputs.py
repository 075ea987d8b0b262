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
        Image.fromarray(np.full((32, 48, 3), 7, np.uint8)).save(folder / name)
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


# ---------------------------------------------------------------- a second run never replaces the first


def _tiny_raw(tiny_root, out_dir) -> dict:
    """One epoch of a 4-channel U-Net on the tiny 64x96 folder."""
    from tests.helpers import tiny_config

    return tiny_config(tiny_root, out_dir, **{"train.epochs": 1, "data.crop_size": [64, 96],
                                              "model.name": "unet_original",
                                              "model.args": {"base_channels": 4, "batch_norm": True}})


def _tiny_yaml(tmp_path, tiny_root, out_dir) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny_raw(tiny_root, out_dir)))
    return path


def test_training_again_into_a_run_folder_is_refused_until_resume_or_overwrite(tmp_path, tiny_root):
    run = tmp_path / "run"
    cfg = _tiny_yaml(tmp_path, tiny_root, run)
    assert run_cli("train", cfg)[0] == 0
    before = _hashes(run)
    code, _, err = run_cli("train", cfg)
    line = _one_line(err)
    assert code == 2 and "already holds a run" in line and "--resume auto" in line and "--overwrite" in line
    assert _hashes(run) == before  # best.pt, last.pt, metrics.jsonl untouched

    code, out, err = run_cli("train", cfg, "--overwrite")
    assert code == 0, err
    assert "deleted the earlier run" in out
    epochs = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"type": "epoch"' in line]
    assert len(epochs) == 1  # one run's curve, not two appended


# ---------------------------------------------------------------- eval writes beside its checkpoint


def test_eval_of_a_loose_checkpoint_writes_beside_it(tmp_path, trained_checkpoint, tiny_root):
    from imseg.engine.eval_run import default_eval_path

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
def trained_checkpoint(tiny_root, tmp_path_factory):
    from imseg.config import config_from_dict
    from imseg.engine.train import train

    out = tmp_path_factory.mktemp("run")
    train(config_from_dict(_tiny_raw(tiny_root, out)), log=lambda m: None)
    return out / "checkpoints" / "best.pt"


# ---------------------------------------------------------------- splits without lists


def test_a_folder_without_split_lists_warns_that_val_is_the_training_images(tiny_root):
    from imseg.config import config_from_dict
    from imseg.data import build_dataset
    from tests.helpers import tiny_config

    cfg = config_from_dict(tiny_config(tiny_root, tiny_root / "unused")).data
    with pytest.warns(UserWarning, match=r"split 'val' of .* has no list.*training images included.*imseg split"):
        build_dataset(cfg, "val", train=False)


def test_imseg_split_writes_lists_the_folder_dataset_then_uses(tmp_path):
    root = tmp_path / "data"
    _images(root / "images", *(f"{i:02d}.png" for i in range(20)))
    _images(root / "masks", *(f"{i:02d}.png" for i in range(20)))
    code, out, err = run_cli("split", root, "--val", "0.2", "--test", "0.1")
    assert code == 0, err
    lists = {name: (root / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    assert [len(lists[n]) for n in ("train", "val", "test")] == [14, 4, 2]
    assert sorted(sum(lists.values(), [])) == [f"{i:02d}" for i in range(20)]  # each image in exactly one
    before = _hashes(root)
    code, _, err = run_cli("split", root)  # lists exist: refused, nothing rewritten
    assert code == 2 and "already exist" in _one_line(err)
    assert _hashes(root) == before

    import warnings

    from imseg.data import build_dataset
    from imseg.config import config_from_dict

    cfg = config_from_dict({"data": {"name": "folder", "root": str(root), "class_names": ["a", "b"]}}).data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the lists are found: no warning
        val = build_dataset(cfg, "val", train=False)
    assert sorted(p.stem for p, _ in val.files) == sorted(lists["val"])


# ---------------------------------------------------------------- one bad image, a cuda device, Ctrl-C, a full disk


def test_one_unreadable_image_is_reported_and_the_others_are_predicted(tmp_path, trained_checkpoint):
    photos = _images(tmp_path / "photos", "a.png", "c.png")
    (photos / "b.png").write_bytes(b"not a png")
    before = _hashes(photos)
    code, out, err = run_cli("predict", trained_checkpoint, photos, "--out", tmp_path / "masks")
    assert code == 1 and "wrote 2 masks" in out
    assert "could not read" in _one_line(err) and "b.png" in err
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png") if "_overlay" not in p.name) == ["a.png", "c.png"]
    assert _hashes(photos) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_is_one_line(tmp_path, tiny_root):
    cfg = _tiny_yaml(tmp_path, tiny_root, tmp_path / "run")
    code, _, err = run_cli("train", cfg, "--set", "train.device=cuda")
    line = _one_line(err)
    assert code == 2 and "'cuda'" in line and "sees no CUDA GPU" in line and "auto or cpu" in line


def test_ctrl_c_during_training_prints_the_resume_command(tmp_path, tiny_root, monkeypatch):
    import imseg.engine.train as train_module

    cfg = _tiny_yaml(tmp_path, tiny_root, tmp_path / "run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted)  # Ctrl-C at the first validation
    code, _, err = run_cli("train", cfg, "--set", "train.epochs=2")
    line = _one_line(err)
    assert code == 130 and "interrupted" in line
    assert line.endswith(f"imseg train {cfg} --set train.epochs=2 --resume auto")


def test_a_full_disk_during_a_checkpoint_write_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    from imseg.engine.checkpoint import CheckpointError, load_checkpoint

    path = save_checkpoint({"x": torch.ones(2)}, tmp_path / "last.pt")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"no space left on device while writing .*last.pt .*previous "
                                              r"last.pt is intact"):
        save_checkpoint({"x": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint({"x": torch.ones(1)}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_progress_in_a_log_file_is_plain_lines_not_carriage_returns(monkeypatch):
    import io

    from imseg.engine import progress as progress_module

    log = io.StringIO()  # not a terminal
    bar = progress_module.progress(range(3), "epoch 1/2", total=3, stream=log)
    monkeypatch.setattr(bar, "interval", 0.0)
    for _ in bar:
        bar.set_postfix(loss="1.234")
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == ["epoch 1/2: 0/3", "epoch 1/2: 1/3 loss=1.234", "epoch 1/2: 2/3 loss=1.234"]


# ---------------------------------------------------------------- start-up


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["models"],
                                  ["models", "--names"]])
def test_help_and_models_answer_without_importing_torch(argv):
    """`imseg --help` took 9 s and 1 GB, `imseg models` 68 s (torch and every model); now they import neither."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom imseg.cli import main\ntry:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n        main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_crop_larger_than_every_image_warns_naming_both(tmp_path):
    from imseg.data import FolderDataset
    from imseg.data.stats import warn_if_crops_are_mostly_padding

    root = tmp_path / "data"
    _images(root / "images", "a.png", "b.png")  # 32x48
    (root / "masks").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "masks" / name)
    ds = FolderDataset(root, ["bg", "fg"])
    with pytest.warns(UserWarning, match=r"data.crop_size \[360, 480\] is larger than every training image .*"
                                         r"32x48 at most, times 2 .*at most \[32, 48\]"):
        assert warn_if_crops_are_mostly_padding(ds, [360, 480], [0.5, 2.0])
    assert not warn_if_crops_are_mostly_padding(ds, [64, 96], [0.5, 2.0])  # reachable at scale 2
    with pytest.warns(UserWarning, match=r"180x240 at most"):
        warn_if_crops_are_mostly_padding(ds, [400, 500], [1.0, 1.5], train_size=[180, 240])


# ---------------------------------------------------------------- every model file imseg writes, read by every command


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    """best.pt exported to safetensors with the CLI, in a folder of its own (no config.yaml beside it)."""
    out = tmp_path_factory.mktemp("exported") / "model.safetensors"
    code, _, err = run_cli("export", trained_checkpoint, "--format", "safetensors", "--out", out)
    assert code == 0, err
    return out


def test_eval_and_predict_take_an_exported_safetensors_file(tmp_path, trained_checkpoint, exported, tiny_root):
    code, _, err = run_cli("eval", exported, "--split", "val", "--data-root", tiny_root, "--no-report",
                           "--out", tmp_path / "st.json")
    assert code == 0, err
    code, _, err = run_cli("eval", trained_checkpoint, "--split", "val", "--data-root", tiny_root, "--no-report",
                           "--out", tmp_path / "pt.json")
    assert code == 0, err
    import json

    st, pt = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("st", "pt"))
    assert st["mIoU"] == pytest.approx(pt["mIoU"], abs=1e-6) and st["model"] == pt["model"]
    photos = _images(tmp_path / "photos", "a.png")
    code, out, err = run_cli("predict", exported, photos, "--out", tmp_path / "masks")
    assert code == 0, err
    assert (tmp_path / "masks" / "a.png").is_file()


def test_a_checkpoint_renamed_to_safetensors_still_loads(tmp_path, trained_checkpoint):
    """The file's first bytes decide how it is read, not its name."""
    from imseg.engine.checkpoint import load_model

    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(trained_checkpoint.read_bytes())
    assert load_model(renamed).meta.num_classes == load_model(trained_checkpoint).meta.num_classes


def _safetensors_with(path: Path, source: Path, edit) -> Path:
    """A copy of the exported ``source`` whose imseg metadata went through ``edit`` (None: dropped)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["imseg"])
    edited = edit(meta)
    save_file(tensors, str(path), metadata=None if edited is None else {"imseg": json.dumps(edited)})
    return path


def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


@pytest.mark.parametrize("name, edit, message", [
    ("no-meta", lambda m: None, r"bare tensors and no imseg metadata .*encoder_weights"),
    ("no-preprocessing", _drop("preprocessing"), r"metadata has no 'preprocessing'"),
    ("bad-preprocessing", lambda m: {**m, "preprocessing": {"mean": [1, 2]}}, r"'preprocessing' is not valid"),
    ("twelve-names", lambda m: {**m, "class_names": m["class_names"] + ["extra"]},
     r"'class_names' has 12 names but 'model.num_classes' is 11"),
    ("more-classes", lambda m: {**m, "model": {**m["model"], "num_classes": 12},
                                "class_names": m["class_names"] + ["extra"], "palette": m["palette"] + [[1, 2, 3]]},
     r"does not fit model 'unet_original' with num_classes 12: \S+ is \[11, .* in the file but \[12, "),
    ("unknown-model", lambda m: {**m, "model": {**m["model"], "name": "unet9000"}},
     r"describes a model this imseg cannot build: unknown model 'unet9000'"),
    ("newer", lambda m: {**m, "meta_version": 99}, r"metadata version 99 is newer"),
])
def test_a_damaged_safetensors_file_is_one_line_naming_it(tmp_path, exported, name, edit, message):
    bad = _safetensors_with(tmp_path / f"{name}.safetensors", exported, edit)
    photos = _images(tmp_path / "photos", "a.png")
    before = _hashes(tmp_path)
    code, _, err = run_cli("predict", bad, photos, "--out", tmp_path / "masks")
    line = _one_line(err)
    assert code == 2 and str(bad) in line, line
    assert __import__("re").search(message, line), line
    assert _hashes(tmp_path) == before and not (tmp_path / "masks").exists()


def test_a_checkpoint_whose_class_count_differs_from_its_weights_is_one_line(tmp_path, trained_checkpoint):
    state = torch.load(trained_checkpoint, weights_only=True)
    state["model"]["num_classes"] = 5
    state["class_names"], state["palette"] = state["class_names"][:5], state["palette"][:5]
    bad = save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "five.pt")
    code, _, err = run_cli("export", bad, "--format", "safetensors", "--out", tmp_path / "x.safetensors")
    line = _one_line(err)
    assert code == 2 and "five.pt does not fit model 'unet_original' with num_classes 5" in line, line
    assert "in the file but [5," in line and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("content, message", [
    (b"\x80\x04\x95" + b"\x00" * 64, r"cannot be read"),  # a plain pickle, not imseg's
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", r"cannot be read as safetensors"),  # a broken header
    (b"", r"cannot be read"),
])
def test_a_file_that_is_no_model_is_one_line(tmp_path, content, message):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    code, _, err = run_cli("eval", bad, "--no-report")
    line = _one_line(err)
    assert code == 2 and str(bad) in line and __import__("re").search(message, line), line
    assert bad.read_bytes() == content
