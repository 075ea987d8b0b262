"""The one model registry: typed builder functions behind `create_model`.

A builder is a plain function ``builder(num_classes, *, ...) -> nn.Module``
whose keyword arguments are its whole interface; `create_model` checks the
arguments against the builder's signature so a typo fails loudly with the
valid choices instead of vanishing into ``**kwargs``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import nn


class SegOutput(NamedTuple):
    """Returned by `forward` only when an auxiliary head is configured."""

    out: torch.Tensor
    aux: torch.Tensor


def main_logits(output: torch.Tensor | SegOutput) -> torch.Tensor:
    """The main logits of a model output, whether or not it carries aux logits."""
    return output.out if isinstance(output, SegOutput) else output


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


def register_model(name: str, *, paper: str, year: int, summary: str, published: str = "") -> Callable:
    """Decorator: register ``builder`` under ``name``. Duplicate names are an error."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelInfo(name, builder, paper, year, summary, published)
        return builder

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every built-in model.
    import imseg.models  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments a model accepts, with their defaults."""
    sig = inspect.signature(model_info(name).builder)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model with random (or ``encoder_weights``) weights.

    The construction arguments are kept on the model as ``model.imseg_spec``
    so a checkpoint can rebuild it exactly.
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
    model = info.builder(num_classes, **kwargs)
    spec = {k: v for k, v in {**accepted, **kwargs}.items()}
    model.imseg_spec = {"name": name, "num_classes": num_classes, "kwargs": spec}
    return model
