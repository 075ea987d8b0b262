"""Weight files: reading them, checking them against a module, getting published ones.

Every encoder family loads weights through these functions, so a file that
does not fit fails the same way everywhere: one error naming the file and
every missing, unexpected or misshapen key.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable

import torch
from torch import nn


def describe_keys(keys: Iterable[str], limit: int = 12) -> str:
    """The first ``limit`` keys, comma-separated, and how many there are in all when that is more."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torch (``.pth``/``.pt``/...) or ``.safetensors`` weights file into a flat state dict.

    Accepts the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``)
    and strips the ``module.`` prefix DistributedDataParallel adds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} does not exist; weights must be None, 'imagenet' "
            "or the path of a .pth/.pt/.safetensors file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a weights file must never be able to run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the formats fail in many ways; say which file it was
        raise RuntimeError(f"could not read weights file {str(path)!r}: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise RuntimeError(f"weights file {str(path)!r} does not hold a state dict (found {type(state).__name__})")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def state_and_source(weights: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, how to name it in errors) of a weights file or of a state dict given as a mapping."""
    if isinstance(weights, Mapping):
        return dict(weights), "the given state dict"
    return read_state_dict(weights), str(weights)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``module.load_state_dict(state)``, strict, with one error naming every problem and the file."""
    own = module.state_dict()
    # BatchNorm's num_batches_tracked counter only matters for momentum=None;
    # weight files saved before it existed (older torchvision releases) lack it.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, encoder {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {describe_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {describe_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {describe_keys(mismatched)}")
        raise ValueError(f"weights {source!r} do not fit {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a first-conv weight trained on RGB into one for ``in_channels`` inputs (timm's recipe).

    One channel: sum over RGB (a grey image then gives the response a grey
    RGB image would). More channels: repeat RGB and rescale by 3/C so the
    activations keep their magnitude.
    """
    from timm.models import adapt_input_conv as timm_adapt_input_conv

    return timm_adapt_input_conv(in_channels, weight.float()).to(weight.dtype)


def adapt_first_conv(state: dict[str, torch.Tensor], key: str, in_channels: int) -> None:
    """Adapt ``state[key]``, a first conv's weight, to ``in_channels`` inputs in place (if it is there and differs)."""
    weight = state.get(key)
    if weight is not None and weight.ndim == 4 and weight.shape[1] != in_channels:
        state[key] = adapt_input_conv(weight, in_channels)


def download_state_dict(url: str, what: str) -> dict[str, torch.Tensor]:
    """Download (or take from the torch.hub cache) a torchvision weights file, checking its hash.

    ``what`` names the weights in the offline message ("the ImageNet weights of 'resnet50'").
    """
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)
    except OSError as e:  # URLError, HTTPError, socket errors: all OSError
        filename = url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not download {what} from {url} ({e}). "
            f"If this machine is offline, download that file on one that is online, copy it here "
            f"and pass its path instead of 'imagenet', e.g. encoder_weights='/path/to/{filename}'."
        ) from e


def timm_weights_location(model_name: str) -> str:
    """Where timm's default weights for ``model_name`` live, for the offline message."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is not None and cfg.hf_hub_id:
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    if cfg is not None and cfg.url:
        return cfg.url
    return "the model's weights file (see timm's pretrained_cfg)"


def timm_pretrained(tag: str, offline_advice: str, **kwargs) -> nn.Module:
    """``timm.create_model(tag, pretrained=True, **kwargs)``: timm downloads the weights, the HF hub caches them.

    ``offline_advice`` completes "If this machine is offline, ..." in the
    error, which names the model and the cause.
    """
    import timm

    try:
        return timm.create_model(tag, pretrained=True, **kwargs)
    except Exception as e:  # HF hub / URL errors come in many classes
        raise RuntimeError(
            f"could not get the pretrained weights of timm model {tag!r} ({type(e).__name__}: {e}). "
            f"If this machine is offline, {offline_advice} (set HF_HUB_OFFLINE=1 to skip the download retries)."
        ) from e


def timm_download_advice(tag: str) -> str:
    """The offline advice for timm weights: which file to fetch elsewhere, and what to do with it."""
    return (f"download {timm_weights_location(tag)} on one that is online, copy it here and pass its path "
            "instead of 'imagenet'")
