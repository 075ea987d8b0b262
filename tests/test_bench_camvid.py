"""benchmarks/camvid.py end to end on a tiny copy of CamVid: train, select on val, test once, record."""
from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark, tiny_camvid_copy


def _bench():
    return load_benchmark("camvid")


@pytest.fixture(scope="module")
def tiny(camvid_root, tmp_path_factory):
    return tiny_camvid_copy(camvid_root, tmp_path_factory.mktemp("camvid"))


# The recipes train on a time budget; these runs take their epoch counts instead
# (--budget-minutes, appended after these overrides, still sets one).
SMALL = ["--set", "data.crop_size=[64,96]", "--set", "data.batch_size=2", "--set", "data.num_workers=0",
         "--set", "train.time_budget_minutes=null"]


def test_recipe_run_records_test_scores_and_the_val_choice(tiny, tmp_path):
    args = ["flagship", "--data-root", str(tiny), "--out-dir", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), "--set", "train.epochs=2", "--set", "train.val_every=1", "--select-tta", *SMALL]
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
    # --select-tta: every candidate scored on val, test scored again with the val winner only.
    tta = record["tta"]
    assert len(tta["candidates"]) == 4 and tta["test_epoch"] == record["best_epoch"]
    best_val = max(c["val_mIoU"] for c in tta["candidates"])
    assert any(c["val_mIoU"] == best_val and {"scales": c["scales"], "flip": c["flip"]} == tta["chosen"]
               for c in tta["candidates"])


def test_budget_run_picks_a_step_count_and_a_failed_run_is_recorded(tiny, tmp_path):
    bench = _bench()
    common = ["--data-root", str(tiny), "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
              "--no-boundary", *SMALL]
    assert bench.main(["budget", "--model", "lraspp", "--budget-minutes", "0.05", "--set", "data.eval_size=[64,96]",
                       *common]) == 0
    record = json.loads((tmp_path / "results" / "camvid-budget-lraspp.json").read_text())
    # The step count comes from train.time_budget_minutes, resolved once and recorded for an exact rerun.
    assert record["budget"]["budget_minutes"] == record["budget_minutes"] == 0.05
    assert record["steps"] == record["resolved_max_steps"] == record["budget"]["max_steps"] >= 1
    # On a CPU with native bf16, train.amp=auto timed both precisions: the rerun names the one kept.
    amp = f" --set train.amp={record['resolved_amp']}" if record["amp_choice"] else ""
    assert record["repeat_with"] == f"--set train.max_steps={record['steps']}{amp}"
    assert record["config"]["train"]["time_budget_minutes"] == 0.05
    assert record["machine"]["cpu_flags"] is not None and record["machine"]["matmul_fp32_gflops"] > 0
    assert record["best_val_mIoU"] is None and 0.0 <= record["test"]["mIoU"] <= 1.0
    # A run that fails once started (here building its model) is recorded with its error. (A value out of
    # range, such as optim.lr=-1, is refused when the config loads, before there is a run to record.)
    with pytest.raises(ValueError, match="unknown encoder 'resnet9'"):
        bench.main(["budget", "--name", "broken", "--set", "model.args={encoder: resnet9}", *common])
    failed = json.loads((tmp_path / "results" / "broken.json").read_text())
    assert failed["status"] == "failed" and "resnet9" in failed["error"]


def test_fast_recipe_trains_with_its_auxiliary_heads_and_scores_the_plain_model(tiny, tmp_path):
    """The 20-minute recipe's LR-ASPP (output stride 32, three training-only heads) end to end."""
    args = ["fast", "--data-root", str(tiny), "--out-dir", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), "--no-boundary", "--set", "train.max_steps=3", "--set", "train.val_every=1",
            *SMALL]
    assert _bench().main(args) == 0
    record = json.loads((tmp_path / "results" / "camvid-fast.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 3
    model_args = record["config"]["model"]["args"]
    assert model_args["aux_strides"] == [4, 8, 16] and model_args["output_stride"] == 32
    assert 0.0 <= record["test"]["mIoU"] <= 1.0 and record["best_val_mIoU"] is not None


def test_unknown_recipe_names_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        _bench().main(["nonesuch"])
    assert "flagship" in capsys.readouterr().err


def _tta():
    return load_benchmark("camvid_tta")


def test_tta_is_chosen_on_val_and_test_is_scored_once(tiny, tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    common = ["--data-root", str(tiny), "--out-dir", str(runs), "--results", str(results)]
    assert _bench().main(["flagship", *common, "--no-boundary", "--set", "train.epochs=1", *SMALL]) == 0
    tta = _tta()
    # Two candidates keep the test quick; main() reads the module's list when it runs.
    tta.CANDIDATES = ({"scales": [1.0], "flip": False}, {"scales": [0.5, 1.0], "flip": True})
    args = ["camvid-flagship", "--out-dir", str(runs), "--results", str(results), "--no-boundary",
            "--data-root", str(tiny)]
    assert tta.main(args) == 0
    record = json.loads((results / "camvid-flagship.json").read_text())
    tried = record["tta"]["candidates"]
    assert [(t["scales"], t["flip"]) for t in tried] == [([1.0], False), ([0.5, 1.0], True)]
    # The choice is the val winner, earlier on a tie; the test file was made with it.
    winner = tried[1] if tried[1]["val_mIoU"] > tried[0]["val_mIoU"] else tried[0]
    assert record["tta"]["chosen"] == {"scales": winner["scales"], "flip": winner["flip"]}
    test = json.loads((runs / "camvid-flagship" / "eval-test-tta.json").read_text())
    assert test["inference"]["scales"] == winner["scales"] and test["inference"]["flip"] == winner["flip"]
    assert record["tta"]["test"]["mIoU"] == test["mIoU"]
    assert record["tta"]["command"].startswith("python benchmarks/camvid_tta.py camvid-flagship")
    with pytest.raises(SystemExit):  # a second TTA pass on test is refused
        tta.main(args)
