"""CamVid, 11-class SegNet version (Brostow et al. 2008; Badrinarayanan et al. 2017).

The data set is never copied into the repository (CC BY-NC 4.0); it is read
from wherever `find_camvid_root` finds it. Layout::

    camvid/train.txt  val.txt  test.txt     "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png"
    camvid/train/  val/  test/              RGB PNG, 480x360
    camvid/trainannot/  valannot/  testannot/   'L' PNG, values 0..11 (11 = void)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .base import DataError, SegmentationDataset, Transform, list_some

CAMVID_CLASSES: list[str] = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_PALETTE: list[tuple[int, int, int]] = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_VOID = 11  # label of unlabelled pixels in the SegNet masks; mapped to ignore_index

# SegNet's own median-frequency class weights (Caffe prototxt), classes 0..10.
SEGNET_CLASS_WEIGHTS: list[float] = [
    0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614,
]  # fmt: skip

CAMVID_SPLITS = ("train", "val", "test")
# Composite splits: the standard protocol allows training on train+val.
CAMVID_SPLIT_ALIASES = {"trainval": ("train", "val")}

_LIST_PREFIX = "/SegNet/CamVid/"
_LIST_FILES = tuple(f"{s}.txt" for s in CAMVID_SPLITS)


def _checkout_parent() -> Path | None:
    """The folder that holds the repository checkout (for ``../shared/data/camvid``).

    This file is ``<checkout>/src/imseg/data/camvid.py``; computed from it
    rather than ``imseg.__file__`` so it also works before ``imseg`` has an
    ``__init__``. For an installed (non-editable) package the path is simply
    one more place that does not exist.
    """
    parents = Path(__file__).resolve().parents
    return parents[4] if len(parents) > 4 else None


def _looks_like_camvid(path: Path) -> str | None:
    """None if ``path`` is a CamVid folder, else why not."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    if not any((path / f).is_file() for f in _LIST_FILES):
        return f"exists but has none of {', '.join(_LIST_FILES)}"
    return None


def find_camvid_root(root: str | os.PathLike | None = None) -> Path:
    """Find the CamVid folder, or raise DataError listing every place tried.

    Order: ``root`` (from ``--data-root`` / ``DataConfig.root``), then
    ``$IMSEG_DATA``, then ``../shared/data/camvid`` next to the repository
    checkout and relative to the current directory. Each location may be the
    CamVid folder itself or a folder containing ``camvid/``.

    An explicit ``root`` that is not CamVid is an error rather than a reason
    to fall back: silently training on some other copy than the one asked
    for is worse than stopping.
    """
    tried: list[str] = []

    def check(base: Path, origin: str) -> Path | None:
        for candidate in (base, base / "camvid"):
            problem = _looks_like_camvid(candidate)
            if problem is None:
                return candidate.resolve()
            if candidate is base or candidate.exists():
                tried.append(f"  - {candidate} ({origin}): {problem}")
        return None

    if root is not None and str(root) != "":
        found = check(Path(root).expanduser(), "data root given")
        if found is not None:
            return found
        raise DataError(
            "CamVid not found at the data root given:\n" + "\n".join(tried) + "\n"
            "Point --data-root (DataConfig.root) at the folder holding train.txt, val.txt, test.txt and "
            "the train/ trainannot/ ... folders of the SegNet CamVid release."
        )

    env = os.environ.get("IMSEG_DATA")
    if env:
        found = check(Path(env).expanduser(), "$IMSEG_DATA")
        if found is not None:
            return found
    else:
        tried.append("  - $IMSEG_DATA: not set")
    parent = _checkout_parent()
    if parent is not None:
        found = check(parent / "shared" / "data" / "camvid", "next to the repository checkout")
        if found is not None:
            return found
    found = check(Path.cwd() / ".." / "shared" / "data" / "camvid", "relative to the current directory")
    if found is not None:
        return found
    raise DataError(
        "CamVid data set not found. Looked in:\n" + "\n".join(tried) + "\n"
        "Fix: pass --data-root /path/to/camvid (Python: DataConfig(root=...)), or set "
        "IMSEG_DATA=/path/to/camvid. The folder must hold train.txt, val.txt, test.txt and the "
        "train/ trainannot/ val/ valannot/ test/ testannot/ folders of the SegNet CamVid release."
    )


def read_camvid_list(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The (image, mask) paths of one split from ``<split>.txt``, prefix stripped."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"CamVid list file {list_file} is missing")
    pairs = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{list_file}:{lineno}: expected 'image_path mask_path', got {line!r}")
        # Paths are written as /SegNet/CamVid/<rel>; anything else is taken
        # as relative to the CamVid folder too.
        rel = [f[len(_LIST_PREFIX):] if f.startswith(_LIST_PREFIX) else f.lstrip("/") for f in fields]
        pairs.append((root / rel[0], root / rel[1]))
    if not pairs:
        raise DataError(f"CamVid list file {list_file} lists no images")
    return pairs


class CamVid(SegmentationDataset):
    """The SegNet CamVid split ``split`` ('train', 'val', 'test' or 'trainval').

    Void (label 11) becomes ``ignore_index``. All listed files are checked to
    exist at construction, so a broken copy fails before training starts.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        transform: Transform | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.root = find_camvid_root(root)
        self.split = split
        files: list[tuple[Path, Path]] = []
        for part in self._parts(split):
            files.extend(read_camvid_list(self.root, part))
        missing = [str(p.relative_to(self.root)) for pair in files for p in pair if not p.is_file()]
        if missing:
            raise DataError(
                f"CamVid split {split!r} at {self.root}: {len(missing)} listed file(s) are missing: "
                f"{list_some(missing)}. Re-extract the data set or fix the list file."
            )
        super().__init__(
            files,
            CAMVID_CLASSES,
            CAMVID_PALETTE,
            ignore_index=ignore_index,
            transform=transform,
            label_map={CAMVID_VOID: ignore_index},
        )

    @staticmethod
    def _parts(split: str) -> Sequence[str]:
        if split in CAMVID_SPLITS:
            return (split,)
        if split in CAMVID_SPLIT_ALIASES:
            return CAMVID_SPLIT_ALIASES[split]
        choices = list(CAMVID_SPLITS) + list(CAMVID_SPLIT_ALIASES)
        raise DataError(f"unknown CamVid split {split!r}; choose one of {choices}")

    def __repr__(self) -> str:
        return f"CamVid(split={self.split!r}, {len(self)} samples, root={str(self.root)!r})"
