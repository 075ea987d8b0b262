"""benchmarks/deploy.py and benchmarks/int8_accuracy.py on tiny settings: they run end to end and write
what docs/deploy.md says they write (the real runs are minutes to hours; see docs/deploy.md)."""
from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_latency_benchmark_writes_every_variant_with_its_check(tmp_path):
    bench = load_benchmark("deploy")
    out = tmp_path / "latency.json"
    code = bench.main(["--models", "lraspp", "--variants", "torch-fp32", "onnxruntime-fp32", "onnxruntime-int8",
                       "--size", "64", "96", "--repeats", "1", "--warmup", "0", "--calibrate", "1", "--no-peers",
                       "--out", str(out), "--plot", str(tmp_path / "latency.png")])
    assert code == 0
    record = json.loads(out.read_text())
    variants = record["results"][0]["variants"]
    assert set(variants) == {"torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"}
    assert all(v["seconds"] > 0 and v["size"] == [64, 96] for v in variants.values())
    assert variants["onnxruntime-fp32"]["check"]["relative_difference"] <= 1e-4
    assert "agreement_with_fp32" in variants["onnxruntime-int8"]["check"]
    assert record["versions"]["onnxruntime"] and record["machine"]["cpu"] and record["command"].startswith("python")
    assert (tmp_path / "latency.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.camvid
def test_int8_accuracy_scores_eager_and_int8_on_the_same_split(camvid_root, tmp_path):
    from imseg.config import config_from_dict
    from imseg.engine.train import train
    from tests.helpers import tiny_camvid_copy

    data = tiny_camvid_copy(camvid_root, tmp_path / "camvid", n=2, size=(96, 128))
    raw = {"model": {"name": "lraspp", "args": {"encoder": "mobilenet_v3_small", "norm": "group"}},
           "data": {"name": "camvid", "root": str(data), "crop_size": [96, 128], "batch_size": 2, "num_workers": 0},
           "train": {"epochs": 2, "out_dir": str(tmp_path / "run"), "progress": False}}
    train(config_from_dict(raw), log=lambda m: None)
    out = tmp_path / "int8.json"
    bench = load_benchmark("int8_accuracy")
    bench.main([str(tmp_path / "run" / "checkpoints" / "last.pt"), "--variants", "onnxruntime-fp32",
                "onnxruntime-int8", "--calibrate", "2", "--size", "96", "128", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"}
    assert abs(rows["onnxruntime-fp32"]["drop_points"]) < 0.1  # the fp32 control scores as eager does
    assert rows["onnxruntime-int8"]["export"]["calibration_images"] == 2
