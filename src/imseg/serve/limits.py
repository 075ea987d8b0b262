"""What an upload to `imseg serve` may be, and how it is read without trusting it.

The checks run in the order that keeps a hostile file cheap:

1. its size in bytes, before it is read whole;
2. its type from its content (PIL identifies it from its first bytes, and is
   only offered the formats below: a renamed text file is refused, and an EPS
   that would start Ghostscript never reaches a decoder);
3. its width x height from the header, before a pixel is decoded: a 100 kB
   PNG can declare 30000 x 30000 (a decompression bomb, 2.7 GB once decoded);
4. only then the decode, into 8-bit RGB, upright as its EXIF orientation says,
   as `imseg predict` reads a file, so both give the same mask.

Every refusal is an `UploadError` with an HTTP status and a message written
for the person who sent the file.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit and float pictures
NOT_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # converting these to RGB would recolour them


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 2**20  # one upload, as sent
    max_pixels: int = 12_000_000  # width x height (a 12-megapixel photo); the model's memory grows with it
    queue: int = 16  # requests running or waiting at once, page and API together; more are told "busy"

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def describe(self) -> str:
        return (f"uploads up to {self.max_bytes / 2**20:g} MiB and {self.max_pixels / 1e6:g} megapixels, "
                f"{', '.join(ALLOWED_FORMATS)}; {self.queue} requests at once")


class UploadError(ValueError):
    """An upload that is refused: ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def guard_pil(limits: Limits) -> None:
    """Make PIL itself refuse bombs in this process (a server): above twice ``max_pixels`` every
    ``Image.open`` raises, not only ours; between one and two times our own check refuses first,
    so PIL's warning for that range is silenced."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _too_many_pixels(name: str, width: int, height: int, limits: Limits) -> UploadError:
    return UploadError(f"{name} declares {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); "
                       f"this server takes at most {limits.max_pixels / 1e6:g} megapixels (a file this small that "
                       f"declares this many pixels may be a decompression bomb)", status=413)


def _open(data: bytes, limits: Limits, name: str) -> Image.Image:
    """The image with only its header read, its type and size checked."""
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not an image this server reads (by its content, whatever its name says); "
                          f"send {', '.join(ALLOWED_FORMATS)}", status=415) from None
    except Image.DecompressionBombError as e:  # over twice Image.MAX_IMAGE_PIXELS: PIL refuses in open
        declared = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(declared.group(1)) / 1e6:.1f} megapixels" if declared else "too many pixels"
        raise UploadError(f"{name} declares {pixels}; this server takes at most {limits.max_pixels / 1e6:g} "
                          f"megapixels (a small file that declares this many pixels may be a decompression bomb)",
                          status=413) from None
    except (OSError, SyntaxError, ValueError) as e:  # a header PIL recognised and could not parse
        raise UploadError(f"{name} is a damaged image: {e}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels(name, width, height, limits)
    if img.mode in DEEP_MODES or img.mode in NOT_RGB_MODES:
        raise UploadError(f"{name} is a {img.format} in PIL mode {img.mode!r} (16-bit, float or not RGB); the web "
                          f"app reads 8-bit RGB or grey pictures: use `imseg predict` for this file", status=415)
    return img


def read_upload(data: bytes, limits: Limits, name: str = "the upload") -> Image.Image:
    """Upload bytes as a decoded 8-bit RGB image, or an `UploadError` saying why not."""
    if len(data) > limits.max_bytes:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MiB; this server takes at most "
                          f"{limits.max_bytes / 2**20:g} MiB", status=413)
    if not data:
        raise UploadError(f"{name} is empty")
    img = _open(data, limits, name)
    try:
        upright = ImageOps.exif_transpose(img)  # decodes: a truncated file fails here
        return upright.convert("RGB")
    except Image.DecompressionBombError as e:
        raise UploadError(f"{name}: {e}", status=413) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UploadError(f"{name} could not be decoded ({type(e).__name__}: {e}); is it truncated?") from None
    finally:
        img.close()


def read_upload_file(path: str | Path, limits: Limits) -> Image.Image:
    """A file on disk (an upload the page saved, a sample) under the same limits, its size checked first."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise UploadError(f"{path.name} is {size / 2**20:.1f} MiB; this server takes at most "
                          f"{limits.max_bytes / 2**20:g} MiB", status=413)
    return read_upload(path.read_bytes(), limits, name=path.name)
