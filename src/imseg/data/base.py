"""The shared dataset base: read an image/mask pair, check it, transform it.

Every dataset in imseg is a list of ``(image, mask)`` file pairs plus class
metadata. The checks live here, once, because label-encoding mistakes (RGB
colour masks, a void label that was never mapped, masks saved at another
resolution) are the most common way a segmentation run goes silently wrong:
training on them "works" and only the mIoU tells, much later. Each check
fails on the first sample that breaks it, naming the file and what is wrong.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

# (image, mask) -> (image, mask); see imseg.data.transforms.JointTransform.
Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Single-channel modes whose pixel values are class ids. "P" (palette PNG) is
# what most annotation tools write: the values are indices, the palette is
# only for display. 16/32-bit modes allow more than 256 classes.
_INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")
MASK_CACHE_BYTES = 1 << 30  # decoded colour masks kept per dataset (and per DataLoader worker)
# Decoded samples kept per dataset with data.cache (CamVid's 367 training frames: 254 MB).
SAMPLE_CACHE_BYTES = 4 << 30


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


# 16/32-bit and float single-band modes: their values are kept (never squeezed into 0-255).
_DEEP_MODES = {"I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.int32, "F": np.float32}
# Modes whose RGB conversion would recolour the pixels.
_NOT_RGB = {"CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}
_TIFF = (".tif", ".tiff")


def load_image(path: Path, warn_alpha: Callable[[Path], None] | None = None) -> np.ndarray:
    """An image file as ``[H, W, C]``, upright as a viewer shows it, or a DataError naming it and the reason.

    8-bit images come back as uint8 RGB: grey and palette images converted,
    an alpha channel dropped (``warn_alpha`` is told the file), the EXIF
    orientation applied (a phone photo is stored sideways with a flag, and
    its mask was drawn on the upright picture). 16-bit and float images keep
    their values and dtype (one band from PIL; any band count from a TIFF
    through rasterio), to be normalised by per-band statistics, not by 255.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # decodes: a truncated file fails here, not in a transform
            if img.mode in _DEEP_MODES:
                return np.asarray(img).astype(_DEEP_MODES[img.mode])[..., None]
            if img.mode in _NOT_RGB:
                raise DataError(f"image {path} is {_NOT_RGB[img.mode]} (PIL mode {img.mode!r}); converting it to "
                                f"RGB would recolour it: save it as RGB")
            if img.mode in ("RGBA", "LA", "PA") and warn_alpha is not None and path.suffix.lower() not in _TIFF:
                warn_alpha(path)
            if img.mode == "RGBA" and path.suffix.lower() in _TIFF:
                return _read_tiff(path)  # a 4-band TIFF is RGB + near-infrared far more often than alpha
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        if path.suffix.lower() in _TIFF:
            return _read_tiff(path)  # multi-band or 16-bit RGB TIFFs: PIL cannot, GDAL can
        raise DataError(f"cannot read image {path}: {e}") from e


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels.

    TIFFs PIL cannot open (multi-band, 16-bit RGB) are asked through rasterio.
    """
    try:
        with Image.open(path) as img:
            return img.size[::-1]
    except (OSError, UnidentifiedImageError):
        if path.suffix.lower() not in _TIFF:
            raise
    return _with_tiff(path, lambda src: (src.height, src.width))


def _read_tiff(path: Path) -> np.ndarray:
    return _with_tiff(path, lambda src: np.moveaxis(src.read(), 0, -1))


def _with_tiff(path: Path, read: Callable):
    """``read(src)`` of the TIFF at ``path`` opened by rasterio (for what PIL cannot open), errors naming the file."""
    try:
        import rasterio
    except ImportError:
        raise DataError(f"image {path} is a TIFF PIL cannot read (multi-band or 16-bit): install the [geo] "
                        f"extra (rasterio) to read it: pip install 'imseg[geo]'") from None
    import warnings as _warnings

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a plain TIFF, not a map
            with rasterio.open(path) as src:
                return read(src)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def load_index_mask(path: Path) -> np.ndarray:
    """Read a mask file whose pixel values are class ids, as an int64 array [H, W].

    Colour masks (each class drawn in its palette colour) are rejected with an
    explanation: guessing the colour -> id mapping would hide label errors.
    A 3-channel file whose channels are all equal is a grey index mask saved
    as RGB by some tools; it is unambiguous, so it is accepted.
    """
    if path.suffix.lower() == ".mat":
        return _load_mat_labels(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # as drawn: annotation tools show the upright picture
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
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    common = [f"({r}, {g}, {b})" for r, g, b in colours[np.argsort(-counts)][:8].tolist()]
    raise DataError(
        f"mask {path} is an RGB colour mask ({mode}, {len(colours)} colours: {list_some(common, 8)}) and no "
        "class table says which colour is which class: set data.classes to a CSV file of name,r,g,b lines "
        "(or a YAML/JSON list of {name, color}), or store them as index masks: single-channel PNGs of "
        "class ids (imseg.data.rgb_to_index converts colour masks once)"
    )


def load_mask_colours(path: Path) -> np.ndarray:
    """A mask file as colours ``uint8 [H, W, 3]`` (palette masks through their palette), for a class table."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e


