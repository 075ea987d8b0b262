"""Class tables: the names and mask colours of a data set's classes, for colour-coded masks.

Most masks in the wild are drawn in colours (red = building) rather than
stored as class ids. ``data.classes`` names the table that maps them:

* a CSV file, ``name,r,g,b`` per line (a header line and spaces after the
  commas are fine; a fifth column ``ignore`` marks the ignore class);
* a YAML or JSON file holding a list of ``{name, color: [r, g, b]}``
  entries (``ignore: true`` marks the ignore class), or ``{classes: [...]}``;
* the same list inline in the config.

Class ids follow the table's order, skipping ignore entries, whose colour
becomes ``ignore_index``. Decoding refuses a colour the table lacks, naming
the file, the colour and its pixel count, unless ``data.unknown_colors:
ignore``; nothing is silently remapped.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import DataError, list_some

_TRUE = {"1", "true", "yes", "ignore", "y"}


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]  # the classes, in id order
    colours: tuple[tuple[int, int, int], ...]  # one per class
    ignore_colours: tuple[tuple[int, int, int], ...] = ()  # drawn on pixels that count for nothing
    source: str = "data.classes"

    def decode(self, rgb: np.ndarray, path: Path, ignore_index: int, unknown: str = "error") -> np.ndarray:
        """Class ids ``[H, W]`` of the colour mask ``rgb`` ``[H, W, 3]`` read from ``path``."""
        packed = _pack(rgb)
        keys = np.array([_key(c) for c in self.colours] + [_key(c) for c in self.ignore_colours], dtype=np.int64)
        values = np.array(list(range(len(self.colours))) + [ignore_index] * len(self.ignore_colours), dtype=np.int64)
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        found = keys[pos] == packed
        if not found.all() and unknown != "ignore":
            colours, counts = np.unique(packed[~found], return_counts=True)
            top = np.argsort(-counts)
            listed = [f"{_unkey(colours[i])} ({counts[i]} px)" for i in top]
            raise DataError(
                f"mask {path} has {len(colours)} colour(s) that {self.source} does not list: {list_some(listed)}; "
                f"add them to the table (or mark them ignore), or set data.unknown_colors: ignore")
        return np.where(found, values[pos], ignore_index)


def _key(colour: Sequence[int]) -> int:
    r, g, b = (int(v) for v in colour)
    return (r << 16) | (g << 8) | b


def _unkey(key: int) -> str:
    key = int(key)
    return f"({key >> 16}, {(key >> 8) & 255}, {key & 255})"


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)


def _colour(value: Any, where: str) -> tuple[int, int, int]:
    try:
        colour = tuple(int(str(v).strip()) for v in value)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
        raise DataError(f"{where}: a colour must be three integers 0-255 [r, g, b], got {value!r}")
    return colour  # type: ignore[return-value]


def _from_entries(entries: Sequence[Any], source: str) -> ClassTable:
    names, colours, ignore = [], [], []
    seen: dict[tuple[int, int, int], str] = {}
    for i, entry in enumerate(entries):
        where = f"{source}, entry {i + 1}"
        if not isinstance(entry, dict) or "name" not in entry or not ({"color", "colour"} & set(entry)):
            raise DataError(f"{where}: expected {{name, color: [r, g, b]}}, got {entry!r}")
        colour = _colour(entry.get("color", entry.get("colour")), where)
        if colour in seen:
            raise DataError(f"{where}: colour {colour} is already class {seen[colour]!r}")
        seen[colour] = str(entry["name"])
        if str(entry.get("ignore", False)).strip().lower() in _TRUE:
            ignore.append(colour)
        else:
            names.append(str(entry["name"]).strip())
            colours.append(colour)
    if not names:
        raise DataError(f"{source} lists no classes (entries marked ignore do not count)")
    return ClassTable(tuple(names), tuple(colours), tuple(ignore), source)


def _csv_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    with open(path, newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if len(cells) < 4:
                raise DataError(f"class table {path}: expected name,r,g,b[,ignore] per line, got {','.join(cells)!r}")
            if not entries and not cells[1].isdigit():
                continue  # a header line: name,r,g,b
            entries.append({"name": cells[0], "color": cells[1:4],
                            "ignore": len(cells) > 4 and cells[4].lower() in _TRUE})
    return entries


def read_class_table(spec: str | Path | Sequence[Any], root: str | Path | None = None) -> ClassTable:
    """The table ``spec`` describes: a .csv/.yaml/.yml/.json path (relative to ``root`` if not found as
    given) or a list of ``{name, color}`` entries."""
    if not isinstance(spec, (str, Path)):
        return _from_entries(list(spec), "data.classes")
    path = Path(spec).expanduser()
    if not path.is_file() and root is not None and (Path(root).expanduser() / path).is_file():
        path = Path(root).expanduser() / path
    if not path.is_file():
        raise DataError(f"class table {spec} (data.classes) does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _from_entries(_csv_entries(path), f"class table {path}")
    if suffix in (".yaml", ".yml", ".json"):
        import yaml

        text = path.read_text()
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        data = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DataError(f"class table {path}: expected a list of {{name, color}} entries (or classes: [...])")
        return _from_entries(data, f"class table {path}")
    raise DataError(f"class table {path}: expected a .csv, .yaml, .yml or .json file")


def write_class_table(path: Path, colours: Sequence[tuple[int, int, int]], names: Sequence[str] | None = None) -> Path:
    """A CSV class table for ``colours`` (named ``class_0``... unless ``names``), to edit and use."""
    names = list(names) if names else [f"class_{i}" for i in range(len(colours))]
    lines = ["name,r,g,b"] + [f"{n},{r},{g},{b}" for n, (r, g, b) in zip(names, colours)]
    path.write_text("\n".join(lines) + "\n")
    return path
