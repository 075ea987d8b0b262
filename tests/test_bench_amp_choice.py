"""benchmarks/amp_choice.py: both precisions timed per model, and the choice train.amp=auto makes from them."""
from __future__ import annotations

import json

from imseg.engine.amp_probe import choose
from tests.helpers import load_benchmark


def test_each_model_gets_both_step_times_and_the_auto_choice(tmp_path):
    bench = load_benchmark("amp_choice")
    out = tmp_path / "amp.json"
    assert bench.main(["--models", "lraspp-mobilenet_v3_large", "--batch", "2", "--size", "64", "96",
                       "--repeats", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert row["model"] == "lraspp-mobilenet_v3_large" and row["float32_s"] > 0 and row["bf16_s"] > 0
    assert row["auto_keeps"] == choose(row["float32_s"], row["bf16_s"]).chosen
    assert record["machine"]["cpu"] and record["command"].startswith("python")
    assert not list(tmp_path.glob("*.partial"))
