"""The one model registry: typed builder functions behind `create_model`.

A builder is a plain function ``builder(num_classes, *, ...) -> nn.Module``
whose keyword arguments are its whole interface; `create_model` checks the
arguments against the builder's signature so a typo fails loudly with the
valid choices instead of vanishing into ``**kwargs``.

Beside its builder's own arguments every model takes ``norm`` ("batch",
"group" or "frozen_batch", imseg/models/norm.py): `create_model` applies
it to the built model, so every family honours it, encoders included.

The built-in models register themselves when ``imseg.models`` is imported,
and importing this module imports that package first, so the registry is
complete before anyone can read it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import nn

from imseg.models.norm import NORMS, check_norm, set_norm

# Model outputs live in imseg.outputs (losses and inference read them without the zoo); kept importable here.
from imseg.outputs import SegOutput, main_logits

__all__ = ["COMMON_ARGUMENTS", "COMMON_ARGUMENT_TYPES", "ModelInfo", "SegOutput", "create_model", "list_models",
           "main_logits", "model_arguments", "model_info", "register_model", "register_variant"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    paper: str
    year: int
    summary: str
    # What the paper (or its reference code) publishes: parameters, scores.
    published: str = ""


_REGISTRY: dict[str, ModelInfo] = {}

# Arguments every model accepts beside its builder's own, with their defaults and types; create_model
# applies them after building (one conversion instead of one code path per builder and encoder).
COMMON_ARGUMENTS: dict[str, Any] = {"norm": "batch"}
COMMON_ARGUMENT_TYPES: dict[str, Any] = {"norm": Literal[NORMS]}


def register_model(name: str, *, paper: str, year: int, summary: str, published: str = "") -> Callable:
    """Decorator: register ``builder`` under ``name``. Duplicate names are an error."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelInfo(name, builder, paper, year, summary, published)
        return builder

    return deco


def register_variant(name: str, builder: Callable[..., nn.Module], **facts: Any) -> Callable[..., nn.Module]:
    """Register ``builder``, made for one preset of a family (S/M/L, W18/W32/W48), under ``name``.

    Variants as data: a family writes its builder's signature once, in a
    function that returns one builder per row of its table of presets;
    ``facts`` are `register_model`'s (paper, year, summary, published).
    """
    builder.__name__ = builder.__qualname__ = name  # tracebacks and reprs name the model
    return register_model(name, **facts)(builder)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _builder_arguments(name: str) -> dict[str, Any]:
    sig = inspect.signature(model_info(name).builder)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments a model accepts, with their defaults (its builder's, then `COMMON_ARGUMENTS`)."""
    return {**_builder_arguments(name), **COMMON_ARGUMENTS}


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model with random (or ``encoder_weights``) weights.

    The construction arguments are kept on the model as ``model.imseg_spec``
    so a checkpoint can rebuild it exactly. ``norm`` is recorded only when it
    is not "batch", so the specs of checkpoints written before the option
    existed still equal a rebuild's (resuming compares them).
    """
    info = model_info(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    accepted = model_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown argument(s) {unknown}; it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    norm = check_norm(kwargs.pop("norm", COMMON_ARGUMENTS["norm"]))
    model = set_norm(info.builder(num_classes, **kwargs), norm)
    # A builder that reads part of its definition from a file (autodeeplab's architecture JSON) leaves what
    # it read in ``imseg_resolved_kwargs``: the spec records that, so a checkpoint rebuilds without the file.
    resolved = model.__dict__.pop("imseg_resolved_kwargs", {})
    spec = {**_builder_arguments(name), **kwargs, **resolved}
    if norm != COMMON_ARGUMENTS["norm"]:
        spec["norm"] = norm
    model.imseg_spec = {"name": name, "num_classes": num_classes, "kwargs": spec}
    return model
