"""What a trained model needs beside its weights, in one typed object.

A model file is only usable if the consumer knows the architecture, how
images were normalised, what the class ids mean and how training evaluated.
`ModelMeta` holds these facts; checkpoints, safetensors metadata and the ONNX
side-car are written from ``to_dict`` and read back through ``from_dict``,
which checks every field so a damaged or foreign file fails in one line
naming the file and the key instead of deep inside a loader.

The dict layout is the one checkpoints have always had (top-level ``model``,
``preprocessing``, ``class_names``, ...), so older files read unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from imseg.preprocessing import Preprocessing

META_VERSION = 1


class MetadataError(ValueError):
    """A model file's metadata is missing a field or holds a wrong value."""


@dataclass(frozen=True)
class ModelMeta:
    spec: Mapping[str, Any]  # {"name", "num_classes", "kwargs"}: what `create_model` needs
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    eval_size: tuple[int, int] | None = None
    eval_settings: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] | None = None  # the config's data section: where `imseg eval` finds the splits
    version: int = META_VERSION

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta_version": self.version,
            "model": {"name": self.spec["name"], "num_classes": self.num_classes, "kwargs": dict(self.spec["kwargs"])},
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "eval_size": list(self.eval_size) if self.eval_size else None,
            "eval": dict(self.eval_settings),
            "data": dict(self.data) if self.data is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model file") -> "ModelMeta":
        """Read and check the metadata of ``source`` (named in every error)."""
        if not isinstance(d, Mapping):
            raise MetadataError(f"{source}: metadata must be a mapping, got {type(d).__name__}")
        version = d.get("meta_version", 1)
        if not isinstance(version, int) or version > META_VERSION:
            raise MetadataError(f"{source}: metadata version {version!r} is newer than this imseg reads "
                                f"({META_VERSION}); upgrade imseg")
        spec = _spec(_require(d, "model", source), source)
        preprocessing = _preprocessing(_require(d, "preprocessing", source), source)
        names = _require(d, "class_names", source)
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise MetadataError(f"{source}: 'class_names' must be a list of strings, got {names!r:.80}")
        if len(names) != spec["num_classes"]:
            raise MetadataError(f"{source}: 'class_names' has {len(names)} names but 'model.num_classes' is "
                                f"{spec['num_classes']}: the file's class count does not agree with itself")
        data = d.get("data") if d.get("data") is not None else (d.get("config") or {}).get("data")
        return cls(
            spec=spec, preprocessing=preprocessing, class_names=tuple(names),
            palette=_palette(_require(d, "palette", source), len(names), source),
            ignore_index=_int(d.get("ignore_index", 255), "ignore_index", source),
            eval_size=_size(d.get("eval_size"), source), eval_settings=dict(d.get("eval") or {}),
            data=dict(data) if isinstance(data, Mapping) else None, version=version,
        )

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)


def _require(d: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in d:
        raise MetadataError(f"{source}: metadata has no {key!r} (it has {sorted(d)[:12]}); "
                            f"it was not written by imseg, or by an incompatible version")
    return d[key]


def _int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MetadataError(f"{source}: {key!r} must be an integer, got {value!r}")
    return value


def _spec(spec: Any, source: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise MetadataError(f"{source}: 'model' must be a mapping with a string 'name', got {spec!r:.80}")
    num_classes = _int(spec.get("num_classes"), "model.num_classes", source)
    if num_classes < 1:
        raise MetadataError(f"{source}: 'model.num_classes' must be at least 1, got {num_classes}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise MetadataError(f"{source}: 'model.kwargs' must be a mapping, got {kwargs!r:.80}")
    return {"name": spec["name"], "num_classes": num_classes, "kwargs": dict(kwargs)}


def _preprocessing(d: Any, source: str) -> Preprocessing:
    try:
        return Preprocessing.from_dict(d)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise MetadataError(f"{source}: 'preprocessing' is not valid ({type(e).__name__}: {e}); "
                            f"expected mean, std, channel_order, scale") from None


def _palette(palette: Any, num_classes: int, source: str) -> tuple[tuple[int, int, int], ...]:
    ok = isinstance(palette, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette)
    if not ok or len(palette) < num_classes:
        raise MetadataError(f"{source}: 'palette' must hold {num_classes} [r, g, b] colours of 0-255, "
                            f"got {palette!r:.80}")
    return tuple(tuple(c) for c in palette)


def _size(size: Any, source: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise MetadataError(f"{source}: 'eval_size' must be null or [height, width], got {size!r}")
    return (size[0], size[1])


def attach(model: Any, meta: ModelMeta) -> Any:
    """Give ``model`` its metadata (``model.meta``) and the attributes inference reads from it."""
    model.meta = meta
    model.imseg_spec = dict(meta.spec)
    model.preprocessing = meta.preprocessing
    model.class_names = list(meta.class_names)
    model.palette = list(meta.palette)
    model.ignore_index = meta.ignore_index
    model.eval_size = meta.eval_size
    model.eval_settings = dict(meta.eval_settings)
    return model


def meta_of(model: Any) -> ModelMeta:
    """``model.meta``; for a model fresh from `create_model` (never trained, no classes named yet),
    metadata with numbered class names and the default palette."""
    meta = getattr(model, "meta", None)
    if meta is not None:
        return meta
    from imseg.data.palette import default_palette

    spec = model.imseg_spec
    n = int(spec["num_classes"])
    return ModelMeta(spec=dict(spec), preprocessing=model.preprocessing,
                     class_names=tuple(f"class_{i}" for i in range(n)),
                     palette=tuple(tuple(c) for c in default_palette(n)))