def _apply_label_map(raw: np.ndarray, label_map: Mapping[int, int]) -> np.ndarray:
    """``raw`` with each value in ``label_map`` replaced: one table lookup (COCO-Stuff maps 182 values)."""
    if raw.size and 0 <= raw.min() and raw.max() < 1 << 16:
        lut = np.arange(max(int(raw.max()), max(label_map, default=0)) + 1, dtype=np.int64)
        for src, dst in label_map.items():
            if 0 <= src < len(lut):
                lut[src] = dst
        return lut[raw]
    mask = raw.copy()
    for src, dst in label_map.items():
        mask[raw == src] = dst
    return mask


def _load_mat_labels(path: Path) -> np.ndarray:
    """The class map of an SBD ``cls/*.mat`` file (struct GTcls, field Segmentation)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"reading SBD's .mat masks ({path}) needs scipy: pip install 'imseg[data]'") from None
    try:
        return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0]).astype(np.int64)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"cannot read mask {path} as an SBD class map (GTcls.Segmentation): {e}") from None


def image_to_tensor(image: np.ndarray | Image.Image) -> torch.Tensor:
    """``[H, W, C]`` -> ``[C, H, W]``: uint8 stays uint8 (0-255, not normalised), deeper data becomes float32."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


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
            (CamVid maps its void label 11 to ignore_index this way; Cityscapes
            labelIds -> trainIds).
        strict_label_map: a raw value ``label_map`` does not list fails (the benchmarks'
            fixed encodings) instead of passing through unchanged.
        reduce_zero_label: the ADE20K convention: raw 0 is unlabelled (-> ignore_index)
            and raw k is class k-1.
        colour_table: a `imseg.data.classes.ClassTable` for colour-coded masks;
            decoded masks are kept in memory (up to ``MASK_CACHE_BYTES``) so an
            epoch does not decode them again.
        unknown_colors: "error" (a colour the table lacks fails, naming it) or "ignore".

    ``cache_samples = True`` keeps each decoded sample (image and checked
    labels, before augmentation) after its first read, up to
    ``SAMPLE_CACHE_BYTES``, so later epochs skip the PNG/JPEG decode: more
    than half of the data time of a CamVid training sample
    (benchmarks/results/sample-cache.json; see `resolve_sample_cache`).

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
        reduce_zero_label: bool = False,
        strict_label_map: bool = False,
        colour_table: Any = None,
        unknown_colors: str = "error",
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
        if self.label_map and reduce_zero_label:
            raise DataError("data.label_map and data.reduce_zero_label both remap the raw labels: use one of them")
        self.reduce_zero_label = bool(reduce_zero_label)
        self.strict_label_map = strict_label_map  # a raw value the map lacks is an error, not kept as it is
        self.colour_table = colour_table
        self.unknown_colors = unknown_colors
        self._decoded: dict[Path, np.ndarray] = {}
        self._decoded_bytes = 0
        self.cache_samples = False
        self._samples: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._samples_bytes = 0
        self._alpha_warned = False
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
        mask = self.map_labels(self._raw_labels(path), path)
        bad = (mask < 0) | (mask >= self.num_classes)
        bad &= mask != self.ignore_index
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            mapped = f" (after mapping {self.label_map})" if self.label_map else (
                " (after reduce_zero_label: raw k -> k-1)" if self.reduce_zero_label else "")
            raise DataError(
                f"mask {path} contains label values {list_some(values)} that are neither a class id "
                f"(0..{self.num_classes - 1}) nor ignore_index ({self.ignore_index}){mapped}. "
                "Check num_classes / class_names, or mark unlabelled pixels with ignore_index."
            )
        return mask

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """The labels of the raw mask values ``raw`` (read from ``path``): label map or reduce_zero_label."""
        if self.strict_label_map:
            unlisted = np.setdiff1d(np.unique(raw), np.fromiter(self.label_map, dtype=np.int64))
            if unlisted.size:
                raise DataError(f"mask {path} contains label values {list_some(unlisted.tolist())} that the "
                                f"dataset's label table does not define; the file is not in this benchmark's encoding")
        mask = _apply_label_map(raw, self.label_map) if self.label_map else raw
        if self.reduce_zero_label:
            mask = np.where(raw == 0, self.ignore_index, np.where(raw == self.ignore_index, raw, raw - 1))
        return mask

    def _raw_labels(self, path: Path) -> np.ndarray:
        if self.colour_table is None:
            return load_index_mask(path)
        decoded = self._decoded.get(path)
        if decoded is None:
            ids = self.colour_table.decode(load_mask_colours(path), path, self.ignore_index, self.unknown_colors)
            decoded = ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.int32)  # compact while cached
            if self._decoded_bytes + decoded.nbytes <= MASK_CACHE_BYTES:
                self._decoded[path] = decoded
                self._decoded_bytes += decoded.nbytes
        return decoded.astype(np.int64)

    def _warn_alpha(self, path: Path) -> None:
        if not self._alpha_warned:  # once per dataset: every image of a folder usually has the same format
            self._alpha_warned = True
            warnings.warn(f"image {path} has an alpha channel: it is dropped (and for every other such image "
                          f"of this dataset, said only this once)", UserWarning, stacklevel=3)

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The untransformed sample ``index``: (image [C, H, W]: uint8 for 8-bit files, else float32; int64 [H, W])."""
        if not self.cache_samples:
            return self._read_pair(index)
        cached = self._samples.get(index)
        if cached is None:
            image, mask = self._read_pair(index)
            # Labels up to 255 (ignore_index included) fit a byte: an eighth of the memory of int64.
            compact = mask.to(torch.uint8) if 0 <= int(mask.min()) and int(mask.max()) < 256 else mask
            cached = (image, compact)
            size = image.nbytes + compact.nbytes
            if self._samples_bytes + size <= SAMPLE_CACHE_BYTES:
                self._samples[index] = cached
                self._samples_bytes += size
        image, mask = cached
        return image.clone(), mask.to(torch.int64, copy=True)  # the caller may write into what it gets

    def _read_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.files[index]
        image = load_image(image_path, self._warn_alpha)
        mask = self.load_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; a mask must have exactly its image's size"
            )
        return image_to_tensor(image), torch.from_numpy(mask)

    @property
    def num_channels(self) -> int:
        """Bands of the images (read from the first one)."""
        return int(load_image(self.files[0][0]).shape[-1])

    @property
    def image_dtype(self) -> str:
        """``"uint8"`` for 8-bit images, else the dtype of their values (from the first image)."""
        return str(load_image(self.files[0][0]).dtype)

    def band_preprocessing(self, images: int = 32):
        """A `Preprocessing` from the per-band mean and std of up to ``images`` images (every second pixel),
        in the images' own units: for data that is not 8-bit, where the /255 conventions do not apply."""
        from imseg.preprocessing import Preprocessing

        step = max(1, len(self.files) // images)
        arrays = []
        for path, _ in self.files[::step][:images]:
            array = load_image(path)
            arrays.append(array[::2, ::2].reshape(-1, array.shape[-1]).astype(np.float64))
        pixels = np.concatenate(arrays)
        std = np.maximum(pixels.std(0), 1e-6)
        return Preprocessing(tuple(pixels.mean(0).tolist()), tuple(std.tolist()), "RGB", scale=1.0)

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
