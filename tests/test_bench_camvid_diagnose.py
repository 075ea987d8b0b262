"""benchmarks/camvid_diagnose.py: CamVid sequences from file names, and class offsets fitted on mIoU."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import load_benchmark


def test_frames_are_grouped_by_their_sequence():
    diagnose = load_benchmark("camvid_diagnose")
    assert diagnose.sequence_of(Path("/data/camvid/test/Seq05VD_f02370.png")) == "Seq05VD"
    assert diagnose.sequence_of(Path("train/0001TP_006690.png")) == "0001TP"


def test_offsets_fitted_on_mIoU_undo_a_class_bias_and_are_scored_as_fitted():
    diagnose = load_benchmark("camvid_diagnose")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, diagnose.CLASSES, (4000,), generator=generator)
    logits = torch.randn(4000, diagnose.CLASSES, generator=generator)
    logits[torch.arange(4000), labels] += 2.0  # informative logits...
    logits[:, 3] += 3.0  # ...with class 3 painted over the others
    labels[:100] = 255  # ignored pixels count for nothing
    offsets, before, after = diagnose.fit_offsets(logits.half(), labels)
    assert after > before + 0.2
    assert offsets[3] == offsets.min() and offsets[3] < -1.0
    assert diagnose.offset_miou(logits.half(), labels, offsets) == after
    assert diagnose.offset_miou(logits.half(), labels, torch.zeros(diagnose.CLASSES)) == before
