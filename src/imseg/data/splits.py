"""`imseg split ROOT`: train/val/test list files for a folder dataset that has none.

Without lists the folder dataset uses every image for every split, so
validation (and best.pt) would be chosen on the training images. The
lists hold one stem per line; ``build_dataset`` picks up ``<root>/<split>.txt``
by itself. The shuffle is seeded, so the same folder gives the same lists.
"""
from __future__ import annotations

import random
from pathlib import Path

from .base import DataError
from .folder import IMAGE_EXTENSIONS, _index_by_stem


def write_split_lists(root: str | Path, image_dir: str = "images", val: float = 0.15, test: float = 0.15,
                      seed: int = 0) -> dict[str, Path]:
    """Shuffle the stems in ``root/image_dir`` and write ``train.txt``, ``val.txt``, ``test.txt``."""
    root = Path(root).expanduser()
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"split fractions must be in [0, 1) and leave images for training: val={val}, test={test}")
    folder = root / image_dir
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist (--image-dir, relative to the data folder)")
    existing = [root / f"{name}.txt" for name in ("train", "val", "test") if (root / f"{name}.txt").exists()]
    if existing:
        raise DataError(f"{', '.join(map(str, existing))} already exist: delete them to write new lists")
    stems = sorted(_index_by_stem(folder, IMAGE_EXTENSIONS, "image"))
    random.Random(seed).shuffle(stems)
    n_val, n_test = round(val * len(stems)), round(test * len(stems))
    if len(stems) - n_val - n_test < 1:
        raise DataError(f"{folder} holds {len(stems)} image(s): too few to split")
    parts = {"val": stems[:n_val], "test": stems[n_val:n_val + n_test], "train": stems[n_val + n_test:]}
    written = {}
    for name, part in parts.items():
        if part:
            written[name] = root / f"{name}.txt"
            written[name].write_text("".join(f"{stem}\n" for stem in sorted(part)))
    return written
