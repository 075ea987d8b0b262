"""benchmarks/step_variants.py: step times of LR-ASPP variants and the step counts that match the recipe's time."""
from __future__ import annotations

import json

from tests.helpers import load_benchmark


def test_variants_are_timed_and_scaled_to_the_reference_steps(tmp_path):
    bench = load_benchmark("step_variants")
    out = tmp_path / "variants.json"
    assert bench.main(["--variants", "lraspp", "lraspp-os32-aux4-8-16-at4", "--steps", "1000", "--amp", "none",
                       "--batch", "2", "--size", "64", "96", "--repeats", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    reference, variant = record["rows"]
    assert reference["variant"] == "lraspp" and reference["relative"] == 1.0
    assert reference["steps_at_equal_time"] == 1000
    assert variant["args"] == {"output_stride": 32, "aux_strides": [4, 8, 16], "aux_output_stride": 4}
    # The step count holds the reference's time: steps x step seconds agree up to the rounding of both.
    budget = 1000 * reference["step_s"]
    assert abs(variant["steps_at_equal_time"] * variant["step_s"] - budget) <= 0.01 * budget + variant["step_s"]
    assert record["reference_steps"] == 1000 and record["machine"]["cpu"]
