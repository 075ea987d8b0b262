"""The model catalogue shipped with imseg: what `imseg models` prints, read without importing torch.

``models/profiles.json`` holds, per built-in model, the registry's facts
(paper, year, idea, published numbers) and its parameter and FLOP counts at
360x480 with default arguments. ``python -m imseg.models.profile`` writes it
from the live registry and the tests check it against the code, so listing
the zoo takes a JSON read (0.2 s) instead of importing torch and thirty
model files (5-7 s on a 2-core CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

CATALOGUE_FILE = Path(__file__).parent / "models" / "profiles.json"
FIELDS = ("params", "gflops", "paper", "year", "summary", "published")


def read_catalogue(path: Path = CATALOGUE_FILE) -> dict[str, dict]:
    """``{name: row}`` for every model in the shipped file whose row has every field; {} without the file."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["models"]
    return {name: row for name, row in rows.items() if all(k in row for k in FIELDS)}
