"""A run's logs on disk: TensorBoard scalars and one JSON line per event in ``metrics.jsonl``.

Only the main process writes; the others get a `RunLog` that writes nothing,
so the loop calls it the same way on every rank.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, out_dir: Path | None = None):
        """Open the logs in ``out_dir`` (appending, so a resumed run continues them); None: write nothing."""
        self._writer = self._file = None
        if out_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

            self._writer = SummaryWriter(str(out_dir / "tensorboard"))
            self._file = open(out_dir / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars at ``step``, by tag (``train/loss``)."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def record(self, entry: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()  # a killed run keeps every line written so far

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None
