"""benchmarks/loss_speed.py: every term timed on uncertain and on fitted logits, from this or another checkout."""
from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import load_benchmark


def test_each_term_is_timed_on_both_kinds_of_logits(tmp_path):
    bench = load_benchmark("loss_speed")
    out = tmp_path / "loss.json"
    src = Path(__file__).resolve().parents[1] / "src"
    assert bench.main(["--terms", "ohem", "dice", "--batch", "2", "--size", "16", "24", "--repeats", "1",
                       "--compare-with", str(src), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r["loss"], r["logits"]) for r in record["rows"]] == [
        ("ohem", "random"), ("ohem", "fitted"), ("dice", "random"), ("dice", "fitted")]
    assert all(r["ms"] > 0 and r["other_ms"] > 0 and r["speedup"] > 0 for r in record["rows"])
    assert record["compare_with"] == str(src)
