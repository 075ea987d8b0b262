"""benchmarks/camvid.py end to end on a tiny copy of CamVid: train, select on val, test once, record."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import tiny_camvid_copy

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_camvid", ROOT / "benchmarks" / "camvid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(camvid_root, tmp_path_factory):
    return tiny_camvid_copy(camvid_root, tmp_path_factory.mktemp("camvid"))


SMALL = ["--set", "data.crop_size=[64,96]", "--set", "data.batch_size=2", "--set", "data.num_workers=0"]


def test_recipe_run_records_test_scores_and_the_val_choice(tiny, tmp_path):
    args = ["flagship", "--data-root", str(tiny), "--out-dir", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), "--set", "train.epochs=2", "--set", "train.val_every=1", *SMALL]
    assert _bench().main(args) == 0
    record = json.loads((tmp_path / "results" / "camvid-flagship.json").read_text())
    assert record["status"] == "ok" and record["model"] == "lraspp"
    assert [c["epoch"] for c in record["curve"]] == [1, 2]
    best = max(record["curve"], key=lambda c: c["val_mIoU"])
    assert record["best_epoch"] == best["epoch"] and record["best_val_mIoU"] == best["val_mIoU"]
    test = json.loads((tmp_path / "runs" / "camvid-flagship" / "eval-test.json").read_text())
    assert test["epoch"] == record["best_epoch"]  # the test pass used the checkpoint chosen on val
    assert record["test"]["mIoU"] == test["mIoU"] and set(record["test"]["per_class_iou"]) == set(test["per_class_iou"])
    assert record["command"].startswith("python benchmarks/camvid.py flagship")
    assert {"torch", "torchvision", "imseg"} <= set(record["versions"]) and record["machine"]["cpu_count"]
    assert (tmp_path / "results" / "camvid-flagship.png").stat().st_size > 1000


def test_budget_run_picks_a_step_count_and_a_failed_run_is_recorded(tiny, tmp_path):
    bench = _bench()
    common = ["--data-root", str(tiny), "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
              "--no-boundary", *SMALL]
    assert bench.main(["budget", "--model", "lraspp", "--budget-minutes", "0.05", "--set", "data.eval_size=[64,96]",
                       *common]) == 0
    record = json.loads((tmp_path / "results" / "camvid-budget-lraspp.json").read_text())
    per_step = record["estimated_seconds_per_step"]
    assert record["steps"] == max(1, int(0.9 * 0.05 * 60 / per_step))
    assert record["best_val_mIoU"] is None and 0.0 <= record["test"]["mIoU"] <= 1.0
    with pytest.raises(ValueError, match="learning rate"):
        bench.main(["budget", "--model", "lraspp", "--name", "broken", "--set", "optim.lr=-1", *common])
    failed = json.loads((tmp_path / "results" / "broken.json").read_text())
    assert failed["status"] == "failed" and "learning rate" in failed["error"]


def test_unknown_recipe_names_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        _bench().main(["nonesuch"])
    assert "flagship" in capsys.readouterr().err
