"""The shared dataset base: read an image/mask pair, check it, transform it.

Every dataset in imseg is a list of ``(image, mask)`` file pairs plus class
metadata. The checks live here, once, because label-encoding mistakes (RGB
colour masks, a void label that was never mapped, masks saved at another
resolution) are the most common way a segmentation run goes silently wrong:
training on them "works" and only the mIoU tells, much later. Each check
fails on the first sample that breaks it, naming the file and what is wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

# (image, mask) -> (image, mask); see imseg.data.transforms.JointTransform.
Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Single-channel modes whose pixel values are class ids. "P" (palette PNG) is
# what most annotation tools write: the values are indices, the palette is
# only for display. 16/32-bit modes allow more than 256 classes.
_INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


class DataError(ValueError):
    """A problem with the data on disk or with the data configuration.

    The message always says which file or setting is at fault and how to fix
    it, so the CLI can print it as-is without a traceback.
    """


def list_some(items: Sequence[object], limit: int = 5) -> str:
    """``a, b, c, d, e and 12 more``: names enough to find the problem, not a wall of text."""
    shown = ", ".join(str(x) for x in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def load_image(path: Path) -> Image.Image:
    """Open an image file as RGB, or raise DataError naming it and PIL's reason."""
    try:
        with Image.open(path) as img:
            # convert() forces the full decode inside the try, so a truncated
            # file fails here rather than later inside a transform.
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def load_index_mask(path: Path) -> np.ndarray:
    """Read a mask file whose pixel values are class ids, as an int64 array [H, W].

    Colour masks (each class drawn in its palette colour) are rejected with an
    explanation: guessing the colour -> id mapping would hide label errors.
    A 3-channel file whose channels are all equal is a grey index mask saved
    as RGB by some tools; it is unambiguous, so it is accepted.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in _INDEX_MODES:
                return np.asarray(img).astype(np.int64)
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
            elif mode == "LA":
                return np.asarray(img.getchannel(0)).astype(np.int64)
            else:
                raise DataError(
                    f"mask {path} has PIL mode {mode!r}; imseg expects an index mask: a single-channel "
                    "PNG (mode 'L' or 'P') whose pixel values are class ids"
                )
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e

    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].astype(np.int64)
    n_colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    raise DataError(
        f"mask {path} is an RGB colour mask ({mode}, {n_colours} distinct colours); imseg expects an "
        "index mask: a single-channel PNG (mode 'L' or 'P') whose pixel values are the class ids "
        "0..num_classes-1, with ignore_index for unlabelled pixels. Convert colour masks once with "
        "imseg.data.rgb_to_index(rgb_array, palette) and save the result as an 'L' PNG."
    )


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 tensor [3, H, W] (values 0-255, not normalised)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class SegmentationDataset(Dataset):
    """A list of (image, mask) files with class metadata, checked on every read.

    Parameters:
        files: (image path, mask path) pairs.
        class_names: one name per class; ``num_classes = len(class_names)``.
        palette: one RGB colour per class (for visualisation only).
        ignore_index: the label of pixels that count for neither loss nor metrics.
        transform: joint transform ``(image uint8 [3,H,W], mask int64 [H,W]) -> same``;
            None returns the full-size sample.
        label_map: raw mask value -> label, applied before the value check
            (CamVid maps its void label 11 to ignore_index this way).

    ``dataset[i]`` returns ``(image uint8 [3, H, W], mask int64 [H, W])``.
    """

    def __init__(
        self,
        files: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        *,
        ignore_index: int = 255,
        transform: Transform | None = None,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        if not class_names:
            raise DataError("a dataset needs at least one class name")
        if len(palette) != len(class_names):
            raise DataError(f"the palette has {len(palette)} colours but there are {len(class_names)} classes")
        if 0 <= ignore_index < len(class_names):
            raise DataError(
                f"ignore_index {ignore_index} is also a class id (classes are 0..{len(class_names) - 1}); "
                "choose a value outside that range, e.g. 255"
            )
        self.files: list[tuple[Path, Path]] = [(Path(i), Path(m)) for i, m in files]
        self.class_names: list[str] = list(class_names)
        self.palette: list[tuple[int, int, int]] = [tuple(int(v) for v in c) for c in palette]  # type: ignore[misc]
        self.num_classes: int = len(self.class_names)
        self.ignore_index: int = int(ignore_index)
        self.transform = transform
        self.label_map: dict[int, int] = dict(label_map or {})
        # See set_augmentation_seed: None draws augmentations from torch's global RNG.
        self.augmentation_seed: int | None = None
        self.epoch = 0

    def set_augmentation_seed(self, seed: int | None, epoch: int = 0) -> None:
        """Draw each sample's augmentation from its own seed ``(seed, epoch, index)``.

        A sample then comes out the same whichever process, DataLoader worker
        or batch position loads it, so training on 1 or N processes, and a run
        resumed in the middle of an epoch, see exactly the same data.
        """
        self.augmentation_seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, ignore_index={self.ignore_index})"

    def load_mask(self, path: Path) -> np.ndarray:
        """The mask at ``path`` as labels (int64 [H, W]): label map applied, values checked.

        Used by ``__getitem__`` and by statistics such as median-frequency
        weights, which must see the labels without augmentation.
        """
        raw = load_index_mask(path)
        mask = raw.copy() if self.label_map else raw
        for src, dst in self.label_map.items():
            mask[raw == src] = dst
        bad = (mask < 0) | (mask >= self.num_classes)
        bad &= mask != self.ignore_index
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            mapped = f" (after mapping {self.label_map})" if self.label_map else ""
            raise DataError(
                f"mask {path} contains label values {list_some(values)} that are neither a class id "
                f"(0..{self.num_classes - 1}) nor ignore_index ({self.ignore_index}){mapped}. "
                "Check num_classes / class_names, or mark unlabelled pixels with ignore_index."
            )
        return mask

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The untransformed sample ``index``: (uint8 [3, H, W], int64 [H, W])."""
        image_path, mask_path = self.files[index]
        image = load_image(image_path)
        mask = self.load_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
                f"{image.width}x{image.height}; a mask must have exactly its image's size"
            )
        return image_to_tensor(image), torch.from_numpy(mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_pair(index)
        if self.transform is None:
            return image, mask
        if self.augmentation_seed is None:
            return self.transform(image, mask)
        # fork_rng restores the global RNG afterwards: seeding a sample must
        # not disturb dropout or anything else drawing from it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.augmentation_seed * 1_000_003 + self.epoch) * 1_000_033 + index)
            return self.transform(image, mask)
